package gatewayroutes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// seedRoute is a route as a GitOps tool wrote it: a rule to stable with matches,
// filters and a second, unmanaged backend; a rule to another service; a redirect.
const seedRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - name: gw
  hostnames: [reviews.example]
  rules:
  - name: reviews
    matches:
    - path: {type: PathPrefix, value: /reviews}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-from, value: gitops}]
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 100}
    - {name: mirror, port: 9080, weight: 0}
  - matches:
    - path: {type: PathPrefix, value: /ratings}
    backendRefs:
    - {name: ratings, port: 9080}
  - matches:
    - path: {type: Exact, value: /old}
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /reviews}}
`

type fixture struct {
	clients
	ns     string
	router *HTTPRouteRouter
}

func newFixture(t *testing.T) *fixture {
	c := simClients(t)
	ns := newNamespace(t, c, "routes")
	for _, name := range []string{"reviews-v1", "reviews-v2", "mirror", "ratings"} {
		newBackend(t, c, Backend{Namespace: ns, Name: name, Port: 9080}, true)
	}
	applyAs(t, c, "gitops", ns, seedRoute)
	return &fixture{clients: c, ns: ns, router: &HTTPRouteRouter{
		Kube: c.kube, Gateway: c.gw, Log: zaptest.NewLogger(t),
		Namespace: ns, Name: "reviews",
		Stable: Backend{Namespace: ns, Name: "reviews-v1", Port: 9080},
		Canary: Backend{Namespace: ns, Name: "reviews-v2", Port: 9080},
	}}
}

func (f *fixture) route(t *testing.T) *gatewayv1.HTTPRoute {
	t.Helper()
	r, err := f.gw.GatewayV1().HTTPRoutes(f.ns).Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// othersRules is every rule ztcanary does not touch, as JSON.
func othersRules(t *testing.T, rules []gatewayv1.HTTPRouteRule) []string {
	var out []string
	for _, r := range rules {
		if !isZtcanaryRule(r) && (r.Name == nil || *r.Name != "reviews") {
			out = append(out, mustJSON(t, r))
		}
	}
	return out
}

// TestSeedStepsKeepOthersFieldsAndRestoreExactly walks the seed's traffic steps on a
// route written by another field manager. Regressions: fluxcd/flagger#1857 (user
// filters and rules dropped), argo rollouts-plugin-trafficrouter-gatewayapi#203
// (unmanaged backends stripped), fluxcd/flagger#1448 and openkruise/rollouts#138
// (rollback does not restore the original route).
func TestSeedStepsKeepOthersFieldsAndRestoreExactly(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	before := f.route(t)
	snap, err := f.router.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, split := range []Split{
		{Header: &Header{Name: "traffic", Value: "test"}},
		{Header: &Header{Name: "traffic", Value: "test"}, CanaryWeight: 10},
		{CanaryWeight: 50},
		{CanaryWeight: 100},
	} {
		if err := f.router.SetRoutes(ctx, split); err != nil {
			t.Fatalf("set %v: %v", split, err)
		}
		after := f.route(t)
		// The stored rules are exactly what ztcanary rendered: nothing defaulted
		// afterwards, so a GitOps diff sees only ztcanary's intended changes.
		want, err := renderRules(f.ns, before.Spec.Rules, f.router.Stable, f.router.Canary, split)
		if err != nil {
			t.Fatal(err)
		}
		if !equality.Semantic.DeepEqual(want, after.Spec.Rules) {
			t.Errorf("%v: stored rules differ from the rendered ones:\n%s\n%s", split, mustJSON(t, after.Spec.Rules), mustJSON(t, want))
		}
		if got, want := othersRules(t, after.Spec.Rules), othersRules(t, before.Spec.Rules); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%v: rules of others changed:\n%s\nwant\n%s", split, got, want)
		}
		stableRule := after.Spec.Rules[0]
		if mustJSON(t, stableRule.Filters) != mustJSON(t, before.Spec.Rules[0].Filters) || mustJSON(t, stableRule.Matches) != mustJSON(t, before.Spec.Rules[0].Matches) {
			t.Errorf("%v: matches or filters of the stable rule changed", split)
		}
		if mirror := stableRule.BackendRefs[1]; mirror.Name != "mirror" || ptr.Deref(mirror.Weight, -1) != 0 {
			t.Errorf("%v: unmanaged backend changed: %s", split, mustJSON(t, mirror))
		}
		if mustJSON(t, after.Spec.Hostnames) != mustJSON(t, before.Spec.Hostnames) || mustJSON(t, after.Spec.ParentRefs) != mustJSON(t, before.Spec.ParentRefs) {
			t.Errorf("%v: hostnames or parentRefs changed", split)
		}
		got, err := f.router.GetRoutes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := DetectDrift(split, got); len(d) > 0 {
			t.Errorf("route reads back differently: %v", d)
		}
	}
	// ztcanary never took the fields outside spec.rules from their manager.
	owners := map[string]bool{}
	for _, e := range f.route(t).ManagedFields {
		var m map[string]any
		_ = json.Unmarshal(e.FieldsV1.Raw, &m)
		spec, _ := m["f:spec"].(map[string]any)
		if _, ok := spec["f:hostnames"]; ok {
			owners[e.Manager] = true
		}
	}
	if !owners["gitops"] || owners[FieldManager] {
		t.Errorf("spec.hostnames owners %v, want gitops only", owners)
	}
	if err := f.router.Restore(ctx, snap); err != nil {
		t.Fatal(err)
	}
	restored := f.route(t)
	if got, want := mustJSON(t, restored.Spec), mustJSON(t, before.Spec); got != want {
		t.Errorf("restore is not exact:\n%s\nwant\n%s", got, want)
	}
}

// TestRestoreKeepsOthersChangesMadeDuringTheUpgrade: someone edits a rule ztcanary
// does not own mid-upgrade; rollback undoes ztcanary's fields and keeps that edit.
func TestRestoreKeepsOthersChangesMadeDuringTheUpgrade(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	before := f.route(t)
	snap, err := f.router.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.router.SetRoutes(ctx, Split{Header: &Header{Name: "traffic", Value: "test"}, CanaryWeight: 30}); err != nil {
		t.Fatal(err)
	}
	mid := f.route(t)
	mid.Spec.Rules[1].Matches[0].Path.Value = ptr.To("/ratings/v2")
	if _, err := f.gw.GatewayV1().HTTPRoutes(f.ns).Update(ctx, mid, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	if err := f.router.Restore(ctx, snap); err != nil {
		t.Fatal(err)
	}
	want := before.Spec.DeepCopy()
	want.Rules[1].Matches[0].Path.Value = ptr.To("/ratings/v2")
	if got := f.route(t).Spec; mustJSON(t, got) != mustJSON(t, want) {
		t.Errorf("restore:\n%s\nwant\n%s", mustJSON(t, got), mustJSON(t, want))
	}
}

// TestInvalidInputIsRefusedWithoutWrite: each bad input is a clear, classified error
// and leaves the route's resourceVersion unchanged.
func TestInvalidInputIsRefusedWithoutWrite(t *testing.T) {
	f := newFixture(t)
	other := newNamespace(t, f.clients, "canary")
	newBackend(t, f.clients, Backend{Namespace: f.ns, Name: "not-ready", Port: 9080}, false)
	newBackend(t, f.clients, Backend{Namespace: other, Name: "reviews", Port: 9080}, true)
	for _, tc := range []struct {
		name   string
		canary Backend
		split  Split
		want   error
		msg    string
	}{
		{"weight above 100", Backend{f.ns, "reviews-v2", 9080}, Split{CanaryWeight: 120}, ErrInvalid, "canary weight 120 is outside 0-100"},
		{"negative weight", Backend{f.ns, "reviews-v2", 9080}, Split{CanaryWeight: -5}, ErrInvalid, "outside 0-100"},
		{"missing canary service", Backend{f.ns, "reviews-v3", 9080}, Split{CanaryWeight: 10}, ErrBackend, "canary backend service " + f.ns + "/reviews-v3 not found"},
		{"canary service without the port", Backend{f.ns, "reviews-v2", 8080}, Split{CanaryWeight: 10}, ErrBackend, "has no TCP port 8080"},
		{"canary without ready endpoint", Backend{f.ns, "not-ready", 9080}, Split{CanaryWeight: 10}, ErrBackend, "has no ready endpoint"},
		{"cross-namespace canary without ReferenceGrant", Backend{other, "reviews", 9080}, Split{CanaryWeight: 10}, ErrReferenceNotPermitted, "create a ReferenceGrant in " + other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			r := *f.router
			r.Canary = tc.canary
			rv := f.route(t).ResourceVersion
			err := r.SetRoutes(ctx, tc.split)
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.msg)
			}
			if got := f.route(t).ResourceVersion; got != rv {
				t.Errorf("route written (resourceVersion %s -> %s)", rv, got)
			}
		})
	}
	t.Run("cross-namespace canary with ReferenceGrant is accepted", func(t *testing.T) {
		ctx := testContext(t)
		_, err := f.gw.GatewayV1().ReferenceGrants(other).Create(ctx, &gatewayv1.ReferenceGrant{
			ObjectMeta: metav1.ObjectMeta{Name: "from-routes"},
			Spec: gatewayv1.ReferenceGrantSpec{
				From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: gatewayv1.Namespace(f.ns)}},
				To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r := *f.router
		r.Canary = Backend{other, "reviews", 9080}
		if err := r.SetRoutes(ctx, Split{CanaryWeight: 10}); err != nil {
			t.Fatal(err)
		}
		ref := f.route(t).Spec.Rules[0].BackendRefs[2]
		if ref.Namespace == nil || string(*ref.Namespace) != other {
			t.Errorf("canary ref %s lacks its namespace", mustJSON(t, ref))
		}
	})
}

// TestRapidAndRestartedStepsKeepOneTestRule. Regressions: argo
// rollouts-plugin-trafficrouter-gatewayapi#217 (duplicate header rules after rapid
// deploys), #191 and #151 (header routes lost after a controller restart or a
// weight change).
func TestRapidAndRestartedStepsKeepOneTestRule(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	h := &Header{Name: "traffic", Value: "test"}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := *f.router // a separate router each: as after restarts
			errs <- r.SetRoutes(ctx, Split{Header: h, CanaryWeight: int32(i % 2 * 10)})
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		n := 0
		for _, r := range f.route(t).Spec.Rules {
			if isZtcanaryRule(r) {
				n++
			}
		}
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("%d test rules after 8 concurrent steps, want 1", n)
	}
	// A restarted orchestrator (a new router) reads the header rule back and keeps
	// it through a weight change.
	restarted := &HTTPRouteRouter{Kube: f.kube, Gateway: f.gw, Namespace: f.ns, Name: "reviews", Stable: f.router.Stable, Canary: f.router.Canary}
	got, err := restarted.GetRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Header == nil || *got.Header != *h {
		t.Fatalf("restarted router reads header %v, want %v", got.Header, h)
	}
	got.CanaryWeight = 20
	if err := restarted.SetRoutes(ctx, got); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d test rules after a weight change, want 1", n)
	}
}

// TestDriftIsReported: a GitOps revert of ztcanary's weight is reported, naming the
// writer; ztcanary does not write again by itself.
func TestDriftIsReported(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	want := Split{CanaryWeight: 50}
	if err := f.router.SetRoutes(ctx, want); err != nil {
		t.Fatal(err)
	}
	if d, err := f.router.Drift(ctx, want); err != nil || len(d) != 0 {
		t.Fatalf("drift right after SetRoutes: %v %v", d, err)
	}
	applyAs(t, f.clients, "gitops", f.ns, seedRoute) // the GitOps tool re-syncs
	d, err := f.router.Drift(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != 2 || !strings.Contains(d[0], "canary weight is 0, ztcanary set 50") || !strings.Contains(d[1], "gitops") {
		t.Errorf("drift %q", d)
	}
}

// TestReadyFollowsParentStatus sets route status the way a gateway controller would
// (no controller runs in the simulated cluster) and checks the readiness rule.
func TestReadyFollowsParentStatus(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	if ok, msg, err := f.router.Ready(ctx); err != nil || !ok || !strings.Contains(msg, "no gateway controller") {
		t.Fatalf("no status: %v %q %v", ok, msg, err)
	}
	if err := f.router.SetRoutes(ctx, Split{CanaryWeight: 10}); err != nil {
		t.Fatal(err)
	}
	setStatus := func(observed int64, status metav1.ConditionStatus) {
		r := f.route(t)
		r.Status.Parents = []gatewayv1.RouteParentStatus{{
			ParentRef:      gatewayv1.ParentReference{Name: "gw"},
			ControllerName: "example.com/gateway-controller",
			Conditions: []metav1.Condition{{
				Type: "Accepted", Status: status, Reason: "Accepted", ObservedGeneration: observed,
				LastTransitionTime: metav1.Now(),
			}},
		}}
		if _, err := f.gw.GatewayV1().HTTPRoutes(f.ns).UpdateStatus(ctx, r, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	gen := f.route(t).Generation
	for _, tc := range []struct {
		name     string
		observed int64
		status   metav1.ConditionStatus
		ready    bool
	}{
		{"accepted at an older generation is not ready", gen - 1, metav1.ConditionTrue, false},
		{"not accepted at the current generation is not ready", gen, metav1.ConditionFalse, false},
		{"accepted at the current generation is ready", gen, metav1.ConditionTrue, true},
	} {
		setStatus(tc.observed, tc.status)
		if ok, msg, err := f.router.Ready(ctx); err != nil || ok != tc.ready {
			t.Errorf("%s: ready %v (%s) %v", tc.name, ok, msg, err)
		}
	}
}

// TestPromoteLeavesACleanRoute: a completed upgrade leaves the canary as the only
// managed backend and no test rule; the unmanaged backend and other rules stay.
func TestPromoteLeavesACleanRoute(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	before := f.route(t)
	if err := f.router.SetRoutes(ctx, Split{Header: &Header{Name: "traffic", Value: "test"}, CanaryWeight: 50}); err != nil {
		t.Fatal(err)
	}
	if err := f.router.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	after := f.route(t)
	if len(after.Spec.Rules) != len(before.Spec.Rules) {
		t.Fatalf("%d rules after promote, want %d", len(after.Spec.Rules), len(before.Spec.Rules))
	}
	got := mustJSON(t, after.Spec.Rules[0].BackendRefs)
	want := `[{"group":"","kind":"Service","name":"mirror","port":9080,"weight":0},{"group":"","kind":"Service","name":"reviews-v2","port":9080,"weight":1}]`
	if got != want {
		t.Errorf("stable rule's backends after promote:\n%s\nwant\n%s", got, want)
	}
	if strings.Join(othersRules(t, after.Spec.Rules), "\n") != strings.Join(othersRules(t, before.Spec.Rules), "\n") {
		t.Errorf("rules of others changed")
	}
}
