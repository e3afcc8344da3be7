package orchestrator_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	istioapplyv1 "istio.io/client-go/pkg/applyconfiguration/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/kind/sim"
)

// shopNS holds an application canary done with Istio's own API: one reviews
// Service, its v1 and v2 Deployments, and the subsets of a DestinationRule.
const shopNS = "shop"

// The VirtualService and DestinationRule as GitOps owns them: reviews to subset
// v1 with a retry policy, and an unrelated ratings route.
const (
	shopVirtualService = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - name: reviews
    match:
    - uri: {prefix: /reviews}
    retries: {attempts: 3, perTryTimeout: 2s}
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
  - name: ratings
    route:
    - destination: {host: ratings}
`
	shopDestinationRule = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`
)

// vsEnv adds the real Istio CRDs and the shop application to the seed; v2 starts
// with canaryReplicas pods.
func vsEnv(t *testing.T, canaryReplicas int32) (*env, istioclient.Interface) {
	e := newEnv(t)
	ctx := context.Background()
	all, err := sim.LoadCRDs(ctx, "standard")
	if err != nil {
		t.Fatal(err)
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, c := range all {
		if strings.HasSuffix(c.Name, ".istio.io") {
			crds = append(crds, c)
		}
	}
	if err := e.cluster.InstallCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	e.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: shopNS}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: shopNS, Name: "reviews"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}},
		shopDeployment("v1", 2), shopDeployment("v2", canaryReplicas))
	ic, err := istioclient.NewForConfig(e.cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	var vs istioapplyv1.VirtualServiceApplyConfiguration
	if err := yaml.UnmarshalStrict([]byte(shopVirtualService), &vs); err != nil {
		t.Fatal(err)
	}
	if _, err := ic.NetworkingV1().VirtualServices(shopNS).Apply(ctx, vs.WithNamespace(shopNS), metav1.ApplyOptions{FieldManager: "gitops"}); err != nil {
		t.Fatal(err)
	}
	var dr istioapplyv1.DestinationRuleApplyConfiguration
	if err := yaml.UnmarshalStrict([]byte(shopDestinationRule), &dr); err != nil {
		t.Fatal(err)
	}
	if _, err := ic.NetworkingV1().DestinationRules(shopNS).Apply(ctx, dr.WithNamespace(shopNS), metav1.ApplyOptions{FieldManager: "gitops"}); err != nil {
		t.Fatal(err)
	}
	return e, ic
}

func shopDeployment(version string, replicas int32) *appsv1.Deployment {
	l := map[string]string{"app": "reviews", "version": version}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: shopNS, Name: "reviews-" + version},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: l},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: l},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "reviews", Image: "example/reviews:" + version}}},
			},
		},
	}
}

// vsRoute is spec.route for the shop's VirtualService: subsets v1 and v2 of the
// reviews Service, the host left to its default (the Service's name).
func vsRoute() *ztv1.RouteSpec {
	return &ztv1.RouteSpec{
		VirtualService: &ztv1.VirtualServiceRef{Namespace: shopNS, Name: "reviews", DestinationRule: "reviews"},
		Stable:         ztv1.BackendRef{Namespace: shopNS, Name: "reviews", Port: 9080, Subset: "v1"},
		Canary:         ztv1.BackendRef{Namespace: shopNS, Name: "reviews", Port: 9080, Subset: "v2"},
	}
}

func vsSpec(t *testing.T, ic istioclient.Interface) (string, string) {
	t.Helper()
	vs, err := ic.NetworkingV1().VirtualServices(shopNS).Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := vs.Spec.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b), vs.ResourceVersion
}

// vsWeights reads the weights the reviews route gives each subset, and the names of
// the test routes ztcanary added.
func vsWeights(t *testing.T, ic istioclient.Interface) (map[string]int32, []string) {
	t.Helper()
	vs, err := ic.NetworkingV1().VirtualServices(shopNS).Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	weights := map[string]int32{}
	var tests []string
	for _, hr := range vs.Spec.Http {
		switch {
		case strings.HasPrefix(hr.Name, gatewayroutes.HeaderRulePrefix):
			tests = append(tests, hr.Name)
		case hr.Name == "reviews":
			for _, d := range hr.Route {
				weights[d.Destination.Subset] = d.Weight
			}
		}
	}
	return weights, tests
}

