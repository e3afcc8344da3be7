package v1alpha1_test

import (
	"context"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"

	"github.com/ztcanary/ztcanary/internal/golden"
)

var cluster *sim.Cluster

func TestMain(m *testing.M) { simtest.Main(m, sim.Options{Nodes: 1, SkipCRDs: true}, &cluster) }

func apiClient(t testing.TB) client.Client {
	t.Helper()
	simtest.SkipShort(t, "needs the shared simulated cluster")
	crds, err := sim.ReadCRDs(filepath.Join("..", "..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.InstallCRDs(context.Background(), crds); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := ztv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cluster.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func validUpgrade() *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "upgrade"},
		Spec: ztv1.RevisionUpgradeSpec{
			From: "1-18-0-alpha-0",
			To:   "1-18-1",
			Steps: []ztv1.Step{
				{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}},
				{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](10)}},
				{Nodes: intstr.FromString("50%"), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](50)}, Pause: &ztv1.Pause{}},
				{Nodes: intstr.FromString("100%"), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](100)}},
			},
		},
	}
}

func TestAdmissionRefusesBadInputWithAClearMessage(t *testing.T) {
	c := apiClient(t)
	rules := crdRules(t)
	var cases []refusalCase
	cases = append(cases, ambientRefusals()...)
	cases = append(cases, sidecarRefusals()...)
	cases = append(cases, changeRefusals()...)
	cases = append(cases, immutableRefusals()...)
	cases = append(cases, captureRefusals()...)
	rows := runRefusals(t, c, cases, rules)
	if len(rows) != len(cases) {
		return // a case failed or was not run (-run): the table would be partial
	}
	for _, miss := range uncoveredRules(rules, rows) {
		t.Error(miss)
	}
	// Every schema constraint no case above covers gets a generated case, which
	// must be refused by that constraint.
	constraints := specConstraints(t)
	var generated []refusalCase
	var uncovered []schemaConstraint
	for _, sc := range constraints {
		if !sc.coveredBy(rows) {
			generated = append(generated, generatedCase(sc))
			uncovered = append(uncovered, sc)
		}
	}
	more := runRefusals(t, c, generated, rules)
	if len(more) != len(generated) {
		return
	}
	for i, sc := range uncovered {
		if !sc.coveredBy(more[i : i+1]) {
			t.Errorf("%s: the generated case %q was not refused by %s: %s", sc.path, sc.input(), sc.keyword, more[i].message)
		}
	}
	rows = append(rows, more...)
	golden.Check(t, refusalsFile, refusalsTable(rows, rules, len(constraints)), *update, "the API server")
}

