package plan

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// fuzzSpec decodes fuzz bytes into a spec: 3 bytes a step (how nodes is written, its
// value, its traffic), the route present when withRoute.
func fuzzSpec(data []byte, withRoute bool) *ztv1.RevisionUpgradeSpec {
	spec := &ztv1.RevisionUpgradeSpec{From: "1-18-0", To: "1-18-1"}
	if withRoute {
		spec.Route = &ztv1.RouteSpec{}
	}
	for len(data) >= 3 {
		var st ztv1.Step
		v := int(data[1])
		switch data[0] % 4 {
		case 0:
			st.Nodes = intstr.FromInt(v)
		case 1:
			st.Nodes = intstr.FromString(fmt.Sprintf("%d%%", v%120))
		case 2:
			st.Nodes = intstr.FromInt(-v)
		default:
			st.Nodes = intstr.FromString(fmt.Sprint(v)) // no % sign
		}
		switch t := data[2]; {
		case t < 100:
		case t < 110:
			st.Traffic = &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}
		default:
			st.Traffic = &ztv1.StepTraffic{Weight: ptr.To(int32(t-110) % 101)}
		}
		spec.Steps = append(spec.Steps, st)
		data = data[3:]
	}
	return spec
}

// FuzzValidatePlan: validatePlan never panics; what it refuses names the field to fix
// (spec....); and for what it accepts, walking the steps as the reconciler does moves a
// never decreasing number of nodes, never more than the scope, ends with every node
// moved, and has traffic fully on the canary before the last stable node moves.
func FuzzValidatePlan(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 50, 0, 1, 100, 0}, uint16(4), false)
	f.Add([]byte{0, 1, 100, 1, 50, 120, 1, 100, 210}, uint16(10), true)
	f.Add([]byte{1, 100, 0}, uint16(0), false)
	f.Add([]byte{0, 3, 0, 0, 2, 0}, uint16(5), false)
	f.Add([]byte{3, 50, 0}, uint16(5), false)
	f.Fuzz(func(t *testing.T, data []byte, total uint16, withRoute bool) {
		spec := fuzzSpec(data, withRoute)
		n := int(total % 2000)
		err := ValidateNodes(spec, n)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "spec.") {
				t.Fatalf("refusal %q does not name the field to fix", err)
			}
			return
		}
		prev, weight := 0, int32(0)
		for i, st := range spec.Steps {
			got, err := TargetNodes(st, n)
			if err != nil {
				t.Fatalf("accepted plan, but step %d: %v", i, err)
			}
			if got < prev || got > n {
				t.Fatalf("step %d moves to %d nodes after %d, of %d", i, got, prev, n)
			}
			if st.Traffic != nil && st.Traffic.Weight != nil {
				weight = *st.Traffic.Weight
			}
			if withRoute && got == n && prev < n && weight != 100 {
				t.Fatalf("step %d moves the last stable node at weight %d", i, weight)
			}
			prev = got
		}
		if prev != n {
			t.Fatalf("accepted plan ends with %d of %d nodes", prev, n)
		}
	})
}

// FuzzTargetNodes: a step's target is within the scope, a count is capped at it, and a
// non-zero percentage of a non-empty scope moves at least one node.
func FuzzTargetNodes(f *testing.F) {
	f.Add("10%", int32(0), uint16(7))
	f.Add("", int32(3), uint16(2))
	f.Add("101%", int32(0), uint16(2))
	f.Add("-5%", int32(0), uint16(2))
	f.Fuzz(func(t *testing.T, s string, count int32, total uint16) {
		step := ztv1.Step{Nodes: intstr.FromInt32(count)}
		if s != "" {
			step.Nodes = intstr.FromString(s)
		}
		n := int(total)
		got, err := TargetNodes(step, n)
		if err != nil {
			return
		}
		if got < 0 || got > n {
			t.Fatalf("%s of %d nodes gives %d", step.Nodes.String(), n, got)
		}
		if s != "" && s != "0%" && n > 0 && got == 0 && !strings.HasPrefix(strings.TrimLeft(s, "+0"), "%") {
			t.Fatalf("%s of %d nodes moves none", s, n)
		}
	})
}
