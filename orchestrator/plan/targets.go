package plan

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/intstr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Target resolves a step's count (nodes or namespaces) against the scope size: a
// count is capped at the scope, a percentage rounds up so "1%" of any scope moves
// one.
func Target(count intstr.IntOrString, total int) (int, error) {
	if s := count.StrVal; count.Type == intstr.String {
		pct, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
		if err != nil || !strings.HasSuffix(s, "%") || pct < 0 || pct > 100 {
			return 0, fmt.Errorf("nodes %q is not a percentage from 0%% to 100%%", s)
		}
		return int(math.Ceil(float64(pct) * float64(total) / 100)), nil
	}
	n := int(count.IntVal)
	if n < 0 {
		return 0, fmt.Errorf("nodes %d is negative", n)
	}
	return min(n, total), nil
}

// TargetNodes is how many nodes of a scope of total run the to revision after step.
func TargetNodes(step ztv1.Step, total int) (int, error) { return Target(step.Nodes, total) }

// TargetNamespaces is how many namespaces of a scope of total are moved after step
// (Sidecar mode; absent: none).
func TargetNamespaces(step ztv1.Step, total int) (int, error) {
	if step.Namespaces == nil {
		return 0, nil
	}
	return Target(*step.Namespaces, total)
}
