package drive

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// AvailableIstiod returns istiod-<rev> of namespace ns once it is Available. A
// missing one is refused (IstiodMissing) with the message missing, which says how
// the mode's operator installs it; one not Available yet is refused
// (IstiodNotReady): the upgrade starts by itself once it is (preflight runs again
// every PreflightRetry).
func (e *Env) AvailableIstiod(ctx context.Context, ns, rev, missing string) (*appsv1.Deployment, error) {
	var d appsv1.Deployment
	name := "istiod-" + rev
	if err := e.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, plan.Refused("IstiodMissing", "%s", missing)
		}
		return nil, fmt.Errorf("get istiod %s/%s: %w", ns, name, err)
	}
	if !DeploymentAvailable(&d) {
		return nil, plan.Refused("IstiodNotReady", "spec.to: istiod %s/%s is not Available yet (%d of %d replicas available); the upgrade starts once it is (kubectl -n %s describe deployment %s says what it waits for)",
			d.Namespace, d.Name, d.Status.AvailableReplicas, Replicas(d.Spec.Replicas), d.Namespace, d.Name)
	}
	return &d, nil
}

// DeploymentAvailable reports whether a Deployment's Available condition is True.
func DeploymentAvailable(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Replicas is a workload's desired replicas (the API's default, 1, when unset).
func Replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}
