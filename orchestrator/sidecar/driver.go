package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// Driver runs Sidecar-mode upgrades: namespace waves instead of node waves. Per
// namespace, in order: record its injection labels, relabel it (istio-injection
// removed, istio.io/rev=to), restart its workloads a bounded number at a time
// through their pod template, and verify that every new pod carries the to proxy,
// before the next namespace. Every decision is in status before it is acted on.
type Driver struct {
	*drive.Env
}

var _ drive.Driver = (*Driver)(nil)

// Preflight checks istiod, the injectors and the namespaces they would select,
// without changing anything.
func (d *Driver) Preflight(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	_, err := d.preflightSidecar(ctx, u)
	return err
}

// Plan resolves the namespaces of u as Start does (through the preflight, which the
// default scope needs: the namespaces the from injector enrols) and returns the
// scope and what each step moves. It changes nothing. A refusal (plan.RefusalReason
// reports it; InvalidSpec for steps that do not fit the scope) is the error.
func (d *Driver) Plan(ctx context.Context, u *ztv1.RevisionUpgrade) ([]string, []plan.StepPlan, error) {
	scope, err := d.preflightSidecar(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	steps, err := plan.Namespaces(&u.Spec, scope)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	for _, n := range plan.ScopeNamespaces(scope) {
		names = append(names, n.Name)
	}
	return names, steps, nil
}

// Start checks the spec and the cluster, resolves the namespaces once and records
// them. Any failure is the Ready condition and nothing changes.
func (d *Driver) Start(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	u.Status.Phase = ztv1.PhasePending
	scope, err := d.preflightSidecar(ctx, u)
	if err == nil {
		err = plan.ValidateNamespaces(&u.Spec, len(scope))
	}
	if err != nil {
		return d.NotStarted(u, err)
	}
	inScope := map[string]bool{}
	for _, n := range scope {
		inScope[n.Name] = true
	}
	gateways, err := d.gatewayInventory(ctx, inScope)
	if err != nil {
		return ctrl.Result{}, err
	}
	u.Status.Namespaces = plan.ScopeNamespaces(scope)
	u.Status.TotalNamespaces = int32(len(scope))
	u.Status.Gateways = gateways
	d.StartStep(u, 0, ztv1.StageMovingNamespaces)
	d.SetPhase(u, ztv1.PhaseProgressing)
	drive.SetCondition(u, ztv1.ConditionReady, metav1.ConditionTrue, ztv1.ReasonPreflightPassed, fmt.Sprintf("%d namespaces in scope; istiod-%s is ready and its injector selects them once relabelled", len(scope), u.Spec.To))
	drive.SetCondition(u, ztv1.ConditionGateways, metav1.ConditionTrue, ztv1.ReasonInventoried, gatewaySummary(gateways, u.Spec.To))
	drive.SetCondition(u, ztv1.ConditionProgressing, metav1.ConditionTrue, ztv1.ReasonStarted, "step 0 of "+strconv.Itoa(len(u.Spec.Steps)))
	u.Status.Message = "starting"
	d.Log.Info("sidecar upgrade started", zap.String("upgrade", u.Name), zap.Int("namespaces", len(scope)), zap.String("from", u.Spec.From), zap.String("to", u.Spec.To))
	return ctrl.Result{}, nil
}

// Hold never holds: a Sidecar upgrade shifts no route that could drift.
func (d *Driver) Hold(context.Context, *ztv1.RevisionUpgrade) (ctrl.Result, bool, error) {
	return ctrl.Result{}, false, nil
}

// Progress runs the step's one stage, MovingNamespaces; the shell runs Pausing.
func (d *Driver) Progress(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if u.Status.StepStage != ztv1.StageMovingNamespaces {
		return ctrl.Result{}, fmt.Errorf("unknown stage %q", u.Status.StepStage)
	}
	return d.moveNamespaces(ctx, u, int(u.Status.CurrentStep))
}

// StepStage is the stage each step after the first begins with.
func (d *Driver) StepStage() ztv1.Stage { return ztv1.StageMovingNamespaces }

// Describe says how many namespaces of the scope are on the to revision.
func (d *Driver) Describe(u *ztv1.RevisionUpgrade) string {
	return fmt.Sprintf("%d of %d namespaces on %s", u.Status.CanaryNamespaces, u.Status.TotalNamespaces, u.Spec.To)
}

// Finish has nothing to give back: the namespaces keep their new labels.
func (d *Driver) Finish(_ context.Context, u *ztv1.RevisionUpgrade) (string, error) {
	return fmt.Sprintf("all %d namespaces run %s", len(u.Status.Namespaces), u.Spec.To), nil
}

// fail starts the rollback (or stops the upgrade Failed without automatic rollback).
func (d *Driver) fail(u *ztv1.RevisionUpgrade, reason, msg string) {
	d.StartRollback(u, d.RollbackStage(), reason, msg)
}

// moveNamespaces assigns the step's namespaces (recording the choice first), then
// drives the first assigned namespace that is not on the to revision yet: one
// namespace at a time, each verified before the next starts.
func (d *Driver) moveNamespaces(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	want, err := plan.TargetNamespaces(u.Spec.Steps[i], len(u.Status.Namespaces))
	if err != nil {
		return ctrl.Result{}, err
	}
	if added := plan.ChooseNamespaces(u.Status.Namespaces, int32(i), want); added > 0 {
		u.Status.Message = fmt.Sprintf("step %d: moving %d more namespaces to %s", i, added, u.Spec.To)
		return ctrl.Result{}, nil // the choice is recorded before any namespace is touched
	}
	for j := range u.Status.Namespaces {
		n := &u.Status.Namespaces[j]
		if n.Step < 0 || n.Step > int32(i) || n.Phase == ztv1.NodeCanary {
			continue
		}
		return d.driveNamespace(ctx, u, i, n)
	}
	u.Status.CanaryNamespaces = plan.CountCanaryNamespaces(u.Status.Namespaces)
	d.SetStage(u, ztv1.StagePausing)
	return ctrl.Result{}, nil
}

// driveNamespace takes one namespace one action further towards the to revision.
func (d *Driver) driveNamespace(ctx context.Context, u *ztv1.RevisionUpgrade, i int, n *ztv1.NamespaceStatus) (ctrl.Result, error) {
	var ns corev1.Namespace
	if err := d.Client.Get(ctx, client.ObjectKey{Name: n.Name}, &ns); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("get namespace %s: %w", n.Name, err)
		}
		n.Phase, n.Verified = ztv1.NodeCanary, false
		d.Recorder.Eventf(u, drive.EventWarning, "NamespaceGone", "namespace %s was deleted before it moved", n.Name)
		return ctrl.Result{}, nil
	}
	if n.Phase == ztv1.NodeStable {
		// Record the labels to restore before changing them; the namespace's clock
		// starts now.
		n.OriginalLabels = injectionLabels(ns.Labels)
		n.Phase = ztv1.NodeMoving
		now := metav1.NewTime(d.Clock.Now())
		n.StartedAt = &now
		u.Status.Message = fmt.Sprintf("step %d: moving namespace %s to %s", i, n.Name, u.Spec.To)
		d.Recorder.Eventf(u, drive.EventNormal, "NamespaceMoving", "namespace %s: %s=%s, restarting its workloads", n.Name, mesh.RevisionKey, u.Spec.To)
		return ctrl.Result{}, nil
	}
	if d.Expired(u, namespaceStart(u, n)) {
		d.fail(u, ztv1.ReasonNamespaceTimedOut, fmt.Sprintf("namespace %s did not move to %s within %s: %s", n.Name, u.Spec.To, drive.Timeout(u), u.Status.Message))
		return ctrl.Result{}, nil
	}
	return d.restartNamespace(ctx, u, i, n, &ns)
}

