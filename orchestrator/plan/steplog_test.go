package plan

import (
	"flag"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden step logs")

// event changes a node of the simulated cluster before a pass of a step: it goes
// NotReady, is cordoned, or comes back.
type event struct {
	step, pass int
	node       string
	ready      bool
	cordoned   bool
}

// scenario is a whole upgrade replayed on the planner alone: the nodes, the spec,
// and what happens to the nodes on the way.
type scenario struct {
	name   string
	spec   ztv1.RevisionUpgradeSpec
	nodes  []string
	events []event
}

// simulate replays an upgrade as the ambient driver takes its planning decisions:
// each pass of a step assigns nodes (ChooseNodes), a node assigned is moved at
// once, the step that moves the last stable nodes shifts its traffic first
// (TrafficFirst), and a step ends when its target is reached; a step that cannot
// reach its target in 3 passes is reported as waiting. It logs a line per decision.
func simulate(sc scenario) string {
	var log strings.Builder
	say := func(format string, args ...any) { fmt.Fprintf(&log, format+"\n", args...) }
	live := map[string]*corev1.Node{}
	var scope []corev1.Node
	for _, n := range sc.nodes {
		node := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{ztv1.DefaultNodeLabel: sc.spec.From}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
		scope = append(scope, node)
	}
	for i := range scope {
		live[scope[i].Name] = &scope[i]
	}
	say("# %s", sc.name)
	if err := ValidateNodes(&sc.spec, len(scope)); err != nil {
		say("refused: %v", err)
		return log.String()
	}
	nodes := ScopeNodes(&sc.spec, scope)
	say("scope: %d nodes (%s)", len(nodes), strings.Join(sc.nodes, ", "))
	weight := int32(0)
	for i := range sc.spec.Steps {
		want, _ := TargetNodes(sc.spec.Steps[i], len(nodes))
		say("step %d: target %d of %d nodes on %s", i, want, len(nodes), sc.spec.To)
		for pass := 0; ; pass++ {
			applyEvents(sc.events, i, pass, live, say)
			if TrafficFirst(&sc.spec, i, want, len(nodes), CountCanary(nodes), weight) {
				weight = DesiredSplit(&sc.spec, i).CanaryWeight
				say("step %d pass %d: moves the last stable nodes: traffic first, canary weight %d", i, pass, weight)
				continue
			}
			if added := ChooseNodes(nodes, int32(i), want, live); added > 0 {
				say("step %d pass %d: assign %s", i, pass, assignedAt(nodes, int32(i)))
			}
			moveAssigned(nodes, int32(i))
			if done := CountCanary(nodes); done >= want {
				break
			} else if pass == 2 {
				say("step %d: waiting for %d more Ready, schedulable nodes", i, want-done)
				break
			}
		}
		weight = logTraffic(&sc.spec, i, weight, say)
	}
	say("end: %d of %d nodes on %s", CountCanary(nodes), len(nodes), sc.spec.To)
	return log.String()
}

func applyEvents(events []event, step, pass int, live map[string]*corev1.Node, say func(string, ...any)) {
	for _, e := range events {
		if e.step != step || e.pass != pass {
			continue
		}
		n := live[e.node]
		n.Spec.Unschedulable = e.cordoned
		n.Status.Conditions[0].Status = corev1.ConditionFalse
		if e.ready {
			n.Status.Conditions[0].Status = corev1.ConditionTrue
		}
		say("step %d pass %d: event: %s ready=%v cordoned=%v (schedulable=%v)", step, pass, e.node, e.ready, e.cordoned, Schedulable(n))
	}
}

func assignedAt(nodes []ztv1.NodeStatus, step int32) string {
	var names []string
	for _, n := range nodes {
		if n.Step == step && n.Phase != ztv1.NodeCanary {
			names = append(names, n.Name)
		}
	}
	return strings.Join(names, ", ")
}

func moveAssigned(nodes []ztv1.NodeStatus, step int32) {
	for j := range nodes {
		if nodes[j].Step >= 0 && nodes[j].Step <= step {
			nodes[j].Phase = ztv1.NodeCanary
		}
	}
}

// logTraffic logs the route step i leaves and returns its canary weight.
func logTraffic(spec *ztv1.RevisionUpgradeSpec, i int, weight int32, say func(string, ...any)) int32 {
	if spec.Steps[i].Traffic == nil || spec.Route == nil {
		say("step %d: route unchanged", i)
		return weight
	}
	s := DesiredSplit(spec, i)
	say("step %d: route %s", i, describeSplit(s))
	return s.CanaryWeight
}

func describeSplit(s gatewayroutes.Split) string {
	out := fmt.Sprintf("canary weight %d", s.CanaryWeight)
	if s.Header != nil {
		out += fmt.Sprintf(", header %s=%s to the canary", s.Header.Name, s.Header.Value)
	}
	return out
}

func nodeCount(v string) intstr.IntOrString {
	if strings.HasSuffix(v, "%") {
		return intstr.FromString(v)
	}
	var n int32
	fmt.Sscan(v, &n)
	return intstr.FromInt32(n)
}

func seedSpec(counts ...string) ztv1.RevisionUpgradeSpec {
	spec := ztv1.RevisionUpgradeSpec{From: "1-18-0", To: "1-18-1",
		Route: &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "bookinfo", Name: "reviews"}}}
	traffic := []*ztv1.StepTraffic{
		{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}},
		{Weight: ptr.To[int32](10)}, {Weight: ptr.To[int32](50)}, {Weight: ptr.To[int32](100)},
	}
	for i, c := range counts {
		st := ztv1.Step{Nodes: nodeCount(c)}
		if i < len(traffic) {
			st.Traffic = traffic[i]
		}
		spec.Steps = append(spec.Steps, st)
	}
	return spec
}

