package orchestrator_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator"
)

// seedSteps is the seed flow's node waves: one node, half, all.
func seedSteps() []ztv1.Step {
	return []ztv1.Step{nodesStep(intstr.FromInt32(1)), nodesStep(intstr.FromString("50%")), nodesStep(intstr.FromString("100%"))}
}

// assertUpgraded checks the end state of a successful upgrade: every worker labelled
// and served by the to ztunnel only, and the canary workloads on canary nodes.
func (e *env) assertUpgraded(u *ztv1.RevisionUpgrade) {
	e.t.Helper()
	ctx := context.Background()
	zt := e.ztunnelRevisions()
	for _, n := range e.workers() {
		var node corev1.Node
		if err := e.c.Get(ctx, client.ObjectKey{Name: n}, &node); err != nil {
			e.t.Fatal(err)
		}
		if node.Labels[revKey] != toRev || node.Spec.Unschedulable || node.Labels["ztcanary.io/handoff"] != "" {
			e.t.Errorf("node %s: label %q, cordoned %v, handoff label %q; want %s, schedulable, none", n, node.Labels[revKey], node.Spec.Unschedulable, node.Labels["ztcanary.io/handoff"], toRev)
		}
		if got := zt[n]; len(got) != 1 || got[0] != toRev {
			e.t.Errorf("node %s runs ztunnels %v, want only %s", n, got, toRev)
		}
	}
	if u.Status.CanaryNodes != 4 || u.Status.TotalNodes != 4 || len(u.Status.Nodes) != 4 {
		e.t.Errorf("status: canary %d of %d (%d entries), want 4 of 4", u.Status.CanaryNodes, u.Status.TotalNodes, len(u.Status.Nodes))
	}
	if !meta.IsStatusConditionTrue(u.Status.Conditions, ztv1.ConditionComplete) {
		e.t.Errorf("Complete condition not True: %+v", u.Status.Conditions)
	}
	var pods corev1.PodList
	if err := e.c.List(ctx, &pods, client.InNamespace(toApps)); err != nil {
		e.t.Fatal(err)
	}
	running := 0
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			running++
		}
	}
	if running != 4 {
		e.t.Errorf("%d canary pods Running, want 4 (2 per Deployment)", running)
	}
}

func TestFullUpgradeSucceeds(t *testing.T) {
	for _, strategy := range []ztv1.NodeStrategy{ztv1.NodeStrategyDrain, ztv1.NodeStrategyHandoff} {
		t.Run(string(strategy), func(t *testing.T) {
			e := newEnv(t)
			w := e.watchInvariants(strategy)
			e.startOrchestrator()
			e.create(seedUpgrade("seed", strategy, seedSteps()...))
			u := e.waitPhase("seed", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
			if u.Status.Phase != ztv1.PhaseSucceeded {
				t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
			}
			e.assertUpgraded(u)
			w.assert(t, 30*time.Second)
			// Pinning the stable ztunnel DaemonSet (its Handoff affinity is a new
			// template) restarted none of its pods: a node's stable ztunnel only
			// leaves when the node moves.
			if n := w.Started(fromRev); n != 0 {
				t.Errorf("%d %s ztunnel pods were started during the upgrade, want 0 (each is a restart of a stable node's ztunnel)", n, fromRev)
			}
			// The nodes moved in the order of the waves: 1, then 2, then 4.
			perStep := map[int32]int{}
			for _, n := range u.Status.Nodes {
				perStep[n.Step]++
			}
			if perStep[0] != 1 || perStep[1] != 1 || perStep[2] != 2 {
				t.Errorf("nodes per step %v, want 1, 1, 2", perStep)
			}
		})
	}
}

func TestManualPauseWaitsForPromote(t *testing.T) {
	e := newEnv(t)
	e.startOrchestrator()
	steps := seedSteps()
	steps[0].Pause = &ztv1.Pause{}
	e.create(seedUpgrade("paused", ztv1.NodeStrategyDrain, steps...))
	u := e.waitPhase("paused", time.Minute, ztv1.PhasePaused)
	if u.Status.CurrentStep != 0 || u.Status.CanaryNodes != 1 {
		t.Fatalf("paused at step %d with %d canary nodes, want step 0 with 1", u.Status.CurrentStep, u.Status.CanaryNodes)
	}
	cond := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused)
	if cond == nil || cond.Reason != "AwaitingPromote" || !strings.Contains(cond.Message, "ztcanary promote paused") {
		t.Errorf("Paused condition does not tell how to go on: %+v", cond)
	}
	// It stays paused: a few seconds later nothing more has moved.
	time.Sleep(3 * time.Second)
	if u = e.upgrade("paused"); u.Status.Phase != ztv1.PhasePaused || u.Status.CanaryNodes != 1 {
		t.Fatalf("without a promote: phase %s, %d canary nodes", u.Status.Phase, u.Status.CanaryNodes)
	}
	// A promote for another step does not count.
	e.annotate("paused", ztv1.AnnotationPromote, "1")
	time.Sleep(2 * time.Second)
	if u = e.upgrade("paused"); u.Status.Phase != ztv1.PhasePaused {
		t.Fatalf("a promote of step 1 ended the pause of step 0: phase %s", u.Status.Phase)
	}
	e.annotate("paused", ztv1.AnnotationPromote, "0")
	u = e.waitPhase("paused", 2*time.Minute, ztv1.PhaseSucceeded)
	e.assertUpgraded(u)
}

