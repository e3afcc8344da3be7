package orchestrator_test

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// waitingFor reports whether upgrade name waits for upgrade other, as its Ready
// condition says.
func (e *env) waitingFor(name, other string) (bool, string) {
	u := e.upgrade(name)
	c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionReady)
	if c == nil {
		return false, "no Ready condition; phase " + string(u.Status.Phase)
	}
	ok := c.Reason == ztv1.ReasonWaitingForUpgrade && c.Status == "False" && strings.Contains(c.Message, "upgrade "+other+" ") &&
		u.Status.Phase == ztv1.PhasePending && len(u.Status.Nodes) == 0
	return ok, c.Reason + ": " + c.Message
}

// TestASecondUpgradeWaitsForTheFirst: an upgrade created with kubectl while another
// one over the same nodes is paused waits, naming it, moves nothing, and starts by
// itself once the first ends; two created in the same breath never run at once.
func TestASecondUpgradeWaitsForTheFirst(t *testing.T) {
	t.Run("created while the first is paused", func(t *testing.T) {
		e := newEnv(t)
		e.startOrchestrator()
		steps := seedSteps()
		steps[0].Pause = &ztv1.Pause{}
		e.create(seedUpgrade("first", ztv1.NodeStrategyDrain, steps...))
		e.waitPhase("first", 2*time.Minute, ztv1.PhasePaused)
		e.create(seedUpgrade("second", ztv1.NodeStrategyDrain, seedSteps()...))
		e.eventually("the second upgrade to wait for the first", time.Minute, func() (bool, string) { return e.waitingFor("second", "first") })
		time.Sleep(3 * time.Second)
		if ok, why := e.waitingFor("second", "first"); !ok {
			t.Fatalf("the second upgrade stopped waiting while the first is paused: %s", why)
		}
		if u := e.upgrade("first"); u.Status.CanaryNodes != 1 {
			t.Fatalf("the first upgrade has %d canary nodes while paused, want 1", u.Status.CanaryNodes)
		}
		e.annotate("first", ztv1.AnnotationAbort, "true")
		e.waitPhase("first", 3*time.Minute, ztv1.PhaseRolledBack)
		u := e.waitPhase("second", 3*time.Minute, ztv1.PhaseSucceeded)
		e.assertUpgraded(u)
	})
	t.Run("created in the same second", func(t *testing.T) {
		e := newEnv(t)
		e.startOrchestrator()
		steps := seedSteps()
		steps[0].Pause = &ztv1.Pause{}
		e.create(seedUpgrade("left", ztv1.NodeStrategyDrain, steps...), seedUpgrade("right", ztv1.NodeStrategyDrain, steps...))
		var runner, waiter string
		deadline := time.Now().Add(90 * time.Second)
		for time.Now().Before(deadline) {
			l, r := e.upgrade("left"), e.upgrade("right")
			startedL := l.Status.Phase != "" && l.Status.Phase != ztv1.PhasePending
			startedR := r.Status.Phase != "" && r.Status.Phase != ztv1.PhasePending
			if startedL && startedR {
				t.Fatalf("both upgrades run at once: left %s, right %s", l.Status.Phase, r.Status.Phase)
			}
			if startedL && l.Status.Phase == ztv1.PhasePaused {
				runner, waiter = "left", "right"
			} else if startedR && r.Status.Phase == ztv1.PhasePaused {
				runner, waiter = "right", "left"
			}
			if runner != "" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if runner == "" {
			t.Fatal("neither upgrade reached its first pause")
		}
		if ok, why := e.waitingFor(waiter, runner); !ok {
			t.Fatalf("%s does not wait for %s: %s", waiter, runner, why)
		}
	})
}
