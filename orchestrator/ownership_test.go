package orchestrator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// deleteAndWaitGone deletes an upgrade and waits until the API server forgets it.
func (e *env) deleteAndWaitGone(name string, timeout time.Duration) {
	e.t.Helper()
	ctx := context.Background()
	if err := e.c.Delete(ctx, &ztv1.RevisionUpgrade{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		e.t.Fatalf("delete upgrade %s: %v", name, err)
	}
	e.eventually("upgrade "+name+" to be gone", timeout, func() (bool, string) {
		u := &ztv1.RevisionUpgrade{}
		err := e.c.Get(ctx, client.ObjectKey{Name: name}, u)
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		return false, "phase " + string(u.Status.Phase) + ", stage " + string(u.Status.StepStage) + ": " + u.Status.Message
	})
}

// TestDeletingAnUpgradeRollsItBack: `kubectl delete ru` of an upgrade paused after
// its first wave rolls it back exactly, as an abort does, before the object goes,
// with an Event saying so; deleting a finished upgrade changes nothing.
func TestDeletingAnUpgradeRollsItBack(t *testing.T) {
	for _, strategy := range []ztv1.NodeStrategy{ztv1.NodeStrategyDrain, ztv1.NodeStrategyHandoff} {
		t.Run(string(strategy), func(t *testing.T) {
			e := newEnv(t)
			e.startOrchestrator()
			before := e.snapshot()
			steps := seedSteps()
			steps[0].Pause = &ztv1.Pause{}
			e.create(seedUpgrade("doomed", strategy, steps...))
			u := e.waitPhase("doomed", 2*time.Minute, ztv1.PhasePaused)
			if u.Status.CanaryNodes != 1 || !strings.Contains(strings.Join(u.Finalizers, ","), ztv1.FinalizerRollback) {
				t.Fatalf("paused with %d canary nodes and finalizers %v; want 1 and %s", u.Status.CanaryNodes, u.Finalizers, ztv1.FinalizerRollback)
			}
			if d := before.diff(e.snapshot()); len(d) == 0 {
				t.Fatal("the first wave changed nothing: the test would prove nothing")
			}
			e.deleteAndWaitGone("doomed", 3*time.Minute)
			if d := before.diff(e.snapshot()); len(d) > 0 {
				t.Errorf("deleting the upgrade did not restore exactly:\n%s", strings.Join(d, "\n"))
			}
			if !e.eventSaid("doomed", ztv1.ReasonDeleted, "rolling back before the upgrade goes") {
				t.Error("no Event says the deleted upgrade rolls back")
			}
		})
	}
	t.Run("a finished upgrade goes at once and changes nothing", func(t *testing.T) {
		e := newEnv(t)
		e.startOrchestrator()
		e.create(seedUpgrade("done", ztv1.NodeStrategyDrain, seedSteps()...))
		e.waitPhase("done", 3*time.Minute, ztv1.PhaseSucceeded)
		e.eventually("the finalizer of the finished upgrade to go", 30*time.Second, func() (bool, string) {
			u := e.upgrade("done")
			return len(u.Finalizers) == 0, strings.Join(u.Finalizers, ",")
		})
		after := e.snapshot()
		e.deleteAndWaitGone("done", 10*time.Second)
		if d := after.diff(e.snapshot()); len(d) > 0 {
			t.Errorf("deleting a finished upgrade changed the cluster:\n%s", strings.Join(d, "\n"))
		}
	})
}

// eventSaid reports whether an Event of the upgrade has reason and a message
// containing text.
func (e *env) eventSaid(name, reason, text string) bool {
	e.t.Helper()
	var evs corev1.EventList
	if err := e.c.List(context.Background(), &evs); err != nil {
		e.t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if ev.InvolvedObject.Name == name && ev.Reason == reason && strings.Contains(ev.Message, text) {
			return true
		}
	}
	return false
}