func (e *env) annotate(name, key, value string) {
	e.t.Helper()
	u := e.upgrade(name)
	patch := client.MergeFrom(u.DeepCopy())
	if u.Annotations == nil {
		u.Annotations = map[string]string{}
	}
	u.Annotations[key] = value
	if err := e.c.Patch(context.Background(), u, patch); err != nil {
		e.t.Fatal(err)
	}
}

// reportCapture writes a NodeCapture as the node's agent would.
func (e *env) reportCapture(node, nodeRev string, verdict ztv1.Verdict, state ztv1.CaptureState, capturedBy, msg string) {
	e.t.Helper()
	ctx := context.Background()
	nc := &ztv1.NodeCapture{ObjectMeta: metav1.ObjectMeta{Name: node}}
	if err := e.c.Create(ctx, nc); err != nil && !strings.Contains(err.Error(), "already exists") {
		e.t.Fatal(err)
	}
	if err := e.c.Get(ctx, client.ObjectKey{Name: node}, nc); err != nil {
		e.t.Fatal(err)
	}
	now := metav1.Now()
	nc.Status = ztv1.NodeCaptureStatus{ObservedAt: &now, NodeRevision: nodeRev, Verdict: verdict, Message: msg,
		Pods: []ztv1.PodCapture{{Namespace: toApps, Name: "reviews-x", State: state, CapturedBy: capturedBy}}}
	if err := e.c.Status().Update(ctx, nc); err != nil {
		e.t.Fatal(err)
	}
}

