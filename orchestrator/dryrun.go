package orchestrator

import (
	"context"

	"go.uber.org/zap"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/ambient"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
	"github.com/ztcanary/ztcanary/orchestrator/sidecar"
)

// Preflight runs the orchestrator's preflight checks of u (Ambient: the to
// revision's istiod and ztunnel, the workload namespaces, the route and its
// backends; Sidecar: istiod, the injectors and the namespaces they would select)
// without changing anything, for the CLI's dry run. A refusal is an error for
// which plan.RefusalReason reports true.
func Preflight(ctx context.Context, c client.Client, routes ambient.RouterFactory, u *ztv1.RevisionUpgrade) error {
	return NewReconciler(&drive.Env{Client: c, Log: zap.NewNop()}, routes).Preflight(ctx, u)
}

// PlanSidecar resolves the namespaces of a Sidecar upgrade as the orchestrator does
// when it starts and returns the scope and what each step moves (see
// sidecar.Driver.Plan). It changes nothing.
func PlanSidecar(ctx context.Context, c client.Client, u *ztv1.RevisionUpgrade) ([]string, []plan.StepPlan, error) {
	d := &sidecar.Driver{Env: &drive.Env{Client: c, Log: zap.NewNop()}}
	return d.Plan(ctx, u)
}
