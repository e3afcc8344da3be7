package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/ambient"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/sidecar"
)

// Reconciler is the controller shell that drives RevisionUpgrades: it fetches an
// upgrade, applies the steering annotations (pause, resume, abort, promote), runs
// the pause between steps, hands everything else to the driver of the upgrade's
// mode, records errors in the Degraded condition and patches the status. Every
// decision is recorded in the object's status before it is acted on, and every
// action is derived from the cluster's state, so killing the process at any point
// and starting another reaches the same end.
type Reconciler struct {
	*drive.Env
	// Drivers run the upgrades of each mode.
	Drivers map[ztv1.Mode]drive.Driver
	// Coalesce is how long a change of a watched object may wait, merged with the
	// changes that follow, before the upgrades are reconciled (default 500ms).
	Coalesce time.Duration
}

// NewReconciler wires the shell to the drivers of both modes over one Env: node
// waves (routes through routes, gates after each traffic step) and namespace waves.
func NewReconciler(env *drive.Env, routes ambient.RouterFactory, gates ...ambient.Gate) *Reconciler {
	if env.Clock == nil {
		env.Clock = clock.RealClock{}
	}
	return &Reconciler{Env: env, Drivers: map[ztv1.Mode]drive.Driver{
		ztv1.ModeAmbient: &ambient.Driver{Env: env, Routes: routes, Gates: gates},
		ztv1.ModeSidecar: &sidecar.Driver{Env: env},
	}}
}

// driver returns the driver of u's mode (Ambient when unset, as the API defaults).
func (r *Reconciler) driver(u *ztv1.RevisionUpgrade) (drive.Driver, error) {
	mode := u.Spec.Mode
	if mode == "" {
		mode = ztv1.ModeAmbient
	}
	d, ok := r.Drivers[mode]
	if !ok {
		return nil, fmt.Errorf("spec.mode: no driver for mode %q", mode)
	}
	return d, nil
}

// Preflight runs the preflight checks of u's mode without changing anything. A
// refusal is an error for which plan.RefusalReason reports true.
func (r *Reconciler) Preflight(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	d, err := r.driver(u)
	if err != nil {
		return err
	}
	return d.Preflight(ctx, u)
}

// SetupWithManager registers the reconciler: RevisionUpgrades, and every object whose
// change can unblock an upgrade (nodes, pods, DaemonSets, Deployments, NodeCaptures),
// mapped to all upgrades still in progress. Only changes a pass reads wake it, and
// those are coalesced (events.go).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	stores, err := drive.NewStores(context.Background(), mgr.GetCache())
	if err != nil {
		return err
	}
	r.Stores = stores
	active := r.coalescedUpgrades()
	return ctrl.NewControllerManagedBy(mgr).
		Named("revisionupgrade").
		For(&ztv1.RevisionUpgrade{}).
		Watches(&corev1.Node{}, active, builder.WithPredicates(nodeEvents)).
		Watches(&corev1.Pod{}, active, builder.WithPredicates(podEvents)).
		Watches(&appsv1.DaemonSet{}, active, builder.WithPredicates(daemonSetEvents)).
		Watches(&appsv1.Deployment{}, active, builder.WithPredicates(deploymentEvents)).
		Watches(&appsv1.StatefulSet{}, active, builder.WithPredicates(statefulSetEvents)).
		Watches(&ztv1.NodeCapture{}, active).
		Complete(r)
}

// activeUpgrades names the upgrades still in progress. It runs on every watched
// event, so it reads the cache without copying (upgrade statuses hold a thousand
// node entries). A failed read is logged: the upgrades' own requeues and the next
// event bring them back.
func (r *Reconciler) activeUpgrades(ctx context.Context, _ client.Object) []reconcile.Request {
	var list ztv1.RevisionUpgradeList
	if err := r.Client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		r.Log.Warn("list upgrades to wake", zap.Error(err))
		return nil
	}
	var out []reconcile.Request
	for _, u := range list.Items {
		if !u.Status.Phase.Terminal() {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Name: u.Name}})
		}
	}
	return out
}

