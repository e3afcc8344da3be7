package orchestrator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// The route as a GitOps tool owns it: a rule to the stable reviews Service with a
// header filter, and an unrelated rule to ratings. ztcanary must keep both intact.
const gitopsRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - name: bookinfo-gateway
  rules:
  - matches:
    - path: {type: PathPrefix, value: /reviews}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-owner, value: gitops}]
    backendRefs:
    - name: reviews
      port: 9080
  - matches:
    - path: {type: PathPrefix, value: /ratings}
    backendRefs:
    - name: ratings
      port: 9080
`

// routeEnv adds the Gateway API CRDs, the backends and the route to the seed.
func routeEnv(t *testing.T) (*env, gatewayclient.Interface) {
	e := newEnv(t)
	ctx := context.Background()
	crds, err := loadGatewayCRDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cluster.InstallCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	for i, b := range []struct{ ns, name string }{{fromApps, "reviews"}, {toApps, "reviews"}, {fromApps, "ratings"}} {
		e.create(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: b.name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, Protocol: corev1.ProtocolTCP}}}})
		e.create(&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: b.ns, Name: b.name, Labels: map[string]string{discoveryv1.LabelServiceName: b.name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.9." + string(rune('1'+i))}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](9080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		})
	}
	gw, err := gatewayclient.NewForConfig(e.cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The canary Service lives in the canary namespace: the route needs a grant.
	if _, err := gw.GatewayV1beta1().ReferenceGrants(toApps).Create(ctx, &gatewayv1beta1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews-from-stable"},
		Spec: gatewayv1beta1.ReferenceGrantSpec{
			From: []gatewayv1beta1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: gatewayv1.Namespace(fromApps)}},
			To:   []gatewayv1beta1.ReferenceGrantTo{{Kind: "Service"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ac gwapply.HTTPRouteApplyConfiguration
	if err := yaml.UnmarshalStrict([]byte(gitopsRoute), &ac); err != nil {
		t.Fatal(err)
	}
	ac.WithNamespace(fromApps)
	if _, err := gw.GatewayV1().HTTPRoutes(fromApps).Apply(ctx, &ac, metav1.ApplyOptions{FieldManager: "gitops", Force: true}); err != nil {
		t.Fatal(err)
	}
	return e, gw
}

func routedUpgrade(name string) *ztv1.RevisionUpgrade {
	w := func(v int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(v)} }
	u := seedUpgrade(name, ztv1.NodeStrategyDrain,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}},
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: w(10)},
		ztv1.Step{Nodes: intstr.FromString("50%"), Traffic: w(50), Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: w(100)},
	)
	u.Spec.Route = &ztv1.RouteSpec{
		HTTPRoute: &ztv1.ObjectRef{Namespace: fromApps, Name: "reviews"},
		Stable:    ztv1.BackendRef{Namespace: fromApps, Name: "reviews", Port: 9080},
		Canary:    ztv1.BackendRef{Namespace: toApps, Name: "reviews", Port: 9080},
	}
	return u
}

// weights returns the weights of the stable and canary backends in the rule that
// matches /reviews without the test header, and whether a test rule exists.
func weights(t *testing.T, route *gatewayv1.HTTPRoute) (stable, canary int32, testRule bool) {
	t.Helper()
	for _, r := range route.Spec.Rules {
		isTest := false
		for _, m := range r.Matches {
			for _, h := range m.Headers {
				if string(h.Name) == "traffic" && h.Value == "test" {
					isTest = true
				}
			}
		}
		if isTest {
			testRule = true
			continue
		}
		for _, b := range r.BackendRefs {
			if string(b.Name) != "reviews" {
				continue
			}
			if b.Namespace != nil && string(*b.Namespace) == toApps {
				canary = ptr.Deref(b.Weight, 1)
			} else {
				stable = ptr.Deref(b.Weight, 1)
			}
		}
	}
	return stable, canary, testRule
}

func TestRouteShiftsHoldsOnDriftAndRestoresExactlyOnAbort(t *testing.T) {
	e, gw := routeEnv(t)
	ctx := context.Background()
	get := func() *gatewayv1.HTTPRoute {
		r, err := gw.GatewayV1().HTTPRoutes(fromApps).Get(ctx, "reviews", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	originalRules, _ := json.Marshal(get().Spec.Rules)
	nodesBefore := e.snapshot()
	e.startOrchestrator()
	e.create(routedUpgrade("routed"))
	u := e.waitPhase("routed", 2*time.Minute, ztv1.PhasePaused)
	if u.Status.CurrentStep != 2 || u.Status.TrafficWeight != 50 {
		t.Fatalf("paused at step %d with weight %d, want step 2 and 50", u.Status.CurrentStep, u.Status.TrafficWeight)
	}
	stable, canary, testRule := weights(t, get())
	if stable != 50 || canary != 50 || !testRule {
		t.Fatalf("route at the pause: stable %d, canary %d, test rule %v; want 50/50 and the test rule", stable, canary, testRule)
	}
	if !strings.Contains(string(mustJSONRules(t, get())), `"x-owner"`) || !strings.Contains(string(mustJSONRules(t, get())), `"ratings"`) {
		t.Error("the gitops filter or the ratings rule is gone")
	}

	// A GitOps revert sets the weights back: the upgrade holds and says why.
	route := get()
	for i := range route.Spec.Rules {
		for j := range route.Spec.Rules[i].BackendRefs {
			b := &route.Spec.Rules[i].BackendRefs[j]
			if string(b.Name) == "reviews" && b.Weight != nil && *b.Weight == 50 {
				if b.Namespace != nil {
					b.Weight = ptr.To[int32](0)
				} else {
					b.Weight = ptr.To[int32](100)
				}
			}
		}
	}
	if _, err := gw.GatewayV1().HTTPRoutes(fromApps).Update(ctx, route, metav1.UpdateOptions{FieldManager: "gitops"}); err != nil {
		t.Fatal(err)
	}
	e.eventually("the drift to be reported", 30*time.Second, func() (bool, string) {
		c := meta.FindStatusCondition(e.upgrade("routed").Status.Conditions, ztv1.ConditionPaused)
		return c != nil && c.Reason == ztv1.ReasonRouteDrift && strings.Contains(c.Message, "canary weight is 0, ztcanary set 50") &&
			strings.Contains(c.Message, "changed by gitops (Update)"), fmt.Sprint(c)
	})
	// ztcanary does not fight: a promote does not move on while the drift lasts.
	e.annotate("routed", ztv1.AnnotationPromote, "2")
	time.Sleep(3 * time.Second)
	if stable, canary, _ := weights(t, get()); stable != 100 || canary != 0 {
		t.Fatalf("ztcanary overwrote the drifted route: stable %d, canary %d", stable, canary)
	}
	if u := e.upgrade("routed"); u.Status.CurrentStep != 2 {
		t.Fatalf("the upgrade moved on to step %d despite the drift", u.Status.CurrentStep)
	}

	// Abort: the route comes back exactly as GitOps wrote it, the nodes too.
	e.annotate("routed", ztv1.AnnotationAbort, "true")
	u = e.waitPhase("routed", 2*time.Minute, ztv1.PhaseRolledBack)
	restored, _ := json.Marshal(get().Spec.Rules)
	if string(restored) != string(originalRules) {
		t.Errorf("route rules after rollback:\n%s\nwant exactly:\n%s", restored, originalRules)
	}
	if d := nodesBefore.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("rollback did not restore exactly:\n%s", strings.Join(d, "\n"))
	}
}

func TestRouteEndsOnTheCanaryAlone(t *testing.T) {
	e, gw := routeEnv(t)
	e.startOrchestrator()
	u := routedUpgrade("clean")
	u.Spec.Steps[2].Pause = nil
	u.Spec.Route.CleanUpOnSuccess = true
	e.create(u)
	u = e.waitPhase("clean", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack)
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	e.assertUpgraded(u)
	route, err := gw.GatewayV1().HTTPRoutes(fromApps).Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stable, canary, testRule := weights(t, route)
	if stable != 0 || canary != 1 || testRule {
		t.Errorf("final route: stable %d, canary %d, test rule %v; want only the canary (weight 1) and no test rule", stable, canary, testRule)
	}
}

func mustJSONRules(t *testing.T, r *gatewayv1.HTTPRoute) []byte {
	t.Helper()
	b, err := json.Marshal(r.Spec.Rules)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRouteWithoutReferenceGrantIsRefused: a canary Service in another namespace
// without a ReferenceGrant is refused before anything moves, saying what to create.
func TestRouteWithoutReferenceGrantIsRefused(t *testing.T) {
	e, gw := routeEnv(t)
	ctx := context.Background()
	if err := gw.GatewayV1beta1().ReferenceGrants(toApps).Delete(ctx, "reviews-from-stable", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	route, err := gw.GatewayV1().HTTPRoutes(fromApps).Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodesBefore := e.snapshot()
	e.startOrchestrator()
	e.create(routedUpgrade("no-grant"))
	want := "spec.route: cross-namespace reference not permitted: httproutes in namespace " + fromApps + " may not send to service " + toApps + "/reviews: create a ReferenceGrant in " + toApps
	e.eventually("the missing grant to be refused", time.Minute, func() (bool, string) {
		c := meta.FindStatusCondition(e.upgrade("no-grant").Status.Conditions, ztv1.ConditionReady)
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Status == metav1.ConditionFalse && c.Reason == "ReferenceNotPermitted" && strings.HasPrefix(c.Message, want), c.Reason + ": " + c.Message
	})
	after, err := gw.GatewayV1().HTTPRoutes(fromApps).Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != route.ResourceVersion {
		t.Errorf("the route was written")
	}
	if d := nodesBefore.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("a refused upgrade changed the cluster:\n%s", strings.Join(d, "\n"))
	}
}
