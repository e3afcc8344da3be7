package plan

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func TestValidateNamespaces(t *testing.T) {
	step := func(v intstr.IntOrString) ztv1.Step { return ztv1.Step{Namespaces: &v} }
	cases := []struct {
		name  string
		steps []ztv1.Step
		total int
		want  string
	}{
		{"one then all is fine", []ztv1.Step{step(intstr.FromInt32(1)), step(intstr.FromString("100%"))}, 4, ""},
		{"a percentage below the count before is refused", []ztv1.Step{step(intstr.FromInt32(3)), step(intstr.FromString("50%")), step(intstr.FromString("100%"))}, 4,
			"spec.steps[1].namespaces: 50% is 2 of 4 namespaces, fewer than the 3 of the step before"},
		{"not ending with every namespace is refused", []ztv1.Step{step(intstr.FromInt32(1))}, 3,
			"the last step moves 1 of 3 namespaces; end with namespaces: 100%"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateNamespaces(&ztv1.RevisionUpgradeSpec{Steps: tc.steps}, tc.total)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected refusal: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
