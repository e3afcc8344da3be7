package drive

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Evict asks the Eviction API to remove pods, at most MaxEvictions per call; a
// PodDisruptionBudget that forbids one now (429) is not an error: the next pass
// tries again.
func (e *Env) Evict(ctx context.Context, pods []*corev1.Pod) error {
	sent := 0
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		if sent >= e.maxEvictions() {
			break
		}
		sent++
		CountWrite("eviction")
		err := e.Client.SubResource("eviction").Create(ctx, p, &policyv1.Eviction{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		})
		switch {
		case err == nil, apierrors.IsNotFound(err), apierrors.IsTooManyRequests(err):
		default:
			return fmt.Errorf("evict pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

func (e *Env) maxEvictions() int {
	if e.MaxEvictions > 0 {
		return e.MaxEvictions
	}
	return 10
}
