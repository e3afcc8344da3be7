package plan

import (
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// ValidateNodes checks what the schema cannot: node targets that only compare once
// the scope is known, and that traffic is fully on the canary before the last stable
// node moves (else the stable workloads would be left Pending while serving traffic).
func ValidateNodes(spec *ztv1.RevisionUpgradeSpec, total int) error {
	if total == 0 {
		return fmt.Errorf("spec.nodeSelector: no node in scope (no node is labelled %s=%s, or the selector matches none)", spec.NodeLabelOrDefault(), spec.From)
	}
	prev := 0
	weightSoFar := int32(0)
	for i, st := range spec.Steps {
		n, err := TargetNodes(st, total)
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

// Schedulable reports whether a node may be moved now: Ready and not cordoned by
// someone else.
func Schedulable(n *corev1.Node) bool {
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

// ChooseNodes assigns nodes to step to reach want canary nodes. Nodes already
// assigned keep their step; new ones are taken in the scope's stable order (by name),
// skipping NotReady and cordoned nodes, never more than the step asks for. It
// returns how many nodes were newly assigned; fewer than needed means the step waits
// for a node to become available.
func ChooseNodes(nodes []ztv1.NodeStatus, step int32, want int, live map[string]*corev1.Node) int {
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
		if !ok || !Schedulable(n) {
			continue
		}
		nodes[i].Step = step
		assigned++
		added++
	}
	return added
}

// ScopeNodes builds the status entries of the nodes in scope, sorted by name.
func ScopeNodes(spec *ztv1.RevisionUpgradeSpec, nodes []corev1.Node) []ztv1.NodeStatus {
	key := spec.NodeLabelOrDefault()
	out := make([]ztv1.NodeStatus, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		out = append(out, ztv1.NodeStatus{
			Name:             n.Name,
			OriginalRevision: n.Labels[key],
			Revision:         n.Labels[key],
			Step:             -1,
			Phase:            ztv1.NodeStable,
			WasCordoned:      n.Spec.Unschedulable,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ScopeSelector is the selector of the nodes in scope: spec.nodeSelector, or else
// the nodes whose node label is spec.from.
func ScopeSelector(spec *ztv1.RevisionUpgradeSpec) (labels.Selector, error) {
	if spec.NodeSelector == nil {
		return labels.SelectorFromSet(labels.Set{spec.NodeLabelOrDefault(): spec.From}), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(spec.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("spec.nodeSelector: %w", err)
	}
	return sel, nil
}

// CountCanary counts the nodes of an upgrade that run the to revision.
func CountCanary(nodes []ztv1.NodeStatus) int {
	n := 0
	for _, s := range nodes {
		if s.Phase == ztv1.NodeCanary {
			n++
		}
	}
	return n
}
