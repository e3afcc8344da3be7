package plan

import (
	"fmt"
	"slices"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Overlap names what two upgrades would both change: ztunnel DaemonSets (the same
// namespace and a revision in common), the route, workload namespaces, nodes (the
// nodes of running, which its status records, against scope, the nodes another
// upgrade's selector picks now), or, between Sidecar upgrades, an injector revision.
// Two upgrades that overlap must not run at once: a node would flip between them.
func Overlap(running, other *ztv1.RevisionUpgrade, scope []string) []string {
	a, b := &running.Spec, &other.Spec
	var out []string
	shared := sharedRevisions(a, b)
	if a.Mode == ztv1.ModeSidecar || b.Mode == ztv1.ModeSidecar {
		if a.Mode == b.Mode && len(shared) > 0 {
			out = append(out, fmt.Sprintf("the sidecar injector of revision %s", shared[0]))
		}
		return out
	}
	if a.Ztunnel.Namespace == b.Ztunnel.Namespace && len(shared) > 0 {
		out = append(out, fmt.Sprintf("the ztunnel DaemonSet of revision %s in %s", shared[0], a.Ztunnel.Namespace))
	}
	if r := routeKey(a); r != "" && r == routeKey(b) {
		out = append(out, "route "+r)
	}
	for _, w := range b.Workloads {
		if slices.ContainsFunc(a.Workloads, func(o ztv1.WorkloadPin) bool { return o.Namespace == w.Namespace }) {
			out = append(out, "workload namespace "+w.Namespace)
			break
		}
	}
	for _, n := range running.Status.Nodes {
		if slices.Contains(scope, n.Name) {
			out = append(out, "node "+n.Name)
			break
		}
	}
	return out
}

func sharedRevisions(a, b *ztv1.RevisionUpgradeSpec) []string {
	var out []string
	for _, r := range []string{a.From, a.To} {
		if r == b.From || r == b.To {
			out = append(out, r)
		}
	}
	return out
}

func routeKey(s *ztv1.RevisionUpgradeSpec) string {
	switch {
	case s.Route == nil:
		return ""
	case s.Route.HTTPRoute != nil:
		return "HTTPRoute " + s.Route.HTTPRoute.Namespace + "/" + s.Route.HTTPRoute.Name
	case s.Route.VirtualService != nil:
		return "VirtualService " + s.Route.VirtualService.Namespace + "/" + s.Route.VirtualService.Name
	}
	return ""
}
