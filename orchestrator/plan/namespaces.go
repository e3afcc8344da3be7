package plan

import (
	"sort"

	corev1 "k8s.io/api/core/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// ValidateNamespaces checks what the schema cannot: percentages of namespaces
// against the scope of a Sidecar upgrade.
func ValidateNamespaces(spec *ztv1.RevisionUpgradeSpec, total int) error {
	prev := 0
	for i, st := range spec.Steps {
		n, err := TargetNamespaces(st, total)
		if err != nil {
			return Refused(ztv1.ReasonInvalidSpec, "spec.steps[%d].namespaces: %v", i, err)
		}
		if n < prev {
			return Refused(ztv1.ReasonInvalidSpec, "spec.steps[%d].namespaces: %s is %d of %d namespaces, fewer than the %d of the step before; namespace counts must never decrease", i, st.Namespaces.String(), n, total, prev)
		}
		prev = n
	}
	if prev < total {
		return Refused(ztv1.ReasonInvalidSpec, "spec.steps: the last step moves %d of %d namespaces; end with namespaces: 100%% so the upgrade completes", prev, total)
	}
	return nil
}

// ScopeNamespaces builds the status entries of the namespaces in scope, by name.
func ScopeNamespaces(nss []corev1.Namespace) []ztv1.NamespaceStatus {
	out := make([]ztv1.NamespaceStatus, 0, len(nss))
	for _, n := range nss {
		out = append(out, ztv1.NamespaceStatus{Name: n.Name, Step: -1, Phase: ztv1.NodeStable})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ChooseNamespaces assigns namespaces to step, in the scope's order, until want are
// assigned to it or an earlier step; it returns how many it newly assigned.
func ChooseNamespaces(nss []ztv1.NamespaceStatus, step int32, want int) int {
	assigned, added := 0, 0
	for _, n := range nss {
		if n.Step >= 0 && n.Step <= step {
			assigned++
		}
	}
	for j := range nss {
		if assigned >= want {
			break
		}
		if nss[j].Step < 0 {
			nss[j].Step = step
			assigned++
			added++
		}
	}
	return added
}

// CountCanaryNamespaces counts the namespaces moved to the to revision and verified.
func CountCanaryNamespaces(nss []ztv1.NamespaceStatus) int32 {
	n := int32(0)
	for _, s := range nss {
		if s.Phase == ztv1.NodeCanary {
			n++
		}
	}
	return n
}

// Namespaces checks a Sidecar upgrade's steps against its scope (resolved by the
// sidecar preflight) and returns what each step moves, in StepPlan.Namespaces: in
// name order, one namespace at a time. A step that does not fit the scope is a
// Refusal with reason InvalidSpec.
func Namespaces(spec *ztv1.RevisionUpgradeSpec, scope []corev1.Namespace) ([]StepPlan, error) {
	if err := ValidateNamespaces(spec, len(scope)); err != nil {
		return nil, err
	}
	nss := ScopeNamespaces(scope)
	out := make([]StepPlan, 0, len(spec.Steps))
	for i, st := range spec.Steps {
		target, err := TargetNamespaces(st, len(nss))
		if err != nil {
			return nil, Refused(ztv1.ReasonInvalidSpec, "spec.steps[%d].namespaces: %v", i, err)
		}
		p := StepPlan{Index: i, Target: target}
		ChooseNamespaces(nss, int32(i), target)
		for _, n := range nss {
			if n.Step == int32(i) {
				p.Namespaces = append(p.Namespaces, n.Name)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