// namespaceStart is when a namespace began to move (an upgrade written by an older
// orchestrator recorded it in stepStartedAt).
func namespaceStart(u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus) *metav1.Time {
	if n.StartedAt != nil {
		return n.StartedAt
	}
	return u.Status.StepStartedAt
}

// restartNamespace relabels a moving namespace and restarts its workloads until
// every pod carries the to proxy.
func (d *Driver) restartNamespace(ctx context.Context, u *ztv1.RevisionUpgrade, i int, n *ztv1.NamespaceStatus, ns *corev1.Namespace) (ctrl.Result, error) {
	if err := d.setNamespaceLabels(ctx, ns, map[string]*string{mesh.LabelInjection: nil, mesh.RevisionKey: &u.Spec.To}); err != nil {
		return ctrl.Result{}, err
	}
	ws, err := d.namespaceWorkloads(ctx, n.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	waiting, failure, err := d.advanceRestarts(ctx, u, n, ws)
	if err != nil {
		return ctrl.Result{}, err
	}
	if failure != "" {
		d.fail(u, ztv1.ReasonInjectionFailed, "namespace "+n.Name+": "+failure)
		return ctrl.Result{}, nil
	}
	if len(waiting) > 0 {
		u.Status.Message = fmt.Sprintf("step %d: namespace %s: waiting for %s", i, n.Name, drive.Summarize(waiting))
		return ctrl.Result{RequeueAfter: drive.Requeue}, nil
	}
	n.Phase, n.Verified = ztv1.NodeCanary, true
	u.Status.CanaryNamespaces = plan.CountCanaryNamespaces(u.Status.Namespaces)
	d.Recorder.Eventf(u, drive.EventNormal, "NamespaceMoved", "namespace %s: %d workloads restarted, every pod carries the %s proxy", n.Name, len(n.Workloads), u.Spec.To)
	d.Log.Info("namespace moved", zap.String("upgrade", u.Name), zap.String("namespace", n.Name), zap.String("revision", u.Spec.To), zap.Int("step", i))
	return ctrl.Result{}, nil
}

// setNamespaceLabels sets (nil: removes) labels of a namespace, writing only when
// one differs.
func (d *Driver) setNamespaceLabels(ctx context.Context, ns *corev1.Namespace, want map[string]*string) error {
	patch := map[string]any{}
	for k, v := range want {
		cur, ok := ns.Labels[k]
		switch {
		case v == nil && ok:
			patch[k] = nil
		case v != nil && (!ok || cur != *v):
			patch[k] = *v
		}
	}
	if len(patch) == 0 {
		return nil
	}
	drive.CountWrite("namespace")
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": patch}})
	if err != nil {
		return err
	}
	if err := d.Client.Patch(ctx, ns, client.RawPatch(types.MergePatchType, b)); err != nil {
		return fmt.Errorf("label namespace %s: %w", ns.Name, err)
	}
	return nil
}
