package orchestrator

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// targetNodes resolves a step's node count against the scope size: a count is
// capped at the scope, a percentage rounds up so "1%" of any scope moves a node.
func targetNodes(step ztv1.Step, total int) (int, error) {
	if s := step.Nodes.StrVal; step.Nodes.Type == intstr.String {
		pct, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
		if err != nil || !strings.HasSuffix(s, "%") || pct < 0 || pct > 100 {
			return 0, fmt.Errorf("nodes %q is not a percentage from 0%% to 100%%", s)
		}
		return int(math.Ceil(float64(pct) * float64(total) / 100)), nil
	}
	n := int(step.Nodes.IntVal)
	if n < 0 {
		return 0, fmt.Errorf("nodes %d is negative", n)
	}
	return min(n, total), nil
}

// validatePlan checks what the schema cannot: node targets that only compare once the
// scope is known, and that traffic is fully on the canary before the last stable node
// moves (else the stable workloads would be left Pending while serving traffic).
func validatePlan(spec *ztv1.RevisionUpgradeSpec, total int) error {
	if total == 0 {
		return fmt.Errorf("spec.nodeSelector: no node in scope (no node is labelled %s=%s, or the selector matches none)", nodeLabel(spec), spec.From)
	}
	prev := 0
	weightSoFar := int32(0)
	for i, st := range spec.Steps {
		n, err := targetNodes(st, total)
		if err != nil {
			return fmt.Errorf("spec.steps[%d]: %w", i, err)
		}
		if n < prev {
			return fmt.Errorf("spec.steps[%d].nodes: %s is %d of %d nodes, fewer than the %d of the step before; node counts must never decrease", i, st.Nodes.String(), n, total, prev)
		}
		if st.Traffic != nil && st.Traffic.Weight != nil {
			weightSoFar = *st.Traffic.Weight
		}
		if spec.Route != nil && n == total && prev < total && weightSoFar < 100 {
			return fmt.Errorf("spec.steps[%d] moves the last stable node but traffic is only %d%% canary by then: give that step (or an earlier one) traffic weight 100", i, weightSoFar)
		}
		if st.Traffic != nil && spec.Route == nil {
			return fmt.Errorf("spec.steps[%d].traffic: set spec.route to say which route to shift", i)
		}
		prev = n
	}
	if prev < total {
		return fmt.Errorf("spec.steps: the last step moves %d of %d nodes; end with nodes: 100%% so the upgrade completes", prev, total)
	}
	for i, w := range spec.Workloads {
		if w.Revision != spec.From && w.Revision != spec.To {
			return fmt.Errorf("spec.workloads[%d].revision: %q is neither spec.from (%s) nor spec.to (%s)", i, w.Revision, spec.From, spec.To)
		}
	}
	return nil
}

// schedulable reports whether a node may be moved now: Ready and not cordoned by
// someone else.
func schedulable(n *corev1.Node) bool {
	if n.Spec.Unschedulable {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// chooseNodes assigns nodes to step to reach want canary nodes. Nodes already
// assigned keep their step; new ones are taken in the scope's stable order (by name),
// skipping NotReady and cordoned nodes, never more than the step asks for. It
// returns how many nodes were newly assigned; fewer than needed means the step waits
// for a node to become available.
func chooseNodes(nodes []ztv1.NodeStatus, step int32, want int, live map[string]*corev1.Node) int {
	assigned := 0
	for _, n := range nodes {
		if n.Step >= 0 && n.Step <= step {
			assigned++
		}
	}
	added := 0
	for i := range nodes {
		if assigned >= want {
			break
		}
		if nodes[i].Step >= 0 {
			continue
		}
		n, ok := live[nodes[i].Name]
		if !ok || !schedulable(n) {
			continue
		}
		nodes[i].Step = step
		assigned++
		added++
	}
	return added
}

// scopeNodes builds the status entries of the nodes in scope, sorted by name.
func scopeNodes(spec *ztv1.RevisionUpgradeSpec, nodes []corev1.Node) []ztv1.NodeStatus {
	out := make([]ztv1.NodeStatus, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		out = append(out, ztv1.NodeStatus{
			Name:             n.Name,
			OriginalRevision: n.Labels[nodeLabel(spec)],
			Revision:         n.Labels[nodeLabel(spec)],
			Step:             -1,
			Phase:            ztv1.NodeStable,
			WasCordoned:      n.Spec.Unschedulable,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func nodeLabel(spec *ztv1.RevisionUpgradeSpec) string {
	if spec.NodeLabel == "" {
		return "istio.io/rev"
	}
	return spec.NodeLabel
}
