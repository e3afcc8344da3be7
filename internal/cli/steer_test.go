package cli

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func TestSteeringCommands(t *testing.T) {
	awaiting := func(u *ztv1.RevisionUpgrade) {
		u.Status.StepStage = "Pausing"
		u.Status.Conditions = []metav1.Condition{cond(ztv1.ConditionPaused, "True", "AwaitingPromote", "step 0 done", time.Second)}
	}
	moving := func(u *ztv1.RevisionUpgrade) { u.Status.StepStage = "MovingNodes" }
	for _, tc := range []struct {
		name        string
		phase       ztv1.Phase
		step        int32
		annotations map[string]string
		setup       func(*ztv1.RevisionUpgrade)
		args        []string
		// want are the annotations after the command (key → value, "" absent).
		want    map[string]string
		wantOut string
		wantErr string
	}{
		{name: "promote sets the current step's index", phase: ztv1.PhasePaused, setup: awaiting, args: []string{"promote", "u"},
			want: map[string]string{ztv1.AnnotationPromote: "0"}, wantOut: `revisionupgrade "u": promoted step 0 (ztcanary.io/promote=0); it goes on to step 1`},
		{name: "promote without a name takes the upgrade in progress", phase: ztv1.PhasePaused, setup: awaiting, args: []string{"promote"},
			want: map[string]string{ztv1.AnnotationPromote: "0"}},
		{name: "promote ahead of the pause says the step goes on without waiting", phase: ztv1.PhaseProgressing, setup: moving, args: []string{"promote", "u"},
			want: map[string]string{ztv1.AnnotationPromote: "0"}, wantOut: "the step is still MovingNodes and will go on without waiting once it is done"},
		{name: "promote of a step with a timed pause is refused", phase: ztv1.PhaseProgressing, step: 1, args: []string{"promote", "u"},
			want: map[string]string{ztv1.AnnotationPromote: ""}, wantErr: `step 1 of revisionupgrade "u" has no manual pause (pause: {}): it goes on by itself, nothing to promote`},
		{name: "promote of a finished upgrade is refused", phase: ztv1.PhaseSucceeded, args: []string{"promote", "u"},
			want: map[string]string{ztv1.AnnotationPromote: ""}, wantErr: `revisionupgrade "u" is over (Succeeded): nothing to promote`},
		{name: "promote of a pending upgrade is refused", phase: ztv1.PhasePending, args: []string{"promote", "u"},
			want: map[string]string{ztv1.AnnotationPromote: ""}, wantErr: `has not started (Pending)`},
		{name: "promote of a paused upgrade reminds to resume", phase: ztv1.PhasePaused, setup: awaiting, annotations: map[string]string{ztv1.AnnotationPause: "true"},
			args: []string{"promote", "u"}, want: map[string]string{ztv1.AnnotationPromote: "0", ztv1.AnnotationPause: "true"}, wantOut: "ztcanary resume u"},
		{name: "pause sets the annotation", phase: ztv1.PhaseProgressing, args: []string{"pause", "u"},
			want: map[string]string{ztv1.AnnotationPause: "true"}, wantOut: "pause requested (ztcanary.io/pause=true)"},
		{name: "pause of a rollback is refused", phase: ztv1.PhaseRollingBack, args: []string{"pause", "u"},
			want: map[string]string{ztv1.AnnotationPause: ""}, wantErr: `revisionupgrade "u" is rolling back: nothing to pause`},
		{name: "resume removes the annotation and keeps the others", phase: ztv1.PhasePaused,
			annotations: map[string]string{ztv1.AnnotationPause: "true", "team": "mesh"}, args: []string{"resume", "u"},
			want: map[string]string{ztv1.AnnotationPause: "", "team": "mesh"}, wantOut: "resumed (ztcanary.io/pause removed)"},
		{name: "resume of an upgrade awaiting a promote points to promote", phase: ztv1.PhasePaused, setup: awaiting, args: []string{"resume", "u"},
			wantErr: `revisionupgrade "u" is not paused by request: it waits for a promote after step 0: ztcanary promote u`},
		{name: "resume of a running upgrade is refused", phase: ztv1.PhaseProgressing, args: []string{"resume", "u"},
			wantErr: `revisionupgrade "u" is not paused (no annotation ztcanary.io/pause)`},
		{name: "abort sets the annotation", phase: ztv1.PhaseProgressing, args: []string{"abort", "u"},
			want: map[string]string{ztv1.AnnotationAbort: "true"}, wantOut: "abort requested (ztcanary.io/abort=true)"},
		{name: "abort of a pending upgrade says to delete it", phase: ztv1.PhasePending, args: []string{"abort", "u"},
			want: map[string]string{ztv1.AnnotationAbort: ""}, wantErr: `revisionupgrade "u" has not started (Pending) and changed nothing: delete it with kubectl delete revisionupgrade u`},
		{name: "abort of a rollback is a no-op", phase: ztv1.PhaseRollingBack, args: []string{"abort", "u"},
			want: map[string]string{ztv1.AnnotationAbort: ""}, wantOut: "already rolling back"},
		{name: "rollback is abort on an upgrade in progress", phase: ztv1.PhasePaused, args: []string{"rollback", "u"},
			want: map[string]string{ztv1.AnnotationAbort: "true"}},
		{name: "rollback of a succeeded upgrade explains the way back", phase: ztv1.PhaseSucceeded, args: []string{"rollback", "u"},
			want: map[string]string{ztv1.AnnotationAbort: ""}, wantErr: `revisionupgrade "u" succeeded: a finished upgrade cannot be aborted; to go back, run an upgrade the other way while revision 1-18-0 is still installed: ztcanary plan --from 1-18-1 --to 1-18-0`},
		{name: "rollback of a failed upgrade explains the way back", phase: ztv1.PhaseFailed, args: []string{"rollback", "u"},
			wantErr: `stopped as Failed (automatic rollback off) and its nodes stay as they are`},
		{name: "rollback of a rolled back upgrade is refused", phase: ztv1.PhaseRolledBack, args: []string{"rollback", "u"},
			wantErr: `revisionupgrade "u" is already rolled back`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := seedWorld()
			u := upgradeObj("u", tc.phase, tc.step, tc.annotations)
			if tc.setup != nil {
				tc.setup(u)
			}
			w.objs = append(w.objs, u)
			env, c := w.env(t)
			out, err := run(t, env, tc.args...)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrRefused saying %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatalf("err = %v\n%s", err, out)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("output %q lacks %q", out, tc.wantOut)
			}
			got := &ztv1.RevisionUpgrade{}
			if err := c.Get(t.Context(), client.ObjectKey{Name: "u"}, got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got.Annotations[k] != v {
					t.Errorf("annotation %s = %q, want %q", k, got.Annotations[k], v)
				}
			}
			if tc.wantErr != "" && len(got.Annotations) != len(tc.annotations) {
				t.Errorf("a refused command changed the annotations to %v", got.Annotations)
			}
		})
	}
}

func TestSteeringWithoutName(t *testing.T) {
	t.Run("no upgrade in progress", func(t *testing.T) {
		w := seedWorld()
		w.objs = append(w.objs, upgradeObj("done", ztv1.PhaseSucceeded, 2, nil))
		env, _ := w.env(t)
		_, err := run(t, env, "pause")
		if err == nil || err.Error() != "no upgrade in progress (1 finished): name one, list them with kubectl get revisionupgrades" {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("two in progress must be named", func(t *testing.T) {
		w := seedWorld()
		w.objs = append(w.objs, upgradeObj("a", ztv1.PhaseProgressing, 0, nil), upgradeObj("b", ztv1.PhasePaused, 0, nil))
		env, _ := w.env(t)
		_, err := run(t, env, "abort")
		if err == nil || err.Error() != "2 upgrades are in progress (a, b): name one" {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("a missing name", func(t *testing.T) {
		env, _ := seedWorld().env(t)
		_, err := run(t, env, "abort", "nope")
		if !errors.Is(err, ErrNotFound) || err.Error() != `revisionupgrade "nope" not found: list them with kubectl get revisionupgrades` {
			t.Errorf("err = %v", err)
		}
	})
}
