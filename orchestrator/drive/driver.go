package drive

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Driver runs the upgrades of one mode. The shell calls it once per pass with the
// upgrade as read from the API server; the driver changes the upgrade's status in
// memory (the shell patches it), and every decision it takes is in that status
// before it acts on it.
type Driver interface {
	// Preflight checks u against the cluster without changing anything (the CLI's
	// dry run); a refusal is a *plan.Refusal.
	Preflight(ctx context.Context, u *ztv1.RevisionUpgrade) error
	// Start checks u against the cluster, resolves its scope once and records it
	// (phase Progressing, step 0); a refusal sets Ready=False and changes nothing.
	Start(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error)
	// Hold is asked before each step action and during a pause: held=true holds the
	// upgrade (the driver has said why in status), to be asked again after res.
	Hold(ctx context.Context, u *ztv1.RevisionUpgrade) (res ctrl.Result, held bool, err error)
	// Progress takes the current step's stage one action further; once the step's
	// work is done it sets StagePausing, which the shell runs.
	Progress(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error)
	// StepStage is the stage each step after the first begins with.
	StepStage() ztv1.Stage
	// Describe says, for a person, where the upgrade's scope is ("2 of 4 nodes on
	// 1-18-1").
	Describe(u *ztv1.RevisionUpgrade) string
	// Finish ends an upgrade whose last step is done (gives back what it held) and
	// says what is done, for the Complete condition.
	Finish(ctx context.Context, u *ztv1.RevisionUpgrade) (string, error)
	// RollbackStage is the stage a rollback begins with.
	RollbackStage() ztv1.Stage
	// Rollback takes the rollback one action further; done=true once everything is
	// restored, which the shell then records.
	Rollback(ctx context.Context, u *ztv1.RevisionUpgrade) (res ctrl.Result, done bool, err error)
}
