package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// decision is what a steering command does to an upgrade: annotations to set
// (a nil value removes one) and what to tell the user. No annotation: nothing to
// write, only the message.
type decision struct {
	annotations map[string]*string
	message     string
}

// steer fetches the upgrade (NAME, or the one in progress), lets decide judge it and
// writes the annotations it asks for with a merge patch.
func steer(ctx context.Context, env *Env, name string, out io.Writer, decide func(*ztv1.RevisionUpgrade) (decision, error)) error {
	cl, err := env.clients()
	if err != nil {
		return err
	}
	u, err := getUpgrade(ctx, cl.Client, name)
	if err != nil {
		return err
	}
	d, err := decide(u)
	if err != nil {
		return err
	}
	if len(d.annotations) > 0 {
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": d.annotations}})
		if err != nil {
			return err
		}
		if err := cl.Client.Patch(ctx, &ztv1.RevisionUpgrade{ObjectMeta: u.ObjectMeta}, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return apiError("annotate", u.Name, err)
		}
	}
	fmt.Fprintf(out, "revisionupgrade %q: %s\n", u.Name, d.message)
	return nil
}

// refuseOver refuses a command on an upgrade that is over or not started.
func refuseOver(u *ztv1.RevisionUpgrade, what string) error {
	switch p := u.Status.Phase; p {
	case ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed:
		return fmt.Errorf("%w: revisionupgrade %q is over (%s): nothing to %s", ErrRefused, u.Name, p, what)
	case ztv1.PhaseRollingBack:
		return fmt.Errorf("%w: revisionupgrade %q is rolling back: nothing to %s; follow it with ztcanary status %s --watch", ErrRefused, u.Name, what, u.Name)
	}
	return nil
}

func newPromoteCommand(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "promote [NAME]",
		Short: "Let an upgrade waiting after a step (pause: {}) go on to the next",
		Long: `Sets the annotation ` + ztv1.AnnotationPromote + `=<current step index>, which ends the manual
pause of that step. Promoting a step that is still moving its nodes lets it go
on without waiting once it is done. Without NAME: the upgrade in progress.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return steer(cmd.Context(), env, nameArg(args), cmd.OutOrStdout(), decidePromote)
		},
	}
}

func decidePromote(u *ztv1.RevisionUpgrade) (decision, error) {
	if err := refuseOver(u, "promote"); err != nil {
		return decision{}, err
	}
	if u.Status.Phase == "" || u.Status.Phase == ztv1.PhasePending {
		return decision{}, fmt.Errorf("%w: revisionupgrade %q has not started (Pending): nothing to promote yet", ErrRefused, u.Name)
	}
	i := int(u.Status.CurrentStep)
	if i >= len(u.Spec.Steps) {
		return decision{}, fmt.Errorf("%w: revisionupgrade %q is at step %d of %d", ErrRefused, u.Name, i, len(u.Spec.Steps))
	}
	if p := u.Spec.Steps[i].Pause; p == nil || p.Duration != nil {
		return decision{}, fmt.Errorf("%w: step %d of revisionupgrade %q has no manual pause (pause: {}): it goes on by itself, nothing to promote", ErrRefused, i, u.Name)
	}
	value := strconv.Itoa(i)
	if u.Annotations[ztv1.AnnotationPromote] == value {
		return decision{message: fmt.Sprintf("step %d is already promoted (%s=%s)", i, ztv1.AnnotationPromote, value)}, nil
	}
	msg := fmt.Sprintf("promoted step %d (%s=%s)", i, ztv1.AnnotationPromote, value)
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused); u.Status.StepStage != ztv1.StagePausing || c == nil || c.Reason != ztv1.ReasonAwaitingPromote {
		msg += fmt.Sprintf("; the step is still %s and will go on without waiting once it is done", u.Status.StepStage)
	} else if i+1 < len(u.Spec.Steps) {
		msg += fmt.Sprintf("; it goes on to step %d", i+1)
	} else {
		msg += "; it was the last step: the upgrade completes"
	}
	if u.Annotations[ztv1.AnnotationPause] == "true" {
		msg += "; it is also paused by request: ztcanary resume " + u.Name
	}
	return decision{annotations: map[string]*string{ztv1.AnnotationPromote: &value}, message: msg}, nil
}

func newPauseCommand(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "pause [NAME]",
		Short: "Hold an upgrade before its next action (resume lets it go on)",
		Long: `Sets the annotation ` + ztv1.AnnotationPause + `=true: the orchestrator holds the upgrade
before its next action (a node already being swapped is not left half-way: its
state is in the API and the swap continues on resume). Without NAME: the upgrade
in progress.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return steer(cmd.Context(), env, nameArg(args), cmd.OutOrStdout(), decidePause)
		},
	}
}

func decidePause(u *ztv1.RevisionUpgrade) (decision, error) {
	if err := refuseOver(u, "pause"); err != nil {
		return decision{}, err
	}
	if u.Annotations[ztv1.AnnotationPause] == "true" {
		return decision{message: "already paused by request; ztcanary resume " + u.Name + " lets it go on"}, nil
	}
	t := "true"
	return decision{
		annotations: map[string]*string{ztv1.AnnotationPause: &t},
		message:     fmt.Sprintf("pause requested (%s=true): it holds before its next action; ztcanary resume %s lets it go on", ztv1.AnnotationPause, u.Name),
	}, nil
}

