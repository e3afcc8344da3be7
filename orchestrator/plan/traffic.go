package plan

import (
	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
)

// DesiredSplit is the route the steps up to and including step i ask for: the test
// header rule once its step is reached (kept for testers until the end), and the
// last weight set.
func DesiredSplit(spec *ztv1.RevisionUpgradeSpec, i int) gatewayroutes.Split {
	var s gatewayroutes.Split
	for j := 0; j <= i && j < len(spec.Steps); j++ {
		t := spec.Steps[j].Traffic
		switch {
		case t == nil:
		case t.Header != nil:
			s.Header = &gatewayroutes.Header{Name: t.Header.Name, Value: t.Header.Value}
		case t.Weight != nil:
			s.CanaryWeight = *t.Weight
		}
	}
	return s
}

// TrafficFirst says whether step i shifts its traffic before it moves its nodes: it
// moves the last stable nodes (want is the whole scope and fewer are canary), so the
// stable workloads must not serve traffic by then.
func TrafficFirst(spec *ztv1.RevisionUpgradeSpec, i, want, total, canary int, weightNow int32) bool {
	st := spec.Steps[i]
	return want == total && canary < want && st.Traffic != nil && st.Traffic.Weight != nil && weightNow < *st.Traffic.Weight
}
