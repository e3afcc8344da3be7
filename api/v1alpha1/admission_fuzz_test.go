package v1alpha1_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// fuzzSteps decodes 3 bytes a step: how nodes is written and its value, then traffic
// (none, header, or a weight from -20 to 235).
func fuzzSteps(data []byte) []ztv1.Step {
	var steps []ztv1.Step
	for len(data) >= 3 && len(steps) < 40 {
		var st ztv1.Step
		v := int(data[1])
		switch data[0] % 4 {
		case 0:
			st.Nodes = intstr.FromInt(v % 20)
		case 1:
			st.Nodes = intstr.FromString(fmt.Sprintf("%d%%", v%130))
		case 2:
			st.Nodes = intstr.FromInt(-(v % 3))
		default:
			st.Nodes = intstr.FromString([]string{"50", "5 %", "%", "050%", "1000%"}[v%5])
		}
		switch t := data[2]; {
		case t < 80:
		case t < 100:
			st.Traffic = &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}
		default:
			st.Traffic = &ztv1.StepTraffic{Weight: ptr.To(int32(t) - 120)}
		}
		steps = append(steps, st)
		data = data[3:]
	}
	return steps
}

var labelValue = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
var percent = regexp.MustCompile(`^(100|[1-9]?[0-9])%$`)

// admissible is the API contract of DESIGN.md and the issue, written independently of
// the CRD's schema and CEL rules: revisions are label values and differ, 1-32 steps,
// node counts at least 0 or percentages 0-100% that never decrease (counts compared with
// counts), weights 0-100 that never decrease, at most one header step, before any
// weight step.
func admissible(from, to string, steps []ztv1.Step) bool {
	if len(from) == 0 || len(from) > 63 || !labelValue.MatchString(from) || len(to) == 0 || len(to) > 63 || !labelValue.MatchString(to) || from == to {
		return false
	}
	if len(steps) < 1 || len(steps) > 32 {
		return false
	}
	var counts, weights []int
	headers, weightSeen := 0, false
	for _, st := range steps {
		if st.Nodes.Type == intstr.Int {
			if st.Nodes.IntVal < 0 {
				return false
			}
			counts = append(counts, int(st.Nodes.IntVal))
		} else if !percent.MatchString(st.Nodes.StrVal) {
			return false
		}
		if st.Traffic == nil {
			continue
		}
		if st.Traffic.Header != nil {
			headers++
			if weightSeen {
				return false
			}
		}
		if w := st.Traffic.Weight; w != nil {
			if *w < 0 || *w > 100 {
				return false
			}
			weightSeen = true
			weights = append(weights, int(*w))
		}
	}
	return headers <= 1 && slices.IsSorted(counts) && slices.IsSorted(weights)
}

// FuzzAdmission sends generated RevisionUpgrades to the real kube-apiserver with the
// generated CRD (server-side dry run: nothing is stored) and checks that what it admits
// is exactly what the contract admits, and that every refusal names the spec field.
func FuzzAdmission(f *testing.F) {
	c := apiClient(f)
	f.Add("1-18-0", "1-18-1", []byte{0, 1, 80, 0, 1, 130, 1, 50, 170, 1, 100, 220})
	f.Add("1-18-0", "1-18-0", []byte{1, 100, 0})
	f.Add("1.18/0", "1-18-1", []byte{1, 100, 0})
	f.Add("a", "b", []byte{0, 3, 0, 0, 2, 0})
	f.Add("a", "b", []byte{0, 1, 130, 0, 1, 90, 1, 100, 220})
	f.Add("a", "b", []byte{3, 0, 0})
	f.Add("a", "b", []byte{1, 1, 250})
	f.Add("a", "b", []byte{})
	f.Fuzz(func(t *testing.T, from, to string, data []byte) {
		steps := fuzzSteps(data)
		u := &ztv1.RevisionUpgrade{
			ObjectMeta: metav1.ObjectMeta{Name: "fuzz"},
			Spec: ztv1.RevisionUpgradeSpec{
				From: from, To: to, Steps: steps,
				Route: &ztv1.RouteSpec{
					HTTPRoute: &ztv1.ObjectRef{Namespace: "default", Name: "r"},
					Stable:    ztv1.BackendRef{Namespace: "a", Name: "s", Port: 80},
					Canary:    ztv1.BackendRef{Namespace: "b", Name: "c", Port: 80},
				},
			},
		}
		err := c.Create(context.Background(), u, client.DryRunAll)
		want := admissible(from, to, steps)
		switch {
		case err == nil && !want:
			t.Fatalf("the apiserver admitted what the contract refuses: from %q to %q steps %s", from, to, describe(steps))
		case err != nil && !apierrors.IsInvalid(err):
			if apierrors.IsBadRequest(err) && !utf8Safe(from+to) {
				return // not valid UTF-8: refused before validation
			}
			t.Fatalf("create: %v", err)
		case err != nil && want:
			t.Fatalf("the apiserver refused what the contract admits: from %q to %q steps %s: %v", from, to, describe(steps), err)
		case err != nil && !strings.Contains(err.Error(), "spec"):
			t.Fatalf("refusal does not name the field: %v", err)
		}
	})
}

func utf8Safe(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func describe(steps []ztv1.Step) string {
	var b strings.Builder
	for _, st := range steps {
		fmt.Fprintf(&b, "[%s", st.Nodes.String())
		if st.Traffic != nil && st.Traffic.Header != nil {
			b.WriteString(" header")
		}
		if st.Traffic != nil && st.Traffic.Weight != nil {
			fmt.Fprintf(&b, " w%d", *st.Traffic.Weight)
		}
		b.WriteString("]")
	}
	return b.String()
}
