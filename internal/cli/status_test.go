package cli

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func cond(typ, status, reason, msg string, ago time.Duration) metav1.Condition {
	return metav1.Condition{Type: typ, Status: metav1.ConditionStatus(status), Reason: reason, Message: msg, LastTransitionTime: metav1.NewTime(testNow.Add(-ago))}
}

func nodeStatus(name, rev string, step int32, phase ztv1.NodePhase, verified bool) ztv1.NodeStatus {
	n := ztv1.NodeStatus{Name: name, OriginalRevision: fromRev, Revision: rev, Step: step, Phase: phase, Verified: verified}
	if verified {
		n.CapturedBy = rev
	}
	return n
}

// routeUpgrade is the seed flow's upgrade with a route and a traffic gate.
func routeUpgrade(phase ztv1.Phase, step int32, stage string) *ztv1.RevisionUpgrade {
	u := upgradeObj("canary-1-18-1", phase, step, nil)
	u.Spec.Route = &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "bookinfo", Name: "reviews"},
		Stable: ztv1.BackendRef{Namespace: "bookinfo-" + fromRev, Name: "reviews", Port: 9080},
		Canary: ztv1.BackendRef{Namespace: "bookinfo-" + toRev, Name: "reviews", Port: 9080}}
	u.Spec.Steps[0].Traffic = &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}
	u.Spec.Steps[1].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](50)}
	u.Spec.Steps[2].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](100)}
	u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{URL: "http://gateway/reviews", Requests: 200, Concurrency: 8, MinSuccessRate: 99,
		CanaryHeader: &ztv1.HeaderMatch{Name: "x-version", Value: "v2"}}
	u.Status.StepStage = ztv1.Stage(stage)
	u.Status.StepStartedAt = ptr.To(metav1.NewTime(testNow.Add(-42 * time.Second)))
	u.Status.TotalNodes = 4
	return u
}

func TestStatusGolden(t *testing.T) {
	ready := cond(ztv1.ConditionReady, "True", "PreflightPassed", "4 nodes in scope; istiod-1-18-1 and the 1-18-1 ztunnel are ready", 5*time.Minute)
	progressing := cond(ztv1.ConditionProgressing, "True", "Started", "step 0 of 3", 5*time.Minute)
	for _, tc := range []struct {
		name, golden string
		u            func() *ztv1.RevisionUpgrade
	}{
		{"moving the nodes of the second step", "status/moving.txt", func() *ztv1.RevisionUpgrade {
			u := routeUpgrade(ztv1.PhaseProgressing, 1, "MovingNodes")
			u.Status.CanaryNodes, u.Status.TrafficWeight = 1, 0
			u.Status.TrafficStep = ptr.To[int32](0)
			u.Status.Message = "step 1: 1 of 2 nodes on 1-18-1; waiting for ambient-worker2: the 1-18-1 ztunnel to be Ready"
			u.Status.Nodes = []ztv1.NodeStatus{
				nodeStatus("ambient-worker", toRev, 0, ztv1.NodeCanary, true),
				nodeStatus("ambient-worker2", toRev, 1, ztv1.NodeMoving, false),
				nodeStatus("ambient-worker3", fromRev, -1, ztv1.NodeStable, false),
				nodeStatus("ambient-worker4", fromRev, -1, ztv1.NodeStable, false),
			}
			u.Status.Conditions = []metav1.Condition{ready, progressing, cond(ztv1.ConditionVerified, "True", "WaveVerified", "step 0: 1 canary nodes verified, canary workloads ready", 3*time.Minute)}
			return u
		}},
		{"waiting for a promote names the command", "status/awaiting-promote.txt", func() *ztv1.RevisionUpgrade {
			u := routeUpgrade(ztv1.PhasePaused, 0, "Pausing")
			u.Status.CanaryNodes = 1
			u.Status.Message = "step 0 done; waiting for promote"
			u.Status.Nodes = []ztv1.NodeStatus{
				nodeStatus("ambient-worker", toRev, 0, ztv1.NodeCanary, true),
				nodeStatus("ambient-worker2", fromRev, -1, ztv1.NodeStable, false),
				nodeStatus("ambient-worker3", fromRev, -1, ztv1.NodeStable, false),
				nodeStatus("ambient-worker4", fromRev, -1, ztv1.NodeStable, false),
			}
			u.Status.Conditions = []metav1.Condition{ready, progressing,
				cond(ztv1.ConditionPaused, "True", "AwaitingPromote", "step 0 done; run `ztcanary promote canary-1-18-1` (annotation ztcanary.io/promote=0) to go on", 10*time.Second)}
			return u
		}},
		{"a rollback marks the step it stopped at", "status/rolling-back.txt", func() *ztv1.RevisionUpgrade {
			u := routeUpgrade(ztv1.PhaseRollingBack, 1, "RestoringNodes")
			u.Status.CanaryNodes = 1
			u.Status.Message = "rolling back; waiting for ambient-worker: the 1-18-0 ztunnel to be Ready"
			u.Status.Nodes = []ztv1.NodeStatus{
				nodeStatus("ambient-worker", toRev, 0, ztv1.NodeCanary, true),
				nodeStatus("ambient-worker2", fromRev, 1, ztv1.NodeRestored, false),
				nodeStatus("ambient-worker3", fromRev, -1, ztv1.NodeStable, false),
				nodeStatus("ambient-worker4", fromRev, -1, ztv1.NodeStable, false),
			}
			u.Status.Conditions = []metav1.Condition{ready, progressing,
				cond(ztv1.ConditionRolledBack, "False", "GateFailed", "rolling back: step 1: traffic test: 91.0% of 200 requests succeeded, below 99%", 20*time.Second)}
			return u
		}},
		{"a succeeded upgrade", "status/succeeded.txt", func() *ztv1.RevisionUpgrade {
			u := upgradeObj("1-18-0-to-1-18-1", ztv1.PhaseSucceeded, 2, nil)
			u.Spec.NodeStrategy = ztv1.NodeStrategyHandoff
			u.Status.StepStage = "Done"
			u.Status.TotalNodes, u.Status.CanaryNodes = 2, 2
			u.Status.Message = "done: all 2 nodes on 1-18-1"
			u.Status.Nodes = []ztv1.NodeStatus{
				nodeStatus("ambient-worker", toRev, 0, ztv1.NodeCanary, true),
				nodeStatus("ambient-worker2", toRev, 1, ztv1.NodeCanary, false),
			}
			u.Status.Conditions = []metav1.Condition{cond(ztv1.ConditionComplete, "True", "Succeeded", "all 2 nodes run 1-18-1", time.Minute)}
			return u
		}},
		{"a refused upgrade says what to fix", "status/refused.txt", func() *ztv1.RevisionUpgrade {
			u := upgradeObj("1-18-0-to-1-19-0", ztv1.PhasePending, 0, nil)
			u.Spec.To = "1-19-0"
			u.Status.Message = "spec.to: no istiod Deployment istio-system/istiod-1-19-0; install the 1-19-0 control plane first"
			u.Status.Conditions = []metav1.Condition{cond(ztv1.ConditionReady, "False", "IstiodMissing", u.Status.Message, 2*time.Minute)}
			return u
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			renderStatus(&b, tc.u(), testNow)
			golden(t, tc.golden, b.String())
		})
	}
}