// ambientRefusals are the refused Ambient upgrades, each a valid upgrade with one
// mistake.
func ambientRefusals() []refusalCase {
	return []refusalCase{
		{"to equal to from", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.To = u.Spec.From }),
			"spec.to must differ from spec.from"},
		{"a revision that is not a label value", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.To = "1.18/1" }),
			`spec.to: Invalid value: "1.18/1": spec.to must be a revision as the istio.io/rev label writes it (e.g. 1-18-1): letters, digits, '-', '_' and '.', starting and ending with a letter or digit`},
		{"a from revision that is not a label value", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.From = "1-18-0 " }),
			`spec.from: Invalid value: "1-18-0 ": spec.from must be a revision as the istio.io/rev label writes it (e.g. 1-18-0)`},
		{"an empty revision", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.From = "" }),
			`spec.from: Invalid value: "": spec.from must be a revision as the istio.io/rev label writes it (e.g. 1-18-0)`},
		{"no steps", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps = nil }),
			"spec.steps: Required value"},
		{"weight above 100", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[3].Traffic.Weight = ptr.To[int32](120) }),
			"spec.steps[3].traffic.weight: Invalid value: 120: spec.steps[3].traffic.weight in body should be less than or equal to 100"},
		{"negative weight", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[1].Traffic.Weight = ptr.To[int32](-5) }),
			"should be greater than or equal to 0"},
		{"decreasing weights", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[3].Traffic.Weight = ptr.To[int32](40) }),
			"traffic weights must never decrease"},
		{"decreasing node counts", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[1].Nodes = intstr.FromInt32(0) }),
			"node counts must never decrease"},
		{"a percentage above 100", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[3].Nodes = intstr.FromString("150%") }),
			`spec.steps[3].nodes: Invalid value: "150%": nodes must be a count of at least 0 or a percentage from 0% to 100%`},
		{"a negative node count", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[0].Nodes = intstr.FromInt32(-1) }),
			"nodes must be a count of at least 0 or a percentage from 0% to 100%"},
		{"two header steps", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps[1].Traffic = &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}
		}), "at most one step may set a header-test rule"},
		{"a header step after a weight step", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps[0].Traffic, u.Spec.Steps[1].Traffic = u.Spec.Steps[1].Traffic, u.Spec.Steps[0].Traffic
		}), "the header-test step must come before every weight step"},
		{"a step with both header and weight", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps[0].Traffic.Weight = ptr.To[int32](0)
		}), "traffic: set exactly one of header (the test rule) and weight (the canary's share); for both, use two steps"},
		{"a route naming both kinds", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = vsRoute()
			u.Spec.Route.HTTPRoute = &ztv1.ObjectRef{Namespace: "shop", Name: "reviews"}
		}), "spec.route: set exactly one of httpRoute and virtualService"},
		{"a traffic test that cannot tell the canary", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{URL: "http://gateway/"}
		}), "spec.analysis.trafficTest: set exactly one of canaryHeader and canaryBodyRegex, to say how a canary answer is recognised"},
		{"a traffic test with both a canary header and a body regex", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{URL: "http://gateway/", CanaryHeader: &ztv1.HeaderMatch{Name: "x-version", Value: "v2"}, CanaryBodyRegex: "v2"}
		}), "spec.analysis.trafficTest: set exactly one of canaryHeader and canaryBodyRegex"},
		{"a virtualService route without subsets", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = vsRoute()
			u.Spec.Route.Canary.Subset = ""
		}), "spec.route: a virtualService route shifts traffic between two DestinationRule subsets: set stable.subset and canary.subset, each a different subset"},
		{"a virtualService route with the same subset twice", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = vsRoute()
			u.Spec.Route.Canary.Subset = "v1"
		}), "set stable.subset and canary.subset, each a different subset"},
		{"a virtualService route between two Services", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = vsRoute()
			u.Spec.Route.Canary.Name = "reviews-canary"
		}), "spec.route: with virtualService, stable and canary are two subsets of one Service: give them the same namespace and name"},
		{"a virtualService route without a DestinationRule", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = vsRoute()
			u.Spec.Route.VirtualService.DestinationRule = ""
		}), "spec.route.virtualService.destinationRule in body should be at least 1 chars long"},
		{"a subset on an httpRoute", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = &ztv1.RouteSpec{
				HTTPRoute: &ztv1.ObjectRef{Namespace: "default", Name: "r"},
				Stable:    ztv1.BackendRef{Namespace: "a", Name: "s", Port: 80, Subset: "v1"},
				Canary:    ztv1.BackendRef{Namespace: "b", Name: "c", Port: 80},
			}
		}), "spec.route: subset is for virtualService routes; an httpRoute sends to whole Services, so remove stable.subset and canary.subset"},
		{"an unknown node strategy", created(validUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.NodeStrategy = "Yolo" }),
			`spec.nodeStrategy: Unsupported value: "Yolo": supported values: "Drain", "Handoff"`},
		{"a backend port out of range", created(validUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = &ztv1.RouteSpec{
				HTTPRoute: &ztv1.ObjectRef{Namespace: "default", Name: "r"},
				Stable:    ztv1.BackendRef{Namespace: "a", Name: "s", Port: 80},
				Canary:    ztv1.BackendRef{Namespace: "b", Name: "c", Port: 70000},
			}
		}), "spec.route.canary.port in body should be less than or equal to 65535"},
	}
}

