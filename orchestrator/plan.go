package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
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

// ScopeSelector is the selector of the nodes in scope: spec.nodeSelector, or else
// the nodes whose node label is spec.from.
func ScopeSelector(spec *ztv1.RevisionUpgradeSpec) (labels.Selector, error) {
	if spec.NodeSelector == nil {
		return labels.SelectorFromSet(labels.Set{nodeLabel(spec): spec.From}), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(spec.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("spec.nodeSelector: %w", err)
	}
	return sel, nil
}

// StepPlan is what one step of an upgrade will do, planned before the upgrade starts.
type StepPlan struct {
	// Index of the step in spec.steps.
	Index int
	// Target is how many nodes of the scope run the to revision after the step.
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

// Plan checks spec against the nodes in scope (those ScopeSelector picks) as the
// orchestrator does when the upgrade starts, and returns what each step will do. It
// changes nothing. Nodes are picked as the orchestrator picks them, in name order,
// skipping NotReady and cordoned ones; a step that lacks nodes now reports Short.
func Plan(spec *ztv1.RevisionUpgradeSpec, scope []corev1.Node) ([]StepPlan, error) {
	if err := validatePlan(spec, len(scope)); err != nil {
		return nil, err
	}
	nodes := scopeNodes(spec, scope)
	live := make(map[string]*corev1.Node, len(scope))
	for i := range scope {
		live[scope[i].Name] = &scope[i]
	}
	u := &ztv1.RevisionUpgrade{Spec: *spec}
	out := make([]StepPlan, 0, len(spec.Steps))
	prevTarget, prevWeight := 0, int32(0)
	for i, st := range spec.Steps {
		target, err := targetNodes(st, len(nodes))
		if err != nil {
			return nil, fmt.Errorf("spec.steps[%d]: %w", i, err)
		}
		p := StepPlan{Index: i, Target: target}
		chooseNodes(nodes, int32(i), target, live)
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
			s := desiredSplit(u, i)
			p.Split = &s
			p.TrafficFirst = target == len(nodes) && prevTarget < target && st.Traffic.Weight != nil && *st.Traffic.Weight > prevWeight
			prevWeight = s.CanaryWeight
		}
		prevTarget = target
		out = append(out, p)
	}
	return out, nil
}

// Preflight runs the orchestrator's preflight checks of u (Ambient: the to
// revision's istiod and ztunnel, the workload namespaces, the route and its
// backends; Sidecar: istiod, the injectors and the namespaces they would select)
// without changing anything. A refusal is an error for which RefusalReason reports
// true.
func Preflight(ctx context.Context, c client.Client, routes RouterFactory, u *ztv1.RevisionUpgrade) error {
	r := &Reconciler{Client: c, Log: zap.NewNop(), Routes: routes}
	if u.Spec.Mode == ztv1.ModeSidecar {
		_, err := r.preflightSidecar(ctx, u)
		return err
	}
	_, err := r.preflight(ctx, u)
	return err
}

// PlanSidecar resolves the namespaces of a Sidecar upgrade as the orchestrator does
// when it starts (through the sidecar preflight, which the default scope needs: the
// namespaces the from injector enrols) and returns the scope and what each step
// moves, in StepPlan.Namespaces: in name order, one namespace at a time. It changes
// nothing. A refusal (RefusalReason reports it; InvalidSpec for steps that do not
// fit the scope) is returned as the error.
func PlanSidecar(ctx context.Context, c client.Client, u *ztv1.RevisionUpgrade) ([]string, []StepPlan, error) {
	r := &Reconciler{Client: c, Log: zap.NewNop()}
	scope, err := r.preflightSidecar(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	if err := validateSidecarPlan(&u.Spec, len(scope)); err != nil {
		return nil, nil, err
	}
	nss := scopeNamespaces(scope)
	names := make([]string, len(nss))
	for i, n := range nss {
		names[i] = n.Name
	}
	var out []StepPlan
	assigned := 0
	for i, st := range u.Spec.Steps {
		target, err := targetNamespaces(st, len(nss))
		if err != nil {
			return nil, nil, refused(reasonInvalid, "spec.steps[%d].namespaces: %v", i, err)
		}
		p := StepPlan{Index: i, Target: target}
		for ; assigned < target; assigned++ {
			p.Namespaces = append(p.Namespaces, nss[assigned].Name)
		}
		out = append(out, p)
	}
	return names, out, nil
}

// RefusalReason returns the reason (as the Ready condition would carry it) of an
// error that is the orchestrator refusing an upgrade, and false for other errors.
func RefusalReason(err error) (string, bool) {
	var pf *preflightError
	if errors.As(err, &pf) {
		return pf.reason, true
	}
	return "", false
}