func newResumeCommand(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "resume [NAME]",
		Short: "Let a paused upgrade go on",
		Long: `Removes the annotation ` + ztv1.AnnotationPause + `. An upgrade waiting for a promote after a
step needs ztcanary promote instead. Without NAME: the upgrade in progress.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return steer(cmd.Context(), env, nameArg(args), cmd.OutOrStdout(), decideResume)
		},
	}
}

func decideResume(u *ztv1.RevisionUpgrade) (decision, error) {
	if err := refuseOver(u, "resume"); err != nil {
		return decision{}, err
	}
	if _, ok := u.Annotations[ztv1.AnnotationPause]; !ok {
		c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused)
		switch {
		case c != nil && c.Status == "True" && c.Reason == ztv1.ReasonAwaitingPromote:
			return decision{}, fmt.Errorf("%w: revisionupgrade %q is not paused by request: it waits for a promote after step %d: ztcanary promote %s", ErrRefused, u.Name, u.Status.CurrentStep, u.Name)
		case c != nil && c.Status == "True" && c.Reason == ztv1.ReasonRouteDrift:
			return decision{}, fmt.Errorf("%w: revisionupgrade %q is held because its route changed under it (%s): put the route back as ztcanary set it, or ztcanary abort %s", ErrRefused, u.Name, c.Message, u.Name)
		}
		return decision{}, fmt.Errorf("%w: revisionupgrade %q is not paused (no annotation %s)", ErrRefused, u.Name, ztv1.AnnotationPause)
	}
	msg := fmt.Sprintf("resumed (%s removed)", ztv1.AnnotationPause)
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused); c != nil && c.Status == "True" && c.Reason == ztv1.ReasonAwaitingPromote {
		msg += fmt.Sprintf("; it still waits for a promote of step %d: ztcanary promote %s", u.Status.CurrentStep, u.Name)
	}
	return decision{annotations: map[string]*string{ztv1.AnnotationPause: nil}, message: msg}, nil
}

func newAbortCommand(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "abort [NAME]",
		Short: "Roll an upgrade in progress back: nodes, pinning and route as they were",
		Long: `Sets the annotation ` + ztv1.AnnotationAbort + `=true: the orchestrator restores the route, the
nodes' revisions (with the upgrade's strategy), the recorded pinning, and evicts
canary pods from restored nodes. Follow it with ztcanary status --watch. Without
NAME: the upgrade in progress.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return steer(cmd.Context(), env, nameArg(args), cmd.OutOrStdout(), decideAbort)
		},
	}
}

func decideAbort(u *ztv1.RevisionUpgrade) (decision, error) {
	switch u.Status.Phase {
	case ztv1.PhaseRollingBack:
		return decision{message: "already rolling back; follow it with ztcanary status " + u.Name + " --watch"}, nil
	case ztv1.PhaseSucceeded:
		return decision{}, fmt.Errorf("%w: revisionupgrade %q succeeded: a finished upgrade cannot be aborted; %s", ErrRefused, u.Name, reverseHint(u))
	case ztv1.PhaseRolledBack:
		return decision{}, fmt.Errorf("%w: revisionupgrade %q is already rolled back", ErrRefused, u.Name)
	case ztv1.PhaseFailed:
		return decision{}, fmt.Errorf("%w: revisionupgrade %q stopped as Failed (automatic rollback off) and its nodes stay as they are; %s", ErrRefused, u.Name, reverseHint(u))
	case "", ztv1.PhasePending:
		return decision{}, fmt.Errorf("%w: revisionupgrade %q has not started (Pending) and changed nothing: delete it with kubectl delete revisionupgrade %s", ErrRefused, u.Name, u.Name)
	}
	if u.Annotations[ztv1.AnnotationAbort] == "true" {
		return decision{message: "abort already requested; the orchestrator rolls back on its next pass"}, nil
	}
	t := "true"
	return decision{
		annotations: map[string]*string{ztv1.AnnotationAbort: &t},
		message:     fmt.Sprintf("abort requested (%s=true): it rolls back; follow it with ztcanary status %s --watch", ztv1.AnnotationAbort, u.Name),
	}, nil
}

// reverseHint says how to undo a finished upgrade: another upgrade the other way.
func reverseHint(u *ztv1.RevisionUpgrade) string {
	return fmt.Sprintf("to go back, run an upgrade the other way while revision %s is still installed: ztcanary plan --from %s --to %s ...", u.Spec.From, u.Spec.To, u.Spec.From)
}

func newRollbackCommand(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback [NAME]",
		Short: "Same as abort, for an upgrade in progress (a finished one cannot be undone)",
		Long: `Rolls back an upgrade in progress, exactly as abort does. A finished upgrade
(Succeeded, or Failed without automatic rollback) is not rolled back: the command
says how to run the upgrade the other way instead.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return steer(cmd.Context(), env, nameArg(args), cmd.OutOrStdout(), decideAbort)
		},
	}
}
