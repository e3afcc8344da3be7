package orchestrator

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// Ownership: an upgrade carries the finalizer ztv1.FinalizerRollback from before
// its first action until it ends, so deleting it in progress rolls it back first
// (its status is the only record of what to restore), and deleting a finished or
// never-started one changes nothing.

func started(u *ztv1.RevisionUpgrade) bool {
	return u.Status.Phase != "" && u.Status.Phase != ztv1.PhasePending
}

func deleting(u *ztv1.RevisionUpgrade) bool { return !u.DeletionTimestamp.IsZero() }

// owned makes sure u carries the finalizer before the orchestrator acts on it (u
// then holds the new resourceVersion, which the status patch's lock expects).
func (r *Reconciler) owned(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	if controllerutil.ContainsFinalizer(u, ztv1.FinalizerRollback) {
		return nil
	}
	// The patch answers with the stored object: it goes into a copy, so the status
	// this pass changed stays in u for the status patch.
	obj := u.DeepCopy()
	patch := client.MergeFromWithOptions(obj.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(obj, ztv1.FinalizerRollback)
	drive.CountWrite("finalizer")
	if err := r.Client.Patch(ctx, obj, patch); err != nil {
		return fmt.Errorf("add finalizer %s: %w", ztv1.FinalizerRollback, err)
	}
	u.Finalizers, u.ResourceVersion = obj.Finalizers, obj.ResourceVersion
	return nil
}

// release removes the finalizer from an upgrade that has nothing left to restore
// (it ended, or it is deleted before it started), so it can go.
func (r *Reconciler) release(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	if !controllerutil.ContainsFinalizer(u, ztv1.FinalizerRollback) {
		return nil
	}
	obj := u.DeepCopy()
	patch := client.MergeFromWithOptions(obj.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(obj, ztv1.FinalizerRollback)
	drive.CountWrite("finalizer")
	if err := r.Client.Patch(ctx, obj, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("remove finalizer %s: %w", ztv1.FinalizerRollback, err)
	}
	if deleting(u) {
		r.Recorder.Eventf(u, drive.EventNormal, ztv1.ReasonDeleted, "deleted in phase %s: nothing left to restore, the upgrade goes", drive.PhaseOrNone(u.Status.Phase))
	}
	return nil
}

// rollBackDeleted begins the rollback of an upgrade deleted while in progress,
// whatever spec.rollback.automatic says; the finalizer goes once it is RolledBack.
func (r *Reconciler) rollBackDeleted(d drive.Driver, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	msg := "deleted while in progress: rolling back before the upgrade goes (its status is the record of what to restore)"
	r.BeginRollback(u, d.RollbackStage(), ztv1.ReasonDeleted, msg)
	return ctrl.Result{}, nil
}
