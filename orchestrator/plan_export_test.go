package orchestrator_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator"
)

func planNode(name string, cordoned, ready bool) corev1.Node {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{revKey: fromRev}},
		Spec:   corev1.NodeSpec{Unschedulable: cordoned},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
}

// describe is a readable line per planned step.
func describe(steps []plan.StepPlan) string {
	var b strings.Builder
	for _, p := range steps {
		fmt.Fprintf(&b, "%d: target %d, moves %v, short %d", p.Index, p.Target, p.Nodes, p.Short)
		if p.Split != nil {
			fmt.Fprintf(&b, ", route %s", p.Split)
		}
		if p.TrafficFirst {
			b.WriteString(", traffic first")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestPlan(t *testing.T) {
	route := &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "a", Name: "r"}}
	header := &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}
	weight := func(w int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(w)} }
	seedSteps := []ztv1.Step{
		{Nodes: intstr.FromInt32(1), Traffic: header, Pause: &ztv1.Pause{}},
		{Nodes: intstr.FromString("50%"), Traffic: weight(50)},
		{Nodes: intstr.FromString("100%"), Traffic: weight(100)},
	}
	four := []corev1.Node{planNode("w4", false, true), planNode("w1", false, true), planNode("w3", false, true), planNode("w2", false, true)}
	cases := []struct {
		name  string
		spec  ztv1.RevisionUpgradeSpec
		scope []corev1.Node
		want  string
	}{
		{"the seed flow moves nodes in name order and keeps the test rule until the end", ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Route: route, Steps: seedSteps}, four,
			"0: target 1, moves [w1], short 0, route canary 0%, header traffic=test\n" +
				"1: target 2, moves [w2], short 0, route canary 50%, header traffic=test\n" +
				"2: target 4, moves [w3 w4], short 0, route canary 100%, header traffic=test, traffic first\n"},
		{"cordoned and NotReady nodes are skipped and the step waits for them", ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Steps: []ztv1.Step{{Nodes: intstr.FromInt32(2)}, {Nodes: intstr.FromString("100%")}}},
			[]corev1.Node{planNode("w1", true, true), planNode("w2", false, true), planNode("w3", false, false), planNode("w4", false, true)},
			"0: target 2, moves [w2 w4], short 0\n1: target 4, moves [], short 2\n"},
		{"without a route no step has a split", ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Steps: []ztv1.Step{{Nodes: intstr.FromString("100%")}}}, four,
			"0: target 4, moves [w1 w2 w3 w4], short 0\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := plan.Nodes(&tc.spec, tc.scope)
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(steps); got != tc.want {
				t.Errorf("steps:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
	t.Run("a steps the orchestrator would refuse is refused with its message", func(t *testing.T) {
		spec := ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Steps: []ztv1.Step{{Nodes: intstr.FromInt32(1)}}}
		_, err := plan.Nodes(&spec, four)
		if err == nil || err.Error() != "spec.steps: the last step moves 1 of 4 nodes; end with nodes: 100% so the upgrade completes" {
			t.Errorf("err = %v", err)
		}
	})
}

func TestScopeSelector(t *testing.T) {
	sel, err := plan.ScopeSelector(&ztv1.RevisionUpgradeSpec{From: fromRev})
	if err != nil || !sel.Matches(labels.Set{revKey: fromRev}) || sel.Matches(labels.Set{revKey: toRev}) {
		t.Errorf("default scope %v, %v: want nodes labelled %s=%s", sel, err, revKey, fromRev)
	}
	sel, err = plan.ScopeSelector(&ztv1.RevisionUpgradeSpec{From: fromRev, NodeLabel: "example.com/rev"})
	if err != nil || sel.String() != "example.com/rev="+fromRev {
		t.Errorf("scope with a node label = %v, %v", sel, err)
	}
	_, err = plan.ScopeSelector(&ztv1.RevisionUpgradeSpec{From: fromRev, NodeSelector: &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: "Near"}}}})
	if err == nil || !strings.HasPrefix(err.Error(), "spec.nodeSelector: ") {
		t.Errorf("a bad selector: err = %v", err)
	}
}

func TestPreflightRefusesWithoutWriting(t *testing.T) {
	scheme, err := orchestrator.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).Build()
	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Ztunnel: ztv1.ZtunnelSpec{Namespace: istioNS}}}
	err = orchestrator.Preflight(context.Background(), c, nil, u)
	reason, ok := plan.RefusalReason(err)
	if !ok || reason != "IstiodMissing" || !strings.Contains(err.Error(), "no istiod Deployment istio-system/istiod-"+toRev) {
		t.Errorf("err = %v (reason %q, refusal %v), want IstiodMissing", err, reason, ok)
	}
	if _, ok := plan.RefusalReason(errors.New("connection refused")); ok {
		t.Error("an API error counts as a refusal")
	}
}
