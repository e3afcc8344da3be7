package plan

import (
	"strings"
	"testing"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func TestOverlap(t *testing.T) {
	base := func() *ztv1.RevisionUpgrade {
		u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{From: "1-18-0", To: "1-18-1", Ztunnel: ztv1.ZtunnelSpec{Namespace: "istio-system"}}}
		ztv1.SetDefaults(u)
		return u
	}
	running := base()
	running.Status.Nodes = []ztv1.NodeStatus{{Name: "w1"}, {Name: "w2"}}
	running.Spec.Workloads = []ztv1.WorkloadPin{{Namespace: "shop", Revision: "1-18-1"}}
	running.Spec.Route = &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "shop", Name: "web"}}
	cases := []struct {
		name   string
		other  func(*ztv1.RevisionUpgrade)
		scope  []string
		shares string // "" for none
	}{
		{"a revision in common shares its ztunnel DaemonSet", func(u *ztv1.RevisionUpgrade) { u.Spec.From, u.Spec.To = "1-18-1", "1-19-0" }, nil, "ztunnel DaemonSet of revision 1-18-1"},
		{"other revisions in another ztunnel namespace share nothing", func(u *ztv1.RevisionUpgrade) {
			u.Spec.From, u.Spec.To, u.Spec.Ztunnel.Namespace = "1-20-0", "1-21-0", "istio-other"
		}, []string{"w9"}, ""},
		{"a node of the running upgrade in the scope is shared", func(u *ztv1.RevisionUpgrade) { u.Spec.From, u.Spec.To = "1-20-0", "1-21-0" }, []string{"w2", "w3"}, "node w2"},
		{"the same route is shared", func(u *ztv1.RevisionUpgrade) {
			u.Spec.From, u.Spec.To = "1-20-0", "1-21-0"
			u.Spec.Route = &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "shop", Name: "web"}}
		}, nil, "route HTTPRoute shop/web"},
		{"a workload namespace in common is shared", func(u *ztv1.RevisionUpgrade) {
			u.Spec.From, u.Spec.To = "1-20-0", "1-21-0"
			u.Spec.Workloads = []ztv1.WorkloadPin{{Namespace: "shop", Revision: "1-21-0"}}
		}, nil, "workload namespace shop"},
		{"an Ambient and a Sidecar upgrade share nothing", func(u *ztv1.RevisionUpgrade) { u.Spec.Mode = ztv1.ModeSidecar }, []string{"w1"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			other := base()
			tc.other(other)
			got := strings.Join(Overlap(running, other, tc.scope), "; ")
			if (tc.shares == "") != (got == "") || !strings.Contains(got, tc.shares) {
				t.Errorf("Overlap = %q, want one naming %q", got, tc.shares)
			}
		})
	}
}
