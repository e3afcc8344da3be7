package orchestrator_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/sim/faultproxy"
)

// apiFaults is the weather of TestUpgradesEndCorrectlyThroughAPIFaults: about one request in
// seven fails (409 on writes, 429, 500 or a dropped connection), one in five waits up to
// 200 ms, and every watch is cut within 10 s.
var apiFaults = faultproxy.Config{
	ErrorRate:     0.15,
	DelayRate:     0.20,
	MaxDelay:      200 * time.Millisecond,
	WatchCutAfter: 10 * time.Second,
}

// TestUpgradesEndCorrectlyThroughAPIFaults runs the real orchestrator behind a proxy that
// injects apiFaults: a clean upgrade first (the baseline request count), then an upgrade
// back and an aborted one under faults. Both end where they must, the invariant watcher
// (which talks to the apiserver directly) sees no violation, rollback restores exactly,
// and the request count shows retries backing off rather than looping.
func TestUpgradesEndCorrectlyThroughAPIFaults(t *testing.T) {
	e := newEnv(t)
	proxy, err := faultproxy.Start(e.cluster.Config, faultproxy.Config{}, 7)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	e.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := proxy.WriteKubeconfig(e.kubeconfig, e.cluster.Config); err != nil {
		t.Fatal(err)
	}
	w := e.watchInvariants(ztv1.NodeStrategyDrain)
	e.startOrchestrator()
	// The baseline counts the upgrade's requests, not the start-up lists and watches:
	// wait until the orchestrator's caches are filled (no request for a second).
	e.eventually("the orchestrator to go quiet after start-up", time.Minute, func() (bool, string) {
		n := proxy.Stats().Requests
		time.Sleep(time.Second)
		return n > 0 && proxy.Stats().Requests == n, fmt.Sprintf("%d requests", n)
	})
	proxy.ResetStats()

	// Baseline, no fault: from → to.
	e.create(seedUpgrade("clean", ztv1.NodeStrategyDrain, seedSteps()...))
	u := e.waitPhase("clean", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("clean upgrade: phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	clean := proxy.Stats()

	// Under faults: back from to → from, the same amount of work.
	proxy.ResetStats()
	if err := proxy.SetConfig(apiFaults); err != nil {
		t.Fatal(err)
	}
	back := seedUpgrade("back", ztv1.NodeStrategyDrain, seedSteps()...)
	back.Spec.From, back.Spec.To = toRev, fromRev
	start := time.Now()
	e.create(back)
	u = e.waitPhase("back", 4*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("upgrade under faults: phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	e.assertOn(fromRev)
	faulty := proxy.Stats()
	took := time.Since(start)

	// Under faults, an upgrade aborted at its first pause rolls back exactly.
	before := e.snapshot()
	steps := seedSteps()
	steps[0].Pause = &ztv1.Pause{}
	e.create(seedUpgrade("aborted", ztv1.NodeStrategyDrain, steps...))
	e.waitPhase("aborted", 4*time.Minute, ztv1.PhasePaused)
	e.annotate("aborted", ztv1.AnnotationAbort, "true")
	u = e.waitPhase("aborted", 4*time.Minute, ztv1.PhaseRolledBack, ztv1.PhaseFailed, ztv1.PhaseSucceeded)
	if u.Status.Phase != ztv1.PhaseRolledBack {
		t.Fatalf("aborted upgrade under faults: phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	e.eventually("rollback to restore exactly", time.Minute, func() (bool, string) {
		d := before.diff(e.snapshot())
		return len(d) == 0, strings.Join(d, "; ")
	})
	e.assertOn(fromRev)
	w.assert(t, 30*time.Second)
	all := proxy.Stats()

	injected := 0
	for _, f := range []faultproxy.Fault{faultproxy.Conflict, faultproxy.TooMany, faultproxy.Internal, faultproxy.Drop} {
		if all.Faults[f] == 0 {
			t.Errorf("no %s was injected under faults: the test proved nothing about it", f)
		}
		injected += faulty.Faults[f]
	}
	t.Logf("clean upgrade: %d requests, peak %d/s; top: %s", clean.Requests, clean.PeakPerSecond, strings.Join(clean.Top(6), " "))
	t.Logf("upgrade under faults (%s): %d requests (%.2fx the clean run), %d errors injected %v, peak %d/s; top: %s",
		took.Round(time.Second), faulty.Requests, float64(faulty.Requests)/float64(clean.Requests), injected, faulty.Faults, faulty.PeakPerSecond, strings.Join(faulty.Top(6), " "))
	t.Logf("upgrade + abort under faults: %d requests, peak %d/s", all.Requests, all.PeakPerSecond)
	// A retry loop without backoff makes hundreds of requests a second and many times
	// the work of a clean run; backed-off retries add a few per fault.
	if limit := 3*clean.Requests + 10*injected; faulty.Requests > limit {
		t.Errorf("%d requests under faults, more than %d (3x the clean run's %d plus 10 per injected fault): retries do not back off", faulty.Requests, limit, clean.Requests)
	}
	if faulty.PeakPerSecond > 150 {
		t.Errorf("peak %d requests in one second under faults: a tight loop", faulty.PeakPerSecond)
	}
}

// assertOn checks that every worker is labelled rev and runs only rev's ztunnel.
func (e *env) assertOn(rev string) {
	e.t.Helper()
	e.eventually("every worker on "+rev, time.Minute, func() (bool, string) {
		zt := e.ztunnelRevisions()
		for _, n := range e.workers() {
			var node corev1.Node
			if err := e.c.Get(e.t.Context(), client.ObjectKey{Name: n}, &node); err != nil {
				return false, err.Error()
			}
			if node.Labels[revKey] != rev || node.Spec.Unschedulable || len(zt[n]) != 1 || zt[n][0] != rev {
				return false, fmt.Sprintf("node %s: label %q, cordoned %v, ztunnels %v", n, node.Labels[revKey], node.Spec.Unschedulable, zt[n])
			}
		}
		return true, ""
	})
}
