package orchestrator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simnet"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// The route users reach through Traefik, as GitOps owns it: everything to the
// stable reviews Service.
const traefikRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - name: gw
  rules:
  - name: reviews
    matches:
    - path: {type: PathPrefix, value: /}
    backendRefs:
    - {name: reviews, port: 9080}
`

// traefikEnv is a seeded simulated cluster whose reviews HTTPRoute (in the stable
// namespace) a real data plane, Traefik, serves on loopback. The stable (v1) and
// canary (v2) reviews Services send to HTTP servers inside network namespaces the
// test created, through hand-made EndpointSlices.
type traefikEnv struct {
	*env
	gw      gatewayclient.Interface
	traefik *sim.Traefik
	// canaryBroken makes v2 answer 500.
	canaryBroken atomic.Bool
	// rules is spec.rules of the route as GitOps wrote it, in JSON.
	rules string
	// gate counts the orchestrator's test requests at the backends.
	gate gateHits
}

// newTraefikEnv builds the environment; netnsBase and netnsBase+1 are the simnet
// indexes of the two backends (distinct per test, so a leftover cannot collide).
// Without root (simnet) the test is skipped, or fails under CI=true; Traefik is
// built on first use, never skipped.
func newTraefikEnv(t *testing.T, netnsBase int, canaryReady bool) *traefikEnv {
	t.Helper()
	te := &traefikEnv{}
	ips := map[string]string{}
	for i, v := range []string{"v1", "v2"} {
		var broken *atomic.Bool
		if v == "v2" {
			broken = &te.canaryBroken
		}
		ips[v] = simnet.Start(t, netnsBase+i, 8080, reviewsHandler(v, broken, &te.gate)).IP
	}
	buildCtx, cancel := context.WithTimeout(context.Background(), simtest.StartTimeout)
	defer cancel()
	bin, err := sim.EnsureTraefik(buildCtx, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	te.env = newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	crds, err := loadGatewayCRDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := te.cluster.InstallCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	te.traefik, err = te.cluster.StartTraefik(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := te.traefik.Stop(); err != nil {
			t.Errorf("stop traefik (pid %d): %v", te.traefik.PID, err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(te.traefik.Log)
			t.Logf("traefik log:\n%s", tail(string(b), 40))
		}
	})
	if te.gw, err = gatewayclient.NewForConfig(te.cluster.Config); err != nil {
		t.Fatal(err)
	}
	te.backend(fromApps, "reviews", ips["v1"], true)
	te.backend(toApps, "reviews", ips["v2"], canaryReady)
	// The canary Service lives in the canary namespace: the route needs a grant.
	if _, err := te.gw.GatewayV1beta1().ReferenceGrants(toApps).Create(ctx, &gatewayv1beta1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews-from-stable"},
		Spec: gatewayv1beta1.ReferenceGrantSpec{
			From: []gatewayv1beta1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: gatewayv1.Namespace(fromApps)}},
			To:   []gatewayv1beta1.ReferenceGrantTo{{Kind: "Service"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := te.gw.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: "traefik"},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: sim.TraefikControllerName},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := te.gw.GatewayV1().Gateways(fromApps).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "gw"},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "traefik",
			Listeners:        []gatewayv1.Listener{{Name: "web", Port: gatewayv1.PortNumber(te.traefik.Port), Protocol: gatewayv1.HTTPProtocolType}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ac gwapply.HTTPRouteApplyConfiguration
	if err := yaml.UnmarshalStrict([]byte(traefikRoute), &ac); err != nil {
		t.Fatal(err)
	}
	ac.WithNamespace(fromApps)
	if _, err := te.gw.GatewayV1().HTTPRoutes(fromApps).Apply(ctx, &ac, metav1.ApplyOptions{FieldManager: "gitops", Force: true}); err != nil {
		t.Fatal(err)
	}
	te.waitAccepted()
	te.rules = te.rulesJSON()
	return te
}

// observerHost is the Host header of the test's own requests, so the backends can
// tell them from the orchestrator's (Traefik passes the Host header on).
const observerHost = "observer.test"

// reviewsHandler answers as version v, naming it in a header and the body; broken,
// when set, makes it answer 500. It counts the requests that are not the test's
// own (the orchestrator's traffic gate) in gate.
func reviewsHandler(v string, broken *atomic.Bool, gate *gateHits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != observerHost {
			gate.add(v, r.Header.Get("traffic") == "test")
		}
		w.Header().Set("x-version", v)
		if broken != nil && broken.Load() {
			http.Error(w, "reviews "+v+" is broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "reviews %s\n", v)
	})
}

// gateHits counts the requests of the orchestrator's traffic gate that reached each
// backend, with and without the test header: evidence, from the data plane's side,
// that the gate ran and what it saw.
type gateHits struct {
	mu sync.Mutex
	n  map[gateHit]int
}

type gateHit struct {
	version string
	header  bool
}

func (g *gateHits) add(v string, header bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n == nil {
		g.n = map[gateHit]int{}
	}
	g.n[gateHit{v, header}]++
}

// take returns the counts so far and starts again from zero.
func (g *gateHits) take() map[gateHit]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.n
	g.n = nil
	return n
}

// backend creates a Service without selector on port 9080 and an EndpointSlice
// with one endpoint, ip:8080, ready or not.
func (te *traefikEnv) backend(ns, name, ip string, ready bool) {
	te.t.Helper()
	te.create(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		})
}

// setReady marks the endpoint of a backend's EndpointSlice ready or not.
func (te *traefikEnv) setReady(ns, name string, ready bool) {
	te.t.Helper()
	ctx := context.Background()
	s, err := te.cluster.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		te.t.Fatal(err)
	}
	s.Endpoints[0].Conditions.Ready = ptr.To(ready)
	if _, err := te.cluster.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		te.t.Fatal(err)
	}
}

func (te *traefikEnv) route() *gatewayv1.HTTPRoute {
	te.t.Helper()
	r, err := te.gw.GatewayV1().HTTPRoutes(fromApps).Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		te.t.Fatal(err)
	}
	return r
}

func (te *traefikEnv) rulesJSON() string {
	te.t.Helper()
	b, err := json.Marshal(te.route().Spec.Rules)
	if err != nil {
		te.t.Fatal(err)
	}
	return string(b)
}

// waitAccepted waits until Traefik reports the route Accepted at its generation.
func (te *traefikEnv) waitAccepted() {
	te.t.Helper()
	te.eventually("traefik to accept the route", time.Minute, func() (bool, string) {
		r := te.route()
		ok, msg := gatewayroutes.RouteAccepted(r.Generation, r.Status.Parents)
		return ok && len(r.Status.Parents) > 0, msg
	})
}

// observe sends 1000 requests through Traefik, with the test header or without,
// and checks with the traffic tester that every one succeeded and that the canary
// share is consistent (Wilson interval at 99%) with percent.
func (te *traefikEnv) observe(what string, header bool, percent float64) {
	te.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := traffictest.Config{
		URL: te.traefik.URL + "/", Host: observerHost, Requests: 1000, Concurrency: 8,
		VersionHeader: "x-version", CanaryVersion: "v2",
		ExpectedCanaryShare: ptr.To(percent / 100),
	}
	if header {
		cfg.HeaderName, cfg.HeaderValue = "traffic", "test"
	}
	res, err := traffictest.Run(ctx, cfg)
	if err != nil {
		te.t.Fatal(err)
	}
	te.t.Logf("%s, header %v: v1 %d, v2 %d, success %.3f, canary %.1f%% [%.1f%%, %.1f%%]", what, header,
		versionCount(res, "v1"), versionCount(res, "v2"), res.SuccessRate, 100*res.CanaryShare, 100*res.ShareInterval[0], 100*res.ShareInterval[1])
	if res.SuccessRate != 1 || !*res.Consistent {
		te.t.Errorf("%s, header %v: success %.3f (errors %v), canary share %.1f%%: want all successful and %v%% canary", what, header, res.SuccessRate, res.Errors, 100*res.CanaryShare, percent)
	}
}

func versionCount(r *traffictest.Result, v string) int {
	if s, ok := r.Versions[v]; ok {
		return s.Count
	}
	return 0
}

// waitStepPaused waits until the upgrade holds after step i (pause {}), failing at
// once if it ends instead.
func (te *traefikEnv) waitStepPaused(name string, i int) *ztv1.RevisionUpgrade {
	te.t.Helper()
	var u *ztv1.RevisionUpgrade
	te.eventually(fmt.Sprintf("upgrade %s to pause after step %d", name, i), 2*time.Minute, func() (bool, string) {
		u = te.upgrade(name)
		done := u.Status.Phase == ztv1.PhasePaused && int(u.Status.CurrentStep) == i && u.Status.StepStage == ztv1.StagePausing
		return done || u.Status.Phase.Terminal(), fmt.Sprintf("phase %s, step %d, stage %s: %s", u.Status.Phase, u.Status.CurrentStep, u.Status.StepStage, u.Status.Message)
	})
	if u.Status.Phase.Terminal() {
		te.t.Fatalf("upgrade %s ended %s before step %d paused: %s", name, u.Status.Phase, i, u.Status.Message)
	}
	return u
}

// gateRan checks, from the backends' counts, that the orchestrator's traffic gate
// sent its requests through Traefik since the last look: with the test header at
// the header step (all answered by the canary), without it at a weight step, split
// as the weight says (judged as the tester judges, when the gate ran once).
func (te *traefikEnv) gateRan(i int, header bool, percent float64) {
	te.t.Helper()
	n := te.gate.take()
	v1, v2 := n[gateHit{"v1", header}], n[gateHit{"v2", header}]
	other := n[gateHit{"v1", !header}] + n[gateHit{"v2", !header}]
	te.t.Logf("step %d: the orchestrator's gate sent %d requests (header %v): v1 %d, v2 %d", i, v1+v2, header, v1, v2)
	const perRun = 400 // spec.analysis.trafficTest.requests
	switch {
	case v1+v2 < perRun || (v1+v2)%perRun != 0 || other != 0:
		te.t.Errorf("step %d: the backends saw %d gate requests with header %v and %d without; want runs of %d, all with header %v", i, v1+v2, header, other, perRun, header)
	case v1+v2 == perRun && !traffictest.ShareConsistent(v2, v1+v2, percent/100, 0.99):
		te.t.Errorf("step %d: the gate's requests split v1 %d / v2 %d, inconsistent with %v%% canary", i, v1, v2, percent)
	}
}

// traefikUpgrade is the seed flow with traffic: the header-test rule, then 10, 50
// and 100% to the canary, holding after every step for the test to look, and the
// orchestrator's own traffic test through Traefik as each step's gate.
func traefikUpgrade(name, url string) *ztv1.RevisionUpgrade {
	weight := func(v int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(v)} }
	u := seedUpgrade(name, ztv1.NodeStrategyDrain,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}, Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: weight(10), Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromString("50%"), Traffic: weight(50), Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100), Pause: &ztv1.Pause{}},
	)
	u.Spec.Route = &ztv1.RouteSpec{
		HTTPRoute: &ztv1.ObjectRef{Namespace: fromApps, Name: "reviews"},
		Stable:    ztv1.BackendRef{Namespace: fromApps, Name: "reviews", Port: 9080},
		Canary:    ztv1.BackendRef{Namespace: toApps, Name: "reviews", Port: 9080},
	}
	u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{
		URL: url + "/", Requests: 400, Concurrency: 8, MinSuccessRate: 99,
		CanaryHeader: &ztv1.HeaderMatch{Name: "x-version", Value: "v2"},
	}
	return u
}

// TestUpgradeThroughTraefik runs the real orchestrator through the seed flow with
// a real data plane: at each step the orchestrator's traffic gate runs through
// Traefik, and the test itself checks with the traffic tester that users get the
// split the step set. It also holds the orchestrator to invariant 3: while the
// canary has no ready endpoint it must wait, and no version of the route ever gives
// a share to a backend without one.
func TestUpgradeThroughTraefik(t *testing.T) {
	te := newTraefikEnv(t, 20, false)
	shares := te.watchShares(t)
	te.startOrchestrator()
	te.create(traefikUpgrade("seed", te.traefik.URL))

	te.eventually("the orchestrator to wait for the canary's ready endpoint", 2*time.Minute, func() (bool, string) {
		u := te.upgrade("seed")
		return u.Status.StepStage == ztv1.StageShiftingTraffic && strings.Contains(u.Status.Message, "no ready endpoint"), u.Status.Message
	})
	if got := te.rulesJSON(); got != te.rules {
		t.Fatalf("the route changed while the canary had no ready endpoint:\n%s\nwant\n%s", got, te.rules)
	}
	te.setReady(toApps, "reviews", true)

	type check struct {
		header  bool
		percent float64
	}
	for i, step := range []struct {
		weight int32
		checks []check
	}{
		{0, []check{{true, 100}, {false, 0}}}, // the gate of the header step sends the header: 100% canary
		{10, []check{{true, 100}, {false, 10}}},
		{50, []check{{true, 100}, {false, 50}}},
		{100, []check{{true, 100}, {false, 100}}},
	} {
		u := te.waitStepPaused("seed", i)
		if u.Status.TrafficWeight != step.weight {
			t.Errorf("step %d: status.trafficWeight %d, want %d", i, u.Status.TrafficWeight, step.weight)
		}
		if i == 0 {
			te.gateRan(i, true, 100)
		} else {
			te.gateRan(i, false, float64(step.weight))
		}
		for _, c := range step.checks {
			te.observe(fmt.Sprintf("step %d (weight %d)", i, step.weight), c.header, c.percent)
		}
		te.annotate("seed", ztv1.AnnotationPromote, strconv.Itoa(i))
	}
	u := te.waitPhase("seed", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	te.assertUpgraded(u)
	shares.assert(t)
}

// TestFailingTrafficGateRollsBackThroughTraefik breaks the canary (it answers 500)
// after the header step, whose gate recognised the canary by a body regex: the orchestrator's traffic gate at weight 10 must fail and
// roll back on its own, after which users get only the stable version through
// Traefik, and the route's rules and the nodes are exactly as before.
func TestFailingTrafficGateRollsBackThroughTraefik(t *testing.T) {
	te := newTraefikEnv(t, 22, true)
	shares := te.watchShares(t)
	nodesBefore := te.snapshot()
	te.startOrchestrator()
	u := traefikUpgrade("broken", te.traefik.URL)
	// This gate recognises the canary by its body.
	u.Spec.Analysis.TrafficTest.CanaryHeader, u.Spec.Analysis.TrafficTest.CanaryBodyRegex = nil, `^reviews v2\b`
	te.create(u)

	te.waitStepPaused("broken", 0)
	te.gateRan(0, true, 100)
	te.observe("header step", true, 100)
	te.observe("header step", false, 0)
	te.canaryBroken.Store(true)
	te.annotate("broken", ztv1.AnnotationPromote, "0")

	u = te.waitPhase("broken", 3*time.Minute, ztv1.PhaseRolledBack, ztv1.PhaseSucceeded, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseRolledBack {
		t.Fatalf("phase %s, want RolledBack: %s", u.Status.Phase, u.Status.Message)
	}
	c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack)
	if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "step 1: traffic test:") || !strings.Contains(c.Message, "below 99%") || !strings.Contains(c.Message, "HTTP 500") {
		t.Fatalf("RolledBack condition %+v: want True, naming step 1's failed traffic test and the 500s", c)
	}
	t.Logf("RolledBack condition: %s", c.Message)
	if n := te.gate.take(); n[gateHit{"v2", false}] == 0 {
		t.Errorf("the broken canary saw no request of the orchestrator's gate (counts %v)", n)
	}
	if got := te.rulesJSON(); got != te.rules {
		t.Errorf("route rules after rollback:\n%s\nwant exactly the pre-upgrade snapshot:\n%s", got, te.rules)
	}
	te.waitAccepted()
	te.observe("after rollback", false, 0)
	te.observe("after rollback", true, 0)
	if d := nodesBefore.diff(te.snapshot()); len(d) > 0 {
		t.Errorf("rollback did not restore exactly:\n%s", strings.Join(d, "\n"))
	}
	shares.assert(t)
}

// shareWatcher checks invariant 3 on every version of the route: a version that
// gives a backend a share of traffic (a weight, or the test rule for the canary)
// must have been written while that backend's EndpointSlice had a ready endpoint.
// Route and EndpointSlice versions are ordered by resourceVersion: both live in the
// simulated cluster's one etcd, whose revisions order all writes.
type shareWatcher struct {
	mu     sync.Mutex
	events []shareEvent
}

type shareEvent struct {
	rv int64
	// route versions: which backends get a share.
	route          bool
	stable, canary bool
	// EndpointSlice versions: the backend and whether it has a ready endpoint.
	backend string
	ready   bool
}

func (te *traefikEnv) watchShares(t *testing.T) *shareWatcher {
	w := &shareWatcher{}
	rv := func(o metav1.Object) int64 {
		n, err := strconv.ParseInt(o.GetResourceVersion(), 10, 64)
		if err != nil {
			te.t.Errorf("resourceVersion %q is not an etcd revision", o.GetResourceVersion())
		}
		return n
	}
	onRoute := func(o any) {
		r, ok := o.(*gatewayv1.HTTPRoute)
		if !ok || r.Namespace != fromApps || r.Name != "reviews" {
			return
		}
		stable, canary, testRule := weights(t, r)
		w.add(shareEvent{rv: rv(r), route: true, stable: stable > 0, canary: canary > 0 || testRule})
	}
	onSlice := func(o any) {
		s, ok := o.(*discoveryv1.EndpointSlice)
		if !ok || s.Name != "reviews" {
			return
		}
		ready := false
		for _, e := range s.Endpoints {
			ready = ready || e.Conditions.Ready == nil || *e.Conditions.Ready
		}
		w.add(shareEvent{rv: rv(s), backend: s.Namespace, ready: ready})
	}
	gf := gatewayinformers.NewSharedInformerFactory(te.gw, 0)
	routes := gf.Gateway().V1().HTTPRoutes().Informer()
	kf := informers.NewSharedInformerFactory(te.cluster.Client, 0)
	slices := kf.Discovery().V1().EndpointSlices().Informer()
	for inf, h := range map[cache.SharedIndexInformer]func(any){routes: onRoute, slices: onSlice} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: h, UpdateFunc: func(_, o any) { h(o) }}); err != nil {
			te.t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	gf.Start(stop)
	kf.Start(stop)
	gf.WaitForCacheSync(stop)
	kf.WaitForCacheSync(stop)
	te.t.Cleanup(func() { close(stop); gf.Shutdown(); kf.Shutdown() })
	return w
}

func (w *shareWatcher) add(e shareEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, e)
}

func (w *shareWatcher) assert(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	events := append([]shareEvent(nil), w.events...)
	sort.SliceStable(events, func(i, j int) bool { return events[i].rv < events[j].rv })
	ready := map[string]bool{}
	versions, shared := 0, 0
	for _, e := range events {
		if !e.route {
			ready[e.backend] = e.ready
			continue
		}
		versions++
		if e.canary {
			shared++
		}
		if e.stable && !ready[fromApps] {
			t.Errorf("route version %d gives the stable backend a share while it has no ready endpoint", e.rv)
		}
		if e.canary && !ready[toApps] {
			t.Errorf("route version %d gives the canary backend a share while it has no ready endpoint", e.rv)
		}
	}
	if shared == 0 {
		t.Error("the share watcher saw no route version giving the canary a share")
	}
	t.Logf("share watcher: %d route versions, %d of them with a canary share", versions, shared)
}