func workers(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("worker-%02d", i))
	}
	return out
}

// TestStepLogs replays whole upgrades on the planner and compares each decision
// with testdata/<scenario>.golden (go test -run TestStepLogs -update rewrites them).
func TestStepLogs(t *testing.T) {
	noTraffic := seedSpec("1", "50%", "100%")
	noTraffic.Route = nil
	for i := range noTraffic.Steps {
		noTraffic.Steps[i].Traffic = nil
	}
	scenarios := []scenario{
		{name: "seed-flow-4-nodes", spec: seedSpec("1", "2", "3", "100%"), nodes: workers(4)},
		{name: "percentages-round-up-7-nodes", spec: noTraffic, nodes: workers(7)},
		{name: "unavailable-nodes-are-skipped-then-waited-for", spec: seedSpec("1", "50%", "75%", "100%"), nodes: workers(4),
			events: []event{
				{step: 0, pass: 0, node: "worker-01", ready: false},
				{step: 1, pass: 0, node: "worker-03", ready: true, cordoned: true},
				{step: 3, pass: 0, node: "worker-01", ready: true},
			}},
		{name: "a-node-that-never-comes-back-leaves-the-step-waiting", spec: func() ztv1.RevisionUpgradeSpec {
			s := seedSpec("1", "100%")
			s.Steps[1].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](100)}
			return s
		}(), nodes: workers(3),
			events: []event{{step: 0, pass: 0, node: "worker-03", ready: false}}},
		{name: "last-step-without-full-traffic-is-refused", spec: func() ztv1.RevisionUpgradeSpec {
			s := seedSpec("1", "100%")
			s.Steps[1].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](50)}
			return s
		}(), nodes: workers(3)},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			golden.Check(t, "testdata/"+sc.name+".golden", simulate(sc), *update, "the planner")
		})
	}
}

// simulateNamespaces replays a Sidecar upgrade's planning: each step assigns its
// namespaces in name order (ChooseNamespaces), moved one at a time.
func simulateNamespaces(name string, spec ztv1.RevisionUpgradeSpec, names []string) string {
	var log strings.Builder
	say := func(format string, args ...any) { fmt.Fprintf(&log, format+"\n", args...) }
	say("# %s", name)
	var scope []corev1.Namespace
	for _, n := range names {
		scope = append(scope, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	if err := ValidateNamespaces(&spec, len(scope)); err != nil {
		say("refused (%s): %v", err.(*Refusal).Reason, err)
		return log.String()
	}
	nss := ScopeNamespaces(scope)
	for i := range spec.Steps {
		want, _ := TargetNamespaces(spec.Steps[i], len(nss))
		say("step %d: target %d of %d namespaces", i, want, len(nss))
		ChooseNamespaces(nss, int32(i), want)
		for j := range nss {
			if nss[j].Step == int32(i) {
				say("step %d: move namespace %s", i, nss[j].Name)
				nss[j].Phase = ztv1.NodeCanary
			}
		}
	}
	say("end: %d of %d namespaces moved", CountCanaryNamespaces(nss), len(nss))
	return log.String()
}

// TestNamespaceStepLogs replays Sidecar upgrades on the planner (golden files as
// TestStepLogs).
func TestNamespaceStepLogs(t *testing.T) {
	steps := func(counts ...string) ztv1.RevisionUpgradeSpec {
		spec := ztv1.RevisionUpgradeSpec{Mode: ztv1.ModeSidecar, From: "1-18-0", To: "1-18-1"}
		for _, c := range counts {
			v := nodeCount(c)
			spec.Steps = append(spec.Steps, ztv1.Step{Namespaces: &v})
		}
		return spec
	}
	cases := []struct {
		name  string
		spec  ztv1.RevisionUpgradeSpec
		names []string
	}{
		{"namespaces-in-name-order", steps("1", "50%", "100%"), []string{"shop", "cart", "auth", "web", "db"}},
		{"namespaces-short-of-all-are-refused", steps("1", "2"), []string{"shop", "cart", "auth"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			golden.Check(t, "testdata/"+tc.name+".golden", simulateNamespaces(tc.name, tc.spec, tc.names), *update, "the planner")
		})
	}
}
