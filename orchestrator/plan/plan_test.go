package plan

import (
	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func TestTargetNodes(t *testing.T) {
	cases := []struct {
		name  string
		nodes intstr.IntOrString
		total int
		want  int
	}{
		{"a count is taken as is", intstr.FromInt32(3), 10, 3},
		{"a count above the scope is capped", intstr.FromInt32(30), 10, 10},
		{"a percentage rounds up", intstr.FromString("10%"), 5, 1},
		{"half of an odd scope rounds up", intstr.FromString("50%"), 5, 3},
		{"100% is every node", intstr.FromString("100%"), 7, 7},
		{"0% is no node", intstr.FromString("0%"), 7, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TargetNodes(ztv1.Step{Nodes: tc.nodes}, tc.total)
			if err != nil || got != tc.want {
				t.Errorf("TargetNodes(%s, %d) = %d, %v; want %d", tc.nodes.String(), tc.total, got, err, tc.want)
			}
		})
	}
	if _, err := TargetNodes(ztv1.Step{Nodes: intstr.FromString("ten")}, 5); err == nil {
		t.Error("a malformed percentage was accepted")
	}
}

func steps(nodes ...intstr.IntOrString) []ztv1.Step {
	out := make([]ztv1.Step, len(nodes))
	for i, n := range nodes {
		out[i] = ztv1.Step{Nodes: n}
	}
	return out
}

func TestValidatePlan(t *testing.T) {
	route := &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "a", Name: "r"}}
	weight := func(w int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(w)} }
	cases := []struct {
		name  string
		spec  ztv1.RevisionUpgradeSpec
		total int
		want  string // "" for accepted
	}{
		{"the seed flow is accepted", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Steps: steps(intstr.FromInt32(1), intstr.FromString("50%"), intstr.FromString("100%"))}, 4, ""},
		{"an empty scope is refused", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Steps: steps(intstr.FromString("100%"))}, 0, "no node in scope"},
		{"a count after a larger percentage is refused", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Steps: steps(intstr.FromString("50%"), intstr.FromInt32(1), intstr.FromString("100%"))}, 10, "spec.steps[1].nodes: 1 is 1 of 10 nodes, fewer than the 5"},
		{"steps that stop short are refused", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Steps: steps(intstr.FromInt32(1))}, 3, "end with nodes: 100%"},
		{"moving the last node before full traffic is refused", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Route: route,
			Steps: []ztv1.Step{{Nodes: intstr.FromInt32(1), Traffic: weight(10)}, {Nodes: intstr.FromString("100%"), Traffic: weight(50)}}}, 3,
			"spec.steps[1] moves the last stable node but traffic is only 50% canary"},
		{"full traffic on the last step is accepted", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Route: route,
			Steps: []ztv1.Step{{Nodes: intstr.FromInt32(1), Traffic: weight(10)}, {Nodes: intstr.FromString("100%"), Traffic: weight(100)}}}, 3, ""},
		{"a workload of a third revision is refused", ztv1.RevisionUpgradeSpec{From: "a", To: "b", Steps: steps(intstr.FromString("100%")),
			Workloads: []ztv1.WorkloadPin{{Namespace: "x", Revision: "c"}}}, 2, `spec.workloads[0].revision: "c" is neither`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateNodes(&tc.spec, tc.total)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func readyNode(name string, cordoned, ready bool) *corev1.Node {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Unschedulable: cordoned},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
}

func TestChooseNodesSkipsUnavailableNodesInStableOrder(t *testing.T) {
	nodes := []ztv1.NodeStatus{{Name: "a", Step: -1}, {Name: "b", Step: -1}, {Name: "c", Step: -1}, {Name: "d", Step: -1}, {Name: "e", Step: -1}}
	live := map[string]*corev1.Node{
		"a": readyNode("a", false, true),
		"b": readyNode("b", true, true),   // cordoned by someone: skipped
		"c": readyNode("c", false, false), // NotReady: skipped
		"d": readyNode("d", false, true),
		"e": readyNode("e", false, true),
	}
	if added := ChooseNodes(nodes, 0, 2, live); added != 2 {
		t.Fatalf("added %d, want 2", added)
	}
	got := []int32{nodes[0].Step, nodes[1].Step, nodes[2].Step, nodes[3].Step, nodes[4].Step}
	if want := []int32{0, -1, -1, 0, -1}; !equal(got, want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	// Calling again for the same step adds nothing (never more than asked).
	if added := ChooseNodes(nodes, 0, 2, live); added != 0 {
		t.Errorf("second call added %d", added)
	}
	// The next step asks for 4 but only 3 nodes are available: it takes e and waits.
	if added := ChooseNodes(nodes, 1, 4, live); added != 1 || nodes[4].Step != 1 {
		t.Errorf("step 1 added %d (e at step %d), want 1 (e at step 1)", added, nodes[4].Step)
	}
}

func equal(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
