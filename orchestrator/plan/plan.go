package plan

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
)

// StepPlan is what one step of an upgrade will do, planned before the upgrade starts.
type StepPlan struct {
	// Index of the step in spec.steps.
	Index int
	// Target is how many nodes (namespaces) of the scope run the to revision after
	// the step.
	Target int
	// Nodes are the nodes the step moves, in the order the orchestrator picks them.
	Nodes []string
	// Namespaces are the namespaces a Sidecar upgrade's step moves, in order.
	Namespaces []string
	// Short is how many of the step's nodes are not Ready and schedulable now: the
	// step waits for that many more to become available.
	Short int
	// Split is the route once the step is done; nil when the step leaves it as is.
	Split *gatewayroutes.Split
	// TrafficFirst says the step shifts its traffic before it moves its nodes: it
	// moves the last stable nodes, which must not serve traffic by then.
	TrafficFirst bool
}

// Nodes checks spec against the nodes in scope (those ScopeSelector picks) as the
// orchestrator does when the upgrade starts, and returns what each step will do.
// Nodes are picked as the orchestrator picks them, in name order, skipping NotReady
// and cordoned ones; a step that lacks nodes now reports Short.
func Nodes(spec *ztv1.RevisionUpgradeSpec, scope []corev1.Node) ([]StepPlan, error) {
	if err := ValidateNodes(spec, len(scope)); err != nil {
		return nil, err
	}
	nodes := ScopeNodes(spec, scope)
	live := make(map[string]*corev1.Node, len(scope))
	for i := range scope {
		live[scope[i].Name] = &scope[i]
	}
	out := make([]StepPlan, 0, len(spec.Steps))
	prevTarget, prevWeight := 0, int32(0)
	for i, st := range spec.Steps {
		target, err := TargetNodes(st, len(nodes))
		if err != nil {
			return nil, fmt.Errorf("spec.steps[%d]: %w", i, err)
		}
		p := StepPlan{Index: i, Target: target}
		ChooseNodes(nodes, int32(i), target, live)
		assigned := 0
		for _, n := range nodes {
			if n.Step == int32(i) {
				p.Nodes = append(p.Nodes, n.Name)
			}
			if n.Step >= 0 {
				assigned++
			}
		}
		p.Short = max(0, target-assigned)
		if st.Traffic != nil && spec.Route != nil {
			s := DesiredSplit(spec, i)
			p.Split = &s
			p.TrafficFirst = TrafficFirst(spec, i, target, len(nodes), prevTarget, prevWeight)
			prevWeight = s.CanaryWeight
		}
		prevTarget = target
		out = append(out, p)
	}
	return out, nil
}