// Reconcile fetches the upgrade, takes at most one round of actions, and patches the
// status it changed (with an optimistic lock, so two replicas cannot both advance).
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (res ctrl.Result, err error) {
	labelled(ctx, func(ctx context.Context) { res, err = r.reconcileOnce(ctx, req) })
	return res, err
}

// reconcileOnce is one pass of Reconcile, run under the reconcile profile label
// (cpu.go), so a CPU profile tells the passes from watching the cluster.
func (r *Reconciler) reconcileOnce(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	u := &ztv1.RevisionUpgrade{}
	if err := r.Client.Get(ctx, req.NamespacedName, u); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if u.Status.Phase.Terminal() || (deleting(u) && !started(u)) {
		return ctrl.Result{}, r.release(ctx, u)
	}
	if started(u) && !deleting(u) {
		if err := r.owned(ctx, u); err != nil {
			return ctrl.Result{}, err
		}
	}
	before := u.DeepCopy()
	res, err := r.guarded(ctx, u)
	if err == nil && started(u) && !started(before) {
		// Owned before the start is recorded, so before anything moves; a refused
		// upgrade is not written to.
		if err := r.owned(ctx, u); err != nil {
			return ctrl.Result{}, err
		}
		before.ResourceVersion = u.ResourceVersion
	}
	r.noteError(u, err)
	wrote, perr := r.patchStatus(ctx, before, u)
	if perr != nil {
		if apierrors.IsConflict(perr) {
			return ctrl.Result{Requeue: true}, nil
		}
		err = errors.Join(err, fmt.Errorf("patch status: %w", perr))
	}
	if wrote {
		r.observe(before, u)
	}
	if perr == nil && u.Status.Phase.Terminal() {
		err = errors.Join(err, r.release(ctx, u))
	}
	if err != nil {
		// Not logged here: controller-runtime logs it once and retries with backoff
		// (a result beside an error would be ignored).
		return ctrl.Result{}, err
	}
	return res, nil
}

// errPanic marks a pass that panicked: the upgrade shows it as Degraded (the pass
// is retried with backoff), and the process goes on serving the other upgrades.
var errPanic = errors.New("reconcile pass panicked")

// guarded runs one pass and turns a panic into an error, logged with its stack:
// no spec or status the API admits may crash the orchestrator into a loop.
func (r *Reconciler) guarded(ctx context.Context, u *ztv1.RevisionUpgrade) (res ctrl.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.Log.Error("reconcile pass panicked", zap.String("upgrade", u.Name), zap.Any("panic", p), zap.Stack("stack"))
			res, err = ctrl.Result{}, fmt.Errorf("%w: %v (a bug in ztcanary: please report it with the orchestrator's log)", errPanic, p)
		}
	}()
	return r.reconcile(ctx, u)
}

// maxConditionMessage bounds the error text a condition carries.
const maxConditionMessage = 1024

// noteError records the outcome of a pass in the Degraded condition: an error that
// would otherwise only be logged and retried (a write the API server refuses, for
// example) becomes visible on the upgrade, and the condition turns False once a pass
// completes again.
func (r *Reconciler) noteError(u *ztv1.RevisionUpgrade, err error) {
	if err == nil {
		if meta.IsStatusConditionTrue(u.Status.Conditions, ztv1.ConditionDegraded) {
			drive.SetCondition(u, ztv1.ConditionDegraded, metav1.ConditionFalse, ztv1.ReasonRecovered, "the last reconcile pass completed")
		}
		return
	}
	msg := err.Error()
	if len(msg) > maxConditionMessage {
		msg = strings.ToValidUTF8(msg[:maxConditionMessage], "") + "…"
	}
	msg += " (retried with backoff)"
	was := meta.IsStatusConditionTrue(u.Status.Conditions, ztv1.ConditionDegraded)
	drive.SetCondition(u, ztv1.ConditionDegraded, metav1.ConditionTrue, ztv1.ReasonReconcileError, msg)
	if !was {
		r.Recorder.Event(u, drive.EventWarning, ztv1.ReasonReconcileError, msg)
	}
}