func TestStatusCommand(t *testing.T) {
	t.Run("without a name and without upgrades it shows the inventory", func(t *testing.T) {
		env, _ := seedWorld().env(t)
		out, err := run(t, env, "status")
		if err != nil || !strings.Contains(out, "No RevisionUpgrade yet") || !strings.Contains(out, "ztunnel-1-18-1") {
			t.Errorf("status = %v\n%s", err, out)
		}
	})
	t.Run("without a name it shows the upgrade in progress, not a newer finished one", func(t *testing.T) {
		w := seedWorld()
		old := upgradeObj("old", ztv1.PhaseProgressing, 0, nil)
		newer := upgradeObj("newer", ztv1.PhaseRolledBack, 0, nil)
		newer.CreationTimestamp = metav1.NewTime(testNow)
		w.objs = append(w.objs, old, newer)
		env, _ := w.env(t)
		out, err := run(t, env, "status")
		if err != nil || !strings.HasPrefix(out, "RevisionUpgrade old:") {
			t.Errorf("status = %v\n%s", err, out)
		}
	})
	t.Run("a missing upgrade says how to list them", func(t *testing.T) {
		env, _ := seedWorld().env(t)
		_, err := run(t, env, "status", "nope")
		if !errors.Is(err, ErrNotFound) || err.Error() != `revisionupgrade "nope" not found: list them with kubectl get revisionupgrades` {
			t.Errorf("err = %v", err)
		}
	})
}

func TestStatusWatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		end     ztv1.Phase
		timeout string
		wantErr error
	}{
		{"ends with the upgrade's success", ztv1.PhaseSucceeded, "10s", nil},
		{"a rollback is an error naming the reason", ztv1.PhaseRolledBack, "10s", ErrUpgradeFailed},
		{"the timeout ends the watch, not the upgrade", "", "300ms", ErrTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := seedWorld()
			w.objs = append(w.objs, upgradeObj("u", ztv1.PhaseProgressing, 0, nil))
			env, c := w.env(t)
			var wg sync.WaitGroup
			if tc.end != "" {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i, phase := range []ztv1.Phase{ztv1.PhaseProgressing, tc.end} {
						time.Sleep(50 * time.Millisecond)
						u := &ztv1.RevisionUpgrade{}
						if err := c.Get(t.Context(), client.ObjectKey{Name: "u"}, u); err != nil {
							t.Error(err)
							return
						}
						u.Status.Phase, u.Status.CurrentStep = phase, int32(i+1)
						u.Status.Message = "frame " + string(phase)
						if err := c.Status().Update(t.Context(), u); err != nil {
							t.Error(err)
						}
					}
				}()
			}
			out, err := run(t, env, "status", "u", "--watch", "--interval", "10ms", "--timeout", tc.timeout)
			wg.Wait()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v\n%s", err, tc.wantErr, out)
			}
			if tc.end == "" {
				if n := strings.Count(out, "--- "); n != 1 {
					t.Errorf("an unchanged upgrade was drawn %d times, want once:\n%s", n, out)
				}
				return
			}
			if n := strings.Count(out, "--- "); n != 3 {
				t.Errorf("%d frames, want 3 (start, each change):\n%s", n, out)
			}
			if !strings.Contains(out, "frame "+string(tc.end)) {
				t.Errorf("last frame missing:\n%s", out)
			}
		})
	}
}
