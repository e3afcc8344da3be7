package drive

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ztcanary/ztcanary/orchestrator/plan"
	ctrl "sigs.k8s.io/controller-runtime"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// SetCondition sets a condition and reports whether it changed.
func SetCondition(u *ztv1.RevisionUpgrade, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	return meta.SetStatusCondition(&u.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: u.Generation,
	})
}

// SetPhase moves the upgrade to phase p, with an Event on a change.
func (e *Env) SetPhase(u *ztv1.RevisionUpgrade, p ztv1.Phase) {
	if u.Status.Phase == p {
		return
	}
	e.Recorder.Eventf(u, EventNormal, string(p), "phase %s → %s", PhaseOrNone(u.Status.Phase), p)
	u.Status.Phase = p
}

// PhaseOrNone names a phase for a message ("None" before the first).
func PhaseOrNone(p ztv1.Phase) string {
	if p == "" {
		return "None"
	}
	return string(p)
}

// SetStage records a new stage of the current step (or rollback) and when it began.
func (e *Env) SetStage(u *ztv1.RevisionUpgrade, stage ztv1.Stage) {
	if u.Status.StepStage == stage {
		return
	}
	u.Status.StepStage = stage
	u.Status.Message = fmt.Sprintf("step %d: %s", u.Status.CurrentStep, stage)
	e.Recorder.Eventf(u, EventNormal, "Stage", "step %d: %s", u.Status.CurrentStep, stage)
	now := metav1.NewTime(e.Clock.Now())
	u.Status.StageStartedAt = &now
}

// StartStep begins step i with stage: the step's clock (spec.stepTimeout) starts
// now.
func (e *Env) StartStep(u *ztv1.RevisionUpgrade, i int, stage ztv1.Stage) {
	u.Status.CurrentStep = int32(i)
	now := metav1.NewTime(e.Clock.Now())
	u.Status.StepStartedAt = &now
	e.SetStage(u, stage)
}

// Timeout is the upgrade's step timeout.
func Timeout(u *ztv1.RevisionUpgrade) time.Duration { return u.Spec.StepTimeoutOrDefault() }

// TimedOut reports whether the current step has run longer than its timeout.
func (e *Env) TimedOut(u *ztv1.RevisionUpgrade) bool { return e.Expired(u, u.Status.StepStartedAt) }

// Expired reports whether more than the step timeout has passed since since.
func (e *Env) Expired(u *ztv1.RevisionUpgrade, since *metav1.Time) bool {
	return since != nil && e.Clock.Since(since.Time) > Timeout(u)
}

// Refuse records why the upgrade cannot start (Ready=False, an Event on a change);
// nothing else changes.
func (e *Env) Refuse(u *ztv1.RevisionUpgrade, reason, msg string) {
	if SetCondition(u, ztv1.ConditionReady, metav1.ConditionFalse, reason, msg) {
		e.Recorder.Event(u, EventWarning, reason, msg)
	}
	u.Status.Message = msg
}

// NotStarted ends a pass of an upgrade that could not start: a *plan.Refusal is
// recorded (Ready=False, an Event) and checked again after PreflightRetry; any other
// error is the pass's error, retried with backoff.
func (e *Env) NotStarted(u *ztv1.RevisionUpgrade, err error) (ctrl.Result, error) {
	var r *plan.Refusal
	if errors.As(err, &r) {
		e.Refuse(u, r.Reason, r.Error())
		return ctrl.Result{RequeueAfter: PreflightRetry}, nil
	}
	return ctrl.Result{}, err
}

// StartRollback records why the upgrade goes back and begins the rollback at stage
// first, or, without automatic rollback, stops the upgrade Failed where it is.
func (e *Env) StartRollback(u *ztv1.RevisionUpgrade, first ztv1.Stage, reason, msg string) {
	if u.Spec.Rollback.Automatic != nil && !*u.Spec.Rollback.Automatic {
		e.SetPhase(u, ztv1.PhaseFailed)
		SetCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, reason, msg)
		u.Status.Message = "failed (automatic rollback disabled): " + msg
		e.Recorder.Event(u, EventWarning, reason, msg)
		return
	}
	e.BeginRollback(u, first, reason, msg)
}

// BeginRollback begins the rollback at stage first, whatever spec.rollback says (an
// upgrade being deleted rolls back: its record of what to restore is about to go).
func (e *Env) BeginRollback(u *ztv1.RevisionUpgrade, first ztv1.Stage, reason, msg string) {
	e.SetPhase(u, ztv1.PhaseRollingBack)
	e.SetStage(u, first)
	SetCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, reason, msg)
	SetCondition(u, ztv1.ConditionRolledBack, metav1.ConditionFalse, ztv1.ReasonRollingBack, "rolling back: "+msg)
	u.Status.Message = "rolling back: " + msg
	e.Recorder.Event(u, EventWarning, reason, msg)
	rollbacksTotal.WithLabelValues(reason).Inc()
}

// FinishRollback records a rollback that restored everything: phase RolledBack,
// with the reason it started.
func (e *Env) FinishRollback(u *ztv1.RevisionUpgrade) {
	why := "rolled back"
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack); c != nil {
		why = "rolled back: " + strings.TrimPrefix(c.Message, "rolling back: ")
	}
	reason := ztv1.ReasonRolledBack
	if n := len(u.Status.Unrestored); n > 0 {
		reason = ztv1.ReasonIncomplete
		var names []string
		for _, o := range u.Status.Unrestored {
			names = append(names, o.Kind+" "+strings.TrimPrefix(o.Namespace+"/"+o.Name, "/")+" ("+o.Reason+")")
		}
		why += fmt.Sprintf("; %d objects not restored: %s", n, Summarize(names))
	}
	SetCondition(u, ztv1.ConditionRolledBack, metav1.ConditionTrue, reason, why)
	e.SetPhase(u, ztv1.PhaseRolledBack)
	e.SetStage(u, ztv1.StageDone)
	u.Status.Message = why
}

// Unrestored records that a rollback could not restore an object (once).
func Unrestored(u *ztv1.RevisionUpgrade, kind, ns, name, reason string) {
	for _, o := range u.Status.Unrestored {
		if o.Kind == kind && o.Namespace == ns && o.Name == name {
			return
		}
	}
	u.Status.Unrestored = append(u.Status.Unrestored, ztv1.UnrestoredObject{Kind: kind, Namespace: ns, Name: name, Reason: reason})
}

// Summarize joins what a pass waits for, naming the first three.
func Summarize(items []string) string {
	if len(items) > 3 {
		return fmt.Sprintf("%s and %d more", strings.Join(items[:3], "; "), len(items)-3)
	}
	return strings.Join(items, "; ")
}