// vsRoute is a valid VirtualService route: two subsets of the reviews Service.
func vsRoute() *ztv1.RouteSpec {
	return &ztv1.RouteSpec{
		VirtualService: &ztv1.VirtualServiceRef{Namespace: "shop", Name: "reviews", DestinationRule: "reviews"},
		Stable:         ztv1.BackendRef{Namespace: "shop", Name: "reviews", Port: 9080, Subset: "v1"},
		Canary:         ztv1.BackendRef{Namespace: "shop", Name: "reviews", Port: 9080, Subset: "v2"},
	}
}

func TestValidRoutesAreAccepted(t *testing.T) {
	c := apiClient(t)
	for _, tc := range []struct {
		name  string
		route *ztv1.RouteSpec
		test  *ztv1.TrafficTest
	}{
		{"a virtualService route between two subsets of one Service", vsRoute(), &ztv1.TrafficTest{URL: "http://gateway/", CanaryBodyRegex: `reviews-v2`}},
		{"an httpRoute between two Services", &ztv1.RouteSpec{
			HTTPRoute: &ztv1.ObjectRef{Namespace: "a", Name: "r"},
			Stable:    ztv1.BackendRef{Namespace: "a", Name: "s", Port: 80},
			Canary:    ztv1.BackendRef{Namespace: "b", Name: "c", Port: 80},
		}, &ztv1.TrafficTest{URL: "http://gateway/", CanaryHeader: &ztv1.HeaderMatch{Name: "x-version", Value: "v2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := validUpgrade()
			u.Name = "valid-route"
			u.Spec.Route, u.Spec.Analysis.TrafficTest = tc.route, tc.test
			if err := c.Create(context.Background(), u); err != nil {
				t.Fatalf("create: %v", err)
			}
			if err := c.Delete(context.Background(), u); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestValidUpgradeIsAcceptedWithDefaults(t *testing.T) {
	c := apiClient(t)
	u := validUpgrade()
	if err := c.Create(context.Background(), u); err != nil {
		t.Fatalf("create valid upgrade: %v", err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), u) })
	got := &ztv1.RevisionUpgrade{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: u.Name}, got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.NodeLabel != "istio.io/rev" || got.Spec.NodeStrategy != ztv1.NodeStrategyDrain ||
		got.Spec.Ztunnel.Namespace != "istio-system" || got.Spec.Rollback.Automatic == nil || !*got.Spec.Rollback.Automatic ||
		got.Spec.StepTimeout == nil {
		t.Errorf("defaults not applied: %+v", got.Spec)
	}

	t.Run("steps may change while valid", func(t *testing.T) {
		changed := got.DeepCopy()
		changed.Spec.Steps[2].Pause = nil
		if err := c.Update(context.Background(), changed); err != nil {
			t.Fatalf("update steps: %v", err)
		}
	})
}

func TestNodeCaptureIsClusterScopedWithStatus(t *testing.T) {
	c := apiClient(t)
	nc := &ztv1.NodeCapture{ObjectMeta: metav1.ObjectMeta{Name: "ambient-worker"}}
	if err := c.Create(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), nc) })
	now := metav1.Now()
	nc.Status = ztv1.NodeCaptureStatus{
		ObservedAt: &now, NodeRevision: "1-18-1", Verdict: ztv1.VerdictMatch,
		Pods: []ztv1.PodCapture{{Namespace: "bookinfo", Name: "reviews-v1", State: ztv1.CaptureSingle, CapturedBy: "1-18-1",
			Ports: []ztv1.PortCapture{{Port: 15006, Listeners: []ztv1.Listener{{Revision: "1-18-1", CgroupID: 1234, TGID: 42, Listening: true, Accepted: 25}}}}}},
	}
	if err := c.Status().Update(context.Background(), nc); err != nil {
		t.Fatalf("status update: %v", err)
	}
}