func TestVirtualServiceRouteRefusesBadInputWithoutWrite(t *testing.T) {
	e, ic := vsEnv(t, 2)
	vsBefore, rvBefore := vsSpec(t, ic)
	nodesBefore := e.snapshot()
	e.startOrchestrator()
	cases := []struct {
		name   string
		mutate func(*ztv1.RouteSpec)
		reason string
		msg    string
	}{
		{"a missing VirtualService", func(r *ztv1.RouteSpec) { r.VirtualService.Name = "nope" },
			"RouteMissing", "spec.route.virtualService: route not usable: virtualservice shop/nope not found"},
		{"a missing DestinationRule", func(r *ztv1.RouteSpec) { r.VirtualService.DestinationRule = "nope" },
			"BackendUnusable", "spec.route: backend not usable: destinationrule shop/nope not found"},
		{"a subset the DestinationRule does not define", func(r *ztv1.RouteSpec) { r.Canary.Subset = "v3" },
			"BackendUnusable", `spec.route: backend not usable: destinationrule shop/reviews defines no subset "v3" (it defines "v1", "v2")`},
		{"a missing Service", func(r *ztv1.RouteSpec) { r.Stable.Name, r.Canary.Name = "details", "details" },
			"BackendMissing", "Service shop/details does not exist"},
		{"a host no route sends to", func(r *ztv1.RouteSpec) { r.VirtualService.Host = "reviews.shop.svc.cluster.local" },
			"RouteUnusable", "spec.route: route not usable: no route sends to subset v1 of reviews.shop.svc.cluster.local"},
	}
	for i, tc := range cases {
		u := seedUpgrade(fmt.Sprintf("bad-vs-%d", i), ztv1.NodeStrategyDrain, seedSteps()...)
		u.Spec.Steps[0].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](10)}
		u.Spec.Steps[2].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](100)}
		u.Spec.Route = vsRoute()
		tc.mutate(u.Spec.Route)
		e.create(u)
	}
	// One orchestrator judges them all at once; each is refused on its own.
	for i, tc := range cases {
		name := fmt.Sprintf("bad-vs-%d", i)
		e.eventually(tc.name+" to be refused", time.Minute, func() (bool, string) {
			c := meta.FindStatusCondition(e.upgrade(name).Status.Conditions, ztv1.ConditionReady)
			if c == nil {
				return false, "no Ready condition"
			}
			return c.Status == metav1.ConditionFalse && c.Reason == tc.reason && strings.Contains(c.Message, tc.msg), c.Reason + ": " + c.Message
		})
		u := e.upgrade(name)
		t.Logf("%s: Ready=False %s", tc.name, meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionReady).Message)
		if u.Status.Phase != ztv1.PhasePending || len(u.Status.Nodes) != 0 || u.Status.OriginalRoute != nil {
			t.Errorf("%s: phase %s, %d nodes, route snapshot %v: want Pending and nothing recorded", tc.name, u.Status.Phase, len(u.Status.Nodes), u.Status.OriginalRoute != nil)
		}
	}
	if vs, rv := vsSpec(t, ic); vs != vsBefore || rv != rvBefore {
		t.Errorf("the VirtualService was written (resourceVersion %s → %s):\n%s", rvBefore, rv, vs)
	}
	if d := nodesBefore.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("refused upgrades changed the cluster:\n%s", strings.Join(d, "\n"))
	}
}

