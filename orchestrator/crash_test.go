package orchestrator_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// crashRuns is how many upgrades TestCrashCampaign runs: a few in `make test`, 30 in
// `make reliability` (ZTCANARY_CRASH_RUNS=30).
func crashRuns(t *testing.T) int {
	n := 4
	if v := os.Getenv("ZTCANARY_CRASH_RUNS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("ZTCANARY_CRASH_RUNS=%q is not a positive number", v)
		}
	}
	return n
}

// TestCrashCampaign runs upgrades back and forth on one cluster, each with a random
// strategy, a third of them aborted at a random moment, and kills the orchestrator
// (SIGKILL) at a random moment of each before starting a new one. Every upgrade must
// end Succeeded with every worker on its target, or, when aborted, RolledBack with the
// cluster exactly as before it; the invariant watcher checks every pod and node event
// of the whole campaign. The seed is logged: ZTCANARY_CRASH_SEED replays a campaign.
func TestCrashCampaign(t *testing.T) {
	runs := crashRuns(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("ZTCANARY_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("ZTCANARY_CRASH_SEED=%q: %v", v, err)
		}
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("crash campaign: %d runs, ZTCANARY_CRASH_SEED=%d", runs, seed)

	e := newEnv(t)
	// Both strategies never leave a worker with ambient pods and no Ready ztunnel
	// (Drain empties the node first), which is what the Handoff watcher checks.
	w := e.watchInvariants(ztv1.NodeStrategyHandoff)
	p := e.startOrchestrator()
	on := fromRev
	var succeeded, rolledBack int
	var killedIn []string
	for i := range runs {
		strategy := ztv1.NodeStrategyDrain
		if rng.IntN(2) == 1 {
			strategy = ztv1.NodeStrategyHandoff
		}
		abort := rng.IntN(3) == 0
		// A run takes about 4 s (two 1 s pauses): kill and abort anywhere in it.
		killAfter := time.Duration(rng.Int64N(int64(4 * time.Second)))
		abortAfter := time.Duration(rng.Int64N(int64(4 * time.Second)))
		target := toRev
		if on == toRev {
			target = fromRev
		}
		name := fmt.Sprintf("crash-%02d", i)
		steps := seedSteps()
		steps[0].Pause = &ztv1.Pause{Duration: &metav1.Duration{Duration: time.Second}}
		steps[1].Pause = &ztv1.Pause{Duration: &metav1.Duration{Duration: time.Second}}
		u := seedUpgrade(name, strategy, steps...)
		u.Spec.From, u.Spec.To = on, target
		before := e.snapshot()

		created := time.Now()
		e.create(u)
		// An abort must roll back when it lands before the last step began; after
		// that the upgrade may already be done.
		mustRollBack := false
		abortNow := func() {
			mustRollBack = e.upgrade(name).Status.CurrentStep < int32(len(steps)-1)
			e.annotate(name, ztv1.AnnotationAbort, "true")
		}
		if abort && abortAfter < killAfter {
			time.Sleep(abortAfter)
			abortNow()
		}
		time.Sleep(killAfter - time.Since(created))
		stage := e.upgrade(name).Status
		p.kill()
		killedIn = append(killedIn, fmt.Sprintf("%s/%s", stage.Phase, stage.StepStage))
		if abort && abortAfter >= killAfter {
			time.Sleep(abortAfter - killAfter)
			abortNow()
		}
		p = e.startOrchestrator()
		got := e.waitPhase(name, 3*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
		desc := fmt.Sprintf("run %d (%s → %s, %s, killed after %s in %s", i, on, target, strategy, killAfter.Round(time.Millisecond), killedIn[i])
		if abort {
			desc += fmt.Sprintf(", aborted after %s", abortAfter.Round(time.Millisecond))
		}
		desc += ")"
		switch got.Status.Phase {
		case ztv1.PhaseSucceeded:
			if mustRollBack {
				t.Fatalf("%s: aborted before its last step, yet succeeded: %s", desc, got.Status.Message)
			}
			e.assertOn(target)
			on = target
			succeeded++
		case ztv1.PhaseRolledBack:
			if !abort {
				t.Fatalf("%s: rolled back without an abort: %s", desc, got.Status.Message)
			}
			e.eventually(desc+": exact restore", time.Minute, func() (bool, string) {
				d := before.diff(e.snapshot())
				return len(d) == 0, strings.Join(d, "; ")
			})
			e.assertOn(on)
			rolledBack++
		default:
			t.Fatalf("%s: phase %s: %s", desc, got.Status.Phase, got.Status.Message)
		}
		t.Logf("%s: %s", desc, got.Status.Phase)
	}
	w.assert(t, 30*time.Second)
	t.Logf("crash campaign: %d runs, %d succeeded, %d rolled back, killed in %s", runs, succeeded, rolledBack, strings.Join(killedIn, ", "))
}