func TestFailedGateRollsBackExactly(t *testing.T) {
	for _, strategy := range []ztv1.NodeStrategy{ztv1.NodeStrategyDrain, ztv1.NodeStrategyHandoff} {
		t.Run(string(strategy), func(t *testing.T) {
			e := newEnv(t)
			before := e.snapshot()
			w := e.watchInvariants(strategy)
			e.startOrchestrator()
			u := seedUpgrade("gated", strategy, seedSteps()...)
			u.Spec.Analysis.AgentVerification = ztv1.AgentVerificationRequired
			e.create(u)
			// Play the first canary node's agent. With Handoff it first sees both
			// ztunnels listening, which lets the node label flip; then it sees the old
			// ztunnel still capturing the pods, which must fail the gate.
			var first string
			e.eventually("the first node to be chosen", time.Minute, func() (bool, string) {
				u := e.upgrade("gated")
				for _, n := range u.Status.Nodes {
					if n.Step == 0 {
						first = n.Name
					}
				}
				return first != "", string(u.Status.StepStage) + ": " + u.Status.Message
			})
			if strategy == ztv1.NodeStrategyHandoff {
				e.reportCapture(first, fromRev, ztv1.VerdictMultipleRevisions, ztv1.CaptureBoth, fromRev+","+toRev, "handoff in progress")
			}
			e.eventually("the first wave to wait for verification", time.Minute, func() (bool, string) {
				u := e.upgrade("gated")
				return u.Status.StepStage == ztv1.StageVerifying, string(u.Status.StepStage) + ": " + u.Status.Message
			})
			e.reportCapture(first, toRev, ztv1.VerdictMismatch, ztv1.CaptureSingle, fromRev, "pod reviews-x captured by the "+fromRev+" ztunnel")
			u = e.waitPhase("gated", 2*time.Minute, ztv1.PhaseRolledBack, ztv1.PhaseFailed, ztv1.PhaseSucceeded)
			if u.Status.Phase != ztv1.PhaseRolledBack {
				t.Fatalf("phase %s, want RolledBack: %s", u.Status.Phase, u.Status.Message)
			}
			cond := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack)
			if cond == nil || cond.Status != metav1.ConditionTrue || !strings.Contains(cond.Message, "captured by the "+fromRev+" ztunnel") {
				t.Errorf("RolledBack condition does not say why: %+v", cond)
			}
			if d := before.diff(e.snapshot()); len(d) > 0 {
				t.Errorf("rollback did not restore exactly:\n%s", strings.Join(d, "\n"))
			}
			zt := e.ztunnelRevisions()
			e.eventually("the stable ztunnel alone on every worker", 30*time.Second, func() (bool, string) {
				zt = e.ztunnelRevisions()
				for _, n := range e.workers() {
					if len(zt[n]) != 1 || zt[n][0] != fromRev {
						return false, fmt.Sprint(zt)
					}
				}
				return true, ""
			})
			w.assert(t, 30*time.Second)
		})
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t)
	e.startOrchestrator()
	before := e.snapshot()
	cases := []struct {
		name   string
		mutate func(*ztv1.RevisionUpgrade)
		reason string
		want   string
	}{
		{"an unknown to revision", func(u *ztv1.RevisionUpgrade) { u.Spec.To = "1-99-0"; u.Spec.Workloads[1].Revision = "1-99-0" },
			"IstiodMissing", "spec.to: no istiod Deployment istio-system/istiod-1-99-0"},
		{"a selector that matches no node", func(u *ztv1.RevisionUpgrade) {
			u.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "nowhere"}}
		}, "InvalidSpec", "spec.nodeSelector: no node in scope"},
		{"an unknown from revision", func(u *ztv1.RevisionUpgrade) { u.Spec.From = "1-17-0" },
			"InvalidSpec", "no node is labelled istio.io/rev=1-17-0"},
		{"node percentages that decrease against counts", func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps = []ztv1.Step{nodesStep(intstr.FromString("75%")), nodesStep(intstr.FromInt32(2)), nodesStep(intstr.FromString("100%"))}
		}, "InvalidSpec", "spec.steps[1].nodes: 2 is 2 of 4 nodes, fewer than the 3 of the step before"},
		{"steps that never reach every node", func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps = []ztv1.Step{nodesStep(intstr.FromInt32(1))}
		}, "InvalidSpec", "the last step moves 1 of 4 nodes"},
		{"a workload pinned to a third revision", func(u *ztv1.RevisionUpgrade) { u.Spec.Workloads[1].Revision = "1-17-0" },
			"InvalidSpec", `spec.workloads[1].revision: "1-17-0" is neither spec.from`},
		{"a missing workload namespace", func(u *ztv1.RevisionUpgrade) {
			u.Spec.Workloads = append(u.Spec.Workloads, ztv1.WorkloadPin{Namespace: "nope", Revision: toRev})
		}, "WorkloadsMissing", "spec.workloads[2].namespace: namespace nope does not exist"},
		{"traffic without a route", func(u *ztv1.RevisionUpgrade) {
			w := int32(100)
			u.Spec.Steps[2].Traffic = &ztv1.StepTraffic{Weight: &w}
		}, "InvalidSpec", "spec.steps[2].traffic: set spec.route"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "bad-" + strconv.Itoa(i)
			u := seedUpgrade(name, ztv1.NodeStrategyDrain, seedSteps()...)
			tc.mutate(u)
			e.create(u)
			var cond *metav1.Condition
			e.eventually("the Ready condition to refuse", 30*time.Second, func() (bool, string) {
				got := e.upgrade(name)
				cond = meta.FindStatusCondition(got.Status.Conditions, ztv1.ConditionReady)
				return cond != nil && cond.Status == metav1.ConditionFalse, fmt.Sprintf("%+v", got.Status)
			})
			if cond.Reason != tc.reason || !strings.Contains(cond.Message, tc.want) {
				t.Errorf("Ready = %s: %q; want reason %s saying %q", cond.Reason, cond.Message, tc.reason, tc.want)
			}
			got := e.upgrade(name)
			if got.Status.Phase != ztv1.PhasePending || len(got.Status.Nodes) != 0 {
				t.Errorf("phase %s with %d nodes recorded, want Pending and none", got.Status.Phase, len(got.Status.Nodes))
			}
			if err := e.c.Delete(context.Background(), got); err != nil {
				t.Fatal(err)
			}
		})
	}
	if d := before.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("refused upgrades changed the cluster:\n%s", strings.Join(d, "\n"))
	}
	// istiod not trusting the new ztunnel's ServiceAccount is refused too.
	var istiodTo appsv1.Deployment
	if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: istioNS, Name: "istiod-" + toRev}, &istiodTo); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(istiodTo.DeepCopy())
	// What the istiod chart sets when trustedZtunnelName is left out.
	env := istiodTo.Spec.Template.Spec.Containers[0].Env
	i := slices.IndexFunc(env, func(e corev1.EnvVar) bool { return e.Name == "CA_TRUSTED_NODE_ACCOUNTS" })
	if i < 0 {
		t.Fatalf("istiod %s sets no CA_TRUSTED_NODE_ACCOUNTS: %v", istiodTo.Name, env)
	}
	env[i].Value = "istio-system/ztunnel"
	if err := e.c.Patch(context.Background(), &istiodTo, patch); err != nil {
		t.Fatal(err)
	}
	e.create(seedUpgrade("untrusted", ztv1.NodeStrategyDrain, seedSteps()...))
	e.eventually("the untrusted ServiceAccount to be refused", 30*time.Second, func() (bool, string) {
		c := meta.FindStatusCondition(e.upgrade("untrusted").Status.Conditions, ztv1.ConditionReady)
		return c != nil && c.Reason == "ZtunnelNotTrusted" && strings.Contains(c.Message, "does not trust ServiceAccount istio-system/ztunnel-"+toRev), fmt.Sprintf("%+v", c)
	})
	after := e.snapshot()
	delete(before.templates, "Deployment/istio-system/istiod-"+toRev)
	if d := before.diff(after); len(d) > 0 {
		t.Errorf("refused upgrade changed the cluster:\n%s", strings.Join(d, "\n"))
	}
}

