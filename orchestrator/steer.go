package orchestrator

import (
	"context"
	"fmt"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// reconcile takes one action of the upgrade: the steering annotations first, then
// the driver of its mode (or the pause between steps, which the shell runs for
// every mode).
func (r *Reconciler) reconcile(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	d, err := r.driver(u)
	if err != nil {
		return ctrl.Result{}, err
	}
	if u.Status.Phase == ztv1.PhaseRollingBack {
		return r.rollback(ctx, d, u)
	}
	if !started(u) {
		if wait, err := r.waitForOthers(ctx, u); wait || err != nil {
			return waiting(), err
		}
		return d.Start(ctx, u)
	}
	if deleting(u) {
		return r.rollBackDeleted(d, u)
	}
	if u.Annotations[ztv1.AnnotationAbort] == "true" {
		r.StartRollback(u, d.RollbackStage(), ztv1.ReasonAborted, "aborted by request (annotation "+ztv1.AnnotationAbort+")")
		return ctrl.Result{}, nil
	}
	if u.Annotations[ztv1.AnnotationPause] == "true" {
		r.SetPhase(u, ztv1.PhasePaused)
		drive.SetCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, ztv1.ReasonPausedByRequest, "held by annotation "+ztv1.AnnotationPause+"=true; remove it (ztcanary resume) to go on")
		u.Status.Message = "paused by request"
		return ctrl.Result{}, nil
	}
	if err := checkStep(u); err != nil {
		return ctrl.Result{}, err
	}
	return r.progress(ctx, d, u)
}

// checkStep refuses to run a step the spec does not have: a status written under
// another spec (one edited before the plan's fields were immutable) cannot be
// continued, only aborted.
func checkStep(u *ztv1.RevisionUpgrade) error {
	if i := int(u.Status.CurrentStep); i < 0 || i >= len(u.Spec.Steps) {
		return fmt.Errorf("status.currentStep %d is not a step of spec.steps (%d steps): the plan changed under the upgrade; abort it (ztcanary abort %s) and create a new one", i, len(u.Spec.Steps), u.Name)
	}
	return nil
}

// progress resumes an upgrade paused by request, asks the driver whether to hold,
// and runs the current stage.
func (r *Reconciler) progress(ctx context.Context, d drive.Driver, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if u.Status.Phase == ztv1.PhasePaused && u.Status.StepStage != ztv1.StagePausing {
		r.SetPhase(u, ztv1.PhaseProgressing)
		drive.SetCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, ztv1.ReasonResumed, "resumed")
	}
	poll, held, err := d.Hold(ctx, u)
	if err != nil || held {
		return poll, err
	}
	if u.Status.StepStage == ztv1.StagePausing {
		return r.pause(ctx, d, u, poll)
	}
	return d.Progress(ctx, u)
}

// pause holds after a step: absent pause goes on at once, a duration waits, {} waits
// for a promote of this step (annotation value = step index); poll is how soon to
// look again while waiting for a person (the driver's Hold may need it). It then
// starts the next step, or finishes the upgrade after the last.
func (r *Reconciler) pause(ctx context.Context, d drive.Driver, u *ztv1.RevisionUpgrade, poll ctrl.Result) (ctrl.Result, error) {
	i := int(u.Status.CurrentStep)
	if p := u.Spec.Steps[i].Pause; p != nil {
		if p.Duration != nil {
			left := u.Status.StageStart().Add(p.Duration.Duration).Sub(r.Clock.Now())
			if left > 0 {
				u.Status.Message = fmt.Sprintf("step %d done; pausing %s more", i, left.Round(time.Second))
				return ctrl.Result{RequeueAfter: left}, nil
			}
		} else if u.Annotations[ztv1.AnnotationPromote] != strconv.Itoa(i) {
			r.SetPhase(u, ztv1.PhasePaused)
			drive.SetCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, ztv1.ReasonAwaitingPromote, fmt.Sprintf("step %d done; run `ztcanary promote %s` (annotation %s=%d) to go on", i, u.Name, ztv1.AnnotationPromote, i))
			u.Status.Message = fmt.Sprintf("step %d done (%s); waiting for promote", i, d.Describe(u))
			return poll, nil
		}
	}
	if u.Status.Phase == ztv1.PhasePaused {
		r.SetPhase(u, ztv1.PhaseProgressing)
		drive.SetCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, ztv1.ReasonPromoted, fmt.Sprintf("step %d promoted", i))
	}
	if i+1 < len(u.Spec.Steps) {
		r.StartStep(u, i+1, d.StepStage())
		u.Status.Message = fmt.Sprintf("step %d of %d", i+1, len(u.Spec.Steps))
		return ctrl.Result{}, nil
	}
	return r.finish(ctx, d, u)
}

// finish ends an upgrade whose last step is done.
func (r *Reconciler) finish(ctx context.Context, d drive.Driver, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	done, err := d.Finish(ctx, u)
	if err != nil {
		return ctrl.Result{}, err
	}
	r.SetPhase(u, ztv1.PhaseSucceeded)
	r.SetStage(u, ztv1.StageDone)
	drive.SetCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, ztv1.ReasonSucceeded, "every step done")
	drive.SetCondition(u, ztv1.ConditionComplete, metav1.ConditionTrue, ztv1.ReasonSucceeded, done)
	u.Status.Message = "done: " + done
	return ctrl.Result{}, nil
}

// rollback runs the driver's rollback and records its end.
func (r *Reconciler) rollback(ctx context.Context, d drive.Driver, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	res, done, err := d.Rollback(ctx, u)
	if err != nil || !done {
		return res, err
	}
	r.FinishRollback(u)
	return ctrl.Result{}, nil
}