// TestVirtualServiceRouteShiftsAndRestoresExactly drives the real orchestrator with a
// VirtualService route: it waits while the canary subset has no ready pod, sets the
// test route and the weights 10, 50, 100 on the VirtualService step by step, and an
// abort restores the VirtualService's spec exactly. A second upgrade then ends on
// the canary subset alone (cleanUpOnSuccess).
func TestVirtualServiceRouteShiftsAndRestoresExactly(t *testing.T) {
	e, ic := vsEnv(t, 0)
	vsBefore, _ := vsSpec(t, ic)
	nodesBefore := e.snapshot()
	e.startOrchestrator()
	weight := func(v int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(v)} }
	u := seedUpgrade("vs", ztv1.NodeStrategyDrain,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}},
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: weight(10), Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromString("50%"), Traffic: weight(50), Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100), Pause: &ztv1.Pause{}},
	)
	u.Spec.Route = vsRoute()
	e.create(u)

	// Invariant 3: no share, not even the test route, while v2 has no ready pod.
	e.eventually("the orchestrator to wait for a ready canary pod", 2*time.Minute, func() (bool, string) {
		u := e.upgrade("vs")
		return u.Status.StepStage == ztv1.StageShiftingTraffic && strings.Contains(u.Status.Message, `canary subset "v2" of service shop/reviews has no ready endpoint`), u.Status.Message
	})
	if vs, _ := vsSpec(t, ic); vs != vsBefore {
		t.Fatalf("the VirtualService changed while the canary subset had no ready pod:\n%s", vs)
	}
	if err := e.c.Patch(context.Background(), &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: shopNS, Name: "reviews-v2"}},
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"replicas":2}}`))); err != nil {
		t.Fatal(err)
	}

	for i := 1; i <= 3; i++ {
		want := *u.Spec.Steps[i].Traffic.Weight
		e.eventually(fmt.Sprintf("the pause after step %d", i), 2*time.Minute, func() (bool, string) {
			u := e.upgrade("vs")
			return u.Status.Phase == ztv1.PhasePaused && int(u.Status.CurrentStep) == i && u.Status.StepStage == ztv1.StagePausing,
				fmt.Sprintf("phase %s, step %d, stage %s: %s", u.Status.Phase, u.Status.CurrentStep, u.Status.StepStage, u.Status.Message)
		})
		weights, tests := vsWeights(t, ic)
		if weights["v1"] != 100-want || weights["v2"] != want || len(weights) != 2 || len(tests) != 1 {
			t.Errorf("step %d: reviews route weights %v, test routes %v; want v1 %d, v2 %d and one test route", i, weights, tests, 100-want, want)
		}
		if i < 3 {
			e.annotate("vs", ztv1.AnnotationPromote, strconv.Itoa(i))
		}
	}
	if vs, _ := vsSpec(t, ic); !strings.Contains(vs, `"retries":{"attempts":3,"perTryTimeout":"2s"}`) || !strings.Contains(vs, `{"name":"ratings","route":[{"destination":{"host":"ratings"}}]}`) {
		t.Errorf("fields of others changed: %s", vs)
	}
	e.annotate("vs", ztv1.AnnotationAbort, "true")
	if u := e.waitPhase("vs", 2*time.Minute, ztv1.PhaseRolledBack); u.Status.TrafficWeight != 0 {
		t.Errorf("status.trafficWeight %d after rollback", u.Status.TrafficWeight)
	}
	if vs, _ := vsSpec(t, ic); vs != vsBefore {
		t.Errorf("VirtualService spec after rollback:\n%s\nwant exactly:\n%s", vs, vsBefore)
	}
	if d := nodesBefore.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("rollback did not restore exactly:\n%s", strings.Join(d, "\n"))
	}

	clean := seedUpgrade("vs-clean", ztv1.NodeStrategyDrain,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: weight(10)},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100)})
	clean.Spec.Route = vsRoute()
	clean.Spec.Route.CleanUpOnSuccess = true
	e.create(clean)
	if u := e.waitPhase("vs-clean", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed); u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	vs, _ := vsSpec(t, ic)
	const cleanReviews = `{"name":"reviews","match":[{"uri":{"prefix":"/reviews"}}],"route":[{"destination":{"host":"reviews","subset":"v2","port":{"number":9080}}}],"retries":{"attempts":3,"perTryTimeout":"2s"}}`
	if !strings.Contains(vs, cleanReviews) || strings.Contains(vs, gatewayroutes.HeaderRulePrefix) || !strings.Contains(vs, `"name":"ratings"`) {
		t.Errorf("VirtualService after a clean success:\n%s\nwant the reviews route as\n%s\nand the ratings route kept", vs, cleanReviews)
	}
}