func TestKilledOrchestratorResumesInEveryStage(t *testing.T) {
	for _, strategy := range []ztv1.NodeStrategy{ztv1.NodeStrategyDrain, ztv1.NodeStrategyHandoff} {
		t.Run(string(strategy), func(t *testing.T) {
			e := newEnv(t)
			w := e.watchInvariants(strategy)
			steps := seedSteps()
			steps[1].Pause = &ztv1.Pause{Duration: &metav1.Duration{Duration: 2 * time.Second}}
			e.create(seedUpgrade("crashy", strategy, steps...))
			// Kill the orchestrator (SIGKILL) as soon as the upgrade enters each
			// stage of interest, then start a new one.
			kills := 0
			for _, stage := range []ztv1.Stage{ztv1.StagePinning, ztv1.StageMovingNodes, ztv1.StageVerifying, ztv1.StagePausing} {
				p := e.startOrchestrator()
				e.eventually("stage "+string(stage), time.Minute, func() (bool, string) {
					u := e.upgrade("crashy")
					return u.Status.StepStage == stage || u.Status.Phase == ztv1.PhaseSucceeded, string(u.Status.StepStage)
				})
				p.kill()
				kills++
			}
			e.startOrchestrator()
			u := e.waitPhase("crashy", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
			if u.Status.Phase != ztv1.PhaseSucceeded {
				t.Fatalf("after %d kills: phase %s: %s", kills, u.Status.Phase, u.Status.Message)
			}
			e.assertUpgraded(u)
			w.assert(t, 30*time.Second)
		})
	}
}

func TestLeaderElectionHandsOverWhenTheLeaderIsKilled(t *testing.T) {
	e := newEnv(t)
	election := []string{"--leader-elect=true", "--leader-election-namespace=default", "--lease-duration=4s"}
	leader := e.startOrchestrator(election...)
	var lease string
	e.eventually("the first replica to take the Lease", 30*time.Second, func() (bool, string) {
		var l coordinationv1.Lease
		if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: orchestrator.LeaderElectionID}, &l); err != nil {
			return false, err.Error()
		}
		lease = ptr.Deref(l.Spec.HolderIdentity, "")
		return lease != "", "no holder"
	})
	standby := e.startOrchestrator(election...)
	steps := seedSteps()
	steps[0].Pause = &ztv1.Pause{}
	e.create(seedUpgrade("ha", ztv1.NodeStrategyDrain, steps...))
	e.waitPhase("ha", time.Minute, ztv1.PhasePaused)
	if strings.Contains(standby.output(), "node moved") {
		t.Fatal("the standby replica acted while the leader held the Lease")
	}
	leader.kill()
	killed := time.Now()
	var handedOver time.Duration
	e.eventually("the standby to take the Lease", 30*time.Second, func() (bool, string) {
		var l coordinationv1.Lease
		if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: orchestrator.LeaderElectionID}, &l); err != nil {
			return false, err.Error()
		}
		holder := ptr.Deref(l.Spec.HolderIdentity, "")
		handedOver = time.Since(killed)
		return holder != "" && holder != lease, "holder " + holder
	})
	// The Lease (4 s) must expire before the standby may take it; it retries every
	// lease/5. Far beyond that is a hand-over that does not work as configured.
	if handedOver > 3*4*time.Second {
		t.Errorf("the standby took the Lease %s after the leader died, lease 4s", handedOver)
	}
	e.annotate("ha", ztv1.AnnotationPromote, "0")
	u := e.waitPhase("ha", 2*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack)
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	e.assertUpgraded(u)
	if !strings.Contains(standby.output(), "node moved") {
		t.Error("the standby never took over")
	}
	// No step ran twice: across both replicas' logs each node moved exactly once.
	moved := map[string]int{}
	for _, out := range []string{leader.output(), standby.output()} {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, `"msg":"node moved"`) {
				if i := strings.Index(line, `"node":"`); i >= 0 {
					rest := line[i+len(`"node":"`):]
					moved[rest[:strings.IndexByte(rest, '"')]]++
				}
			}
		}
	}
	for _, n := range e.workers() {
		if moved[n] != 1 {
			t.Errorf("node %s moved %d times across the two replicas, want once", n, moved[n])
		}
	}
	t.Logf("the standby took the Lease %s after the leader was killed (lease 4s) and finished the upgrade %s after", handedOver.Round(100*time.Millisecond), time.Since(killed).Round(100*time.Millisecond))
}
