package orchestrator_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/sim/simdataplane"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// These tests run the real orchestrator against real node agents: the simulated data
// plane (package simdataplane) gives every worker its pods' network namespaces and a
// stand-in ztunnel process per ztunnel pod, and runs one ztcanary-agent per worker.
// With agentVerification Required the orchestrator moves on only on the agents'
// NodeCaptures, which come from the kernel's view of who listens in each pod.

const agentNodes = 4 // the control plane and three workers

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
)

// agentBinary builds ztcanary-agent once per test run, beside the orchestrator
// binary (TestMain removes both).
func agentBinary(t *testing.T) string {
	t.Helper()
	agentOnce.Do(func() {
		agentBin, agentErr = simdataplane.BuildAgent(context.Background(), filepath.Dir(orchestratorBin))
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentBin
}

// requireDataPlane skips without root, cgroup v2 or BTF, except under CI=true where
// it fails. Under -short it skips.
func requireDataPlane(t *testing.T) {
	t.Helper()
	simtest.SkipShort(t, "needs root, cgroup v2 and BTF")
	if err := simdataplane.Check(true); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skip(err)
	}
}

// startDataPlane runs the simulated data plane and the agents on every worker, and
// waits until each agent reports its pods captured by the stable revision.
func (e *env) startDataPlane(t *testing.T, cfg simdataplane.Config) *simdataplane.DataPlane {
	t.Helper()
	cfg.Kubeconfig, cfg.AgentBinary, cfg.Log = e.cluster.Kubeconfig, agentBinary(t), zaptest.NewLogger(t)
	dp, err := simdataplane.Start(context.Background(), cfg, e.workers())
	if err != nil {
		t.Fatalf("start the simulated data plane: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("close the data plane: %v", err)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range e.workers() {
				if log, err := dp.AgentLog(n); err == nil {
					t.Logf("agent of %s:\n%s", n, tail(log, 20))
				}
			}
		}
	})
	for _, n := range e.workers() {
		e.eventually("the agent of "+n+" to report "+fromRev, time.Minute, func() (bool, string) { return e.capturedBy(n, fromRev) })
	}
	return dp
}

// ambientOn lists the live pods of the seed's ambient namespaces the API places on
// node.
func (e *env) ambientOn(node string) []string {
	e.t.Helper()
	var out []string
	for _, ns := range []string{fromApps, toApps} {
		var pods corev1.PodList
		if err := e.c.List(context.Background(), &pods, client.InNamespace(ns)); err != nil {
			e.t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Spec.NodeName == node && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				out = append(out, p.Namespace+"/"+p.Name)
			}
		}
	}
	sort.Strings(out)
	return out
}

func (e *env) nodeCapture(node string) *ztv1.NodeCapture {
	e.t.Helper()
	var nc ztv1.NodeCapture
	if err := e.c.Get(context.Background(), client.ObjectKey{Name: node}, &nc); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil
		}
		e.t.Fatal(err)
	}
	return &nc
}

// capturedBy checks invariant 2 on one node from its agent's report: the node is
// labelled rev, and every ambient pod the API places there, and only those, is
// captured by the rev ztunnel alone (a node without ambient pods has nothing to show).
func (e *env) capturedBy(node, rev string) (bool, string) {
	nc := e.nodeCapture(node)
	if nc == nil || nc.Status.ObservedAt == nil {
		return false, "no NodeCapture for " + node
	}
	if nc.Status.NodeRevision != rev || nc.Status.Verdict != ztv1.VerdictMatch {
		return false, fmt.Sprintf("%s: node revision %s, verdict %s: %s", node, nc.Status.NodeRevision, nc.Status.Verdict, nc.Status.Message)
	}
	var got []string
	for _, p := range nc.Status.Pods {
		got = append(got, p.Namespace+"/"+p.Name)
		if p.State != ztv1.CaptureSingle || p.CapturedBy != rev {
			return false, fmt.Sprintf("%s: pod %s/%s %s(%s)", node, p.Namespace, p.Name, p.State, p.CapturedBy)
		}
	}
	sort.Strings(got)
	if want := e.ambientOn(node); !slices.Equal(got, want) {
		return false, fmt.Sprintf("%s: the agent reports pods %v, the API places %v there", node, got, want)
	}
	return true, ""
}

// captureLog records, per node, every distinct capture its NodeCapture showed, from a
// watch, so short states (a handoff's Both) are not missed.
type captureLog struct {
	mu   sync.Mutex
	seen map[string][]string
	// pods: node → pod (namespace/name) → the states the node's reports gave it.
	pods map[string]map[string][]string
}

// summary sums up a NodeCapture's pods: "Single(1-18-0)", "Both(1-18-0,1-18-1)",
// or several of them joined by "+".
func summary(nc *ztv1.NodeCapture) string {
	set := map[string]bool{}
	for _, p := range nc.Status.Pods {
		s := string(p.State)
		if p.CapturedBy != "" {
			s += "(" + p.CapturedBy + ")"
		}
		set[s] = true
	}
	var out []string
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return strings.Join(out, "+")
}

func (l *captureLog) add(nc *ztv1.NodeCapture) {
	if nc.Status.ObservedAt == nil {
		return
	}
	s := summary(nc)
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq := l.seen[nc.Name]; len(seq) == 0 || seq[len(seq)-1] != s {
		l.seen[nc.Name] = append(seq, s)
	}
	if l.pods[nc.Name] == nil {
		l.pods[nc.Name] = map[string][]string{}
	}
	for _, p := range nc.Status.Pods {
		ps := string(p.State) + "(" + p.CapturedBy + ")"
		key := p.Namespace + "/" + p.Name
		if seq := l.pods[nc.Name][key]; len(seq) == 0 || seq[len(seq)-1] != ps {
			l.pods[nc.Name][key] = append(seq, ps)
		}
	}
}

// podsOf returns, per pod of the node, the capture states its reports gave it.
func (l *captureLog) podsOf(node string) map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for k, v := range l.pods[node] {
		out[k] = slices.Clone(v)
	}
	return out
}

func (l *captureLog) of(node string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen[node])
}

// recordCaptures watches NodeCaptures until the test ends.
func (e *env) recordCaptures() *captureLog {
	e.t.Helper()
	wc, err := client.NewWithWatch(e.cluster.Config, client.Options{Scheme: e.c.Scheme()})
	if err != nil {
		e.t.Fatal(err)
	}
	l := &captureLog{seen: map[string][]string{}, pods: map[string]map[string][]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var list ztv1.NodeCaptureList
			if err := wc.List(ctx, &list); err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for i := range list.Items {
				l.add(&list.Items[i])
			}
			w, err := wc.Watch(ctx, &ztv1.NodeCaptureList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
			if err != nil {
				continue
			}
			for ev := range w.ResultChan() {
				if nc, ok := ev.Object.(*ztv1.NodeCapture); ok {
					l.add(nc)
				}
			}
			w.Stop()
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return l
}

// TestAgentsVerifyEachWave: a Handoff upgrade over three workers with agent
// verification Required. After each wave (held by a pause), every canary node's agent
// shows its pods captured by the to ztunnel alone and every stable node's by the from
// ztunnel alone (invariant 2, from the agents' reports), connections made in a
// canary pod are accepted by the to ztunnel, and during each node's handoff its
// agent saw both ztunnels listening and never a pod without one.
func TestAgentsVerifyEachWave(t *testing.T) {
	requireDataPlane(t)
	e := newEnvNodes(t, agentNodes)
	dp := e.startDataPlane(t, simdataplane.Config{})
	captures := e.recordCaptures()
	w := e.watchInvariants(ztv1.NodeStrategyHandoff)
	e.startOrchestrator()
	steps := []ztv1.Step{nodesStep(intstr.FromInt32(1)), nodesStep(intstr.FromInt32(2)), nodesStep(intstr.FromInt32(3))}
	steps[0].Pause, steps[1].Pause = &ztv1.Pause{}, &ztv1.Pause{}
	u := seedUpgrade("agents", ztv1.NodeStrategyHandoff, steps...)
	u.Spec.Analysis.AgentVerification = ztv1.AgentVerificationRequired
	e.create(u)

	ctx := context.Background()
	for i := range steps {
		want := ztv1.PhasePaused
		if i == len(steps)-1 {
			want = ztv1.PhaseSucceeded
		}
		e.eventually(fmt.Sprintf("wave %d to end", i), 3*time.Minute, func() (bool, string) {
			u = e.upgrade("agents")
			switch u.Status.Phase {
			case ztv1.PhaseRolledBack, ztv1.PhaseFailed, ztv1.PhaseSucceeded:
				return true, ""
			}
			return u.Status.Phase == want && int(u.Status.CurrentStep) == i,
				fmt.Sprintf("phase %s, stage %s, step %d: %s", u.Status.Phase, u.Status.StepStage, u.Status.CurrentStep, u.Status.Message)
		})
		if u.Status.Phase != want || int(u.Status.CurrentStep) != i {
			t.Fatalf("after wave %d: phase %s at step %d, want %s: %s", i, u.Status.Phase, u.Status.CurrentStep, want, u.Status.Message)
		}
		if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionVerified); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("after wave %d: Verified condition %+v", i, c)
		}
		canary := map[string]bool{}
		proved := 0
		for _, n := range u.Status.Nodes {
			if n.Phase != ztv1.NodeCanary {
				continue
			}
			canary[n.Name] = true
			// Pinning moves workloads: a node may hold no ambient pod, and then there is
			// no capture to show.
			if !n.Verified || (n.CapturedBy != toRev && n.CapturedBy != "") {
				t.Errorf("after wave %d: status of node %s: verified %v, capturedBy %q; want true, %s", i, n.Name, n.Verified, n.CapturedBy, toRev)
			}
			if n.CapturedBy == toRev {
				proved++
			}
		}
		if len(canary) != i+1 {
			t.Fatalf("after wave %d: %d canary nodes, want %d", i, len(canary), i+1)
		}
		if proved == 0 {
			t.Errorf("after wave %d: no canary node with ambient pods proved captured by %s", i, toRev)
		}
		for _, n := range e.workers() {
			rev := fromRev
			if canary[n] {
				rev = toRev
			}
			e.eventually(fmt.Sprintf("wave %d: %s captured by %s", i, n, rev), 20*time.Second, func() (bool, string) { return e.capturedBy(n, rev) })
		}
		// Traffic in a pod of each canary node reaches the to ztunnel, as its agent counts.
		for n := range canary {
			pods := e.ambientOn(n)
			if len(pods) == 0 {
				continue
			}
			pod := pods[0]
			ns, name, _ := strings.Cut(pod, "/")
			if err := dp.Connect(ctx, ns, name, 15008, 3); err != nil {
				t.Fatal(err)
			}
			e.eventually("connections in "+pod+" counted for "+toRev, 20*time.Second, func() (bool, string) {
				return acceptedBy(e.nodeCapture(n), pod, 15008, toRev)
			})
		}
		if i < len(steps)-1 {
			e.annotate("agents", ztv1.AnnotationPromote, fmt.Sprint(i))
		}
	}
	handoffs := 0
	from, both, to := "Single("+fromRev+")", "Both("+fromRev+","+toRev+")", "Single("+toRev+")"
	for _, n := range e.workers() {
		seq := captures.of(n)
		end := seq[len(seq)-1]
		if (seq[0] != from && seq[0] != "") || (end != to && end != "") {
			t.Errorf("node %s: the agent showed %v; want %s first, %s last (or no pods)", n, seq, from, to)
		}
		for _, s := range seq {
			if strings.Contains(s, "None") {
				t.Errorf("node %s: a pod without a listening ztunnel during the upgrade: %v", n, seq)
			}
		}
		// A pod the from ztunnel captured reached the to ztunnel alone only through
		// both listening: the orchestrator relabels a node only once its agent shows
		// the to ztunnel in every ambient pod. A pod that arrived after the to ztunnel
		// started is the to ztunnel's alone from the start (istio-cni hands new pods to
		// the newest ztunnel); the agent's reports may never show one that left
		// within a report's interval.
		for pod, states := range captures.podsOf(n) {
			last := ""
			for _, s := range states {
				switch {
				case s == to && last == from:
					t.Errorf("node %s: pod %s went from %s to %s without both ztunnels listening: %v", n, pod, from, to, states)
				case s == to && last == both:
					handoffs++
				}
				if !strings.HasPrefix(s, "Unknown") {
					last = s
				}
			}
		}
		t.Logf("node %s: %s", n, strings.Join(seq, " → "))
	}
	if handoffs == 0 {
		t.Error("no node showed a handoff with pods")
	}
	w.assert(t, time.Minute)
	if err := dp.Err(); err != nil {
		t.Errorf("data plane: %v", err)
	}
}

// acceptedBy reports whether rev's listener on port in pod accepted connections.
func acceptedBy(nc *ztv1.NodeCapture, pod string, port int32, rev string) (bool, string) {
	if nc == nil {
		return false, "no NodeCapture"
	}
	for _, p := range nc.Status.Pods {
		if p.Namespace+"/"+p.Name != pod {
			continue
		}
		for _, pc := range p.Ports {
			for _, l := range pc.Listeners {
				if pc.Port == port && l.Revision == rev && l.Listening && l.Accepted >= 3 {
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("%+v", p.Ports)
	}
	return false, pod + " not reported"
}

// TestAgentsFailTheGate: when the to ztunnel never listens, the agents' reports stop
// the upgrade and it rolls back exactly. With Handoff the node label never flips (the
// agent never sees the new ztunnel serve); with Drain the swapped node's pods are
// reported uncaptured and verification fails.
func TestAgentsFailTheGate(t *testing.T) {
	requireDataPlane(t)
	for _, tc := range []struct {
		strategy ztv1.NodeStrategy
		reason   string
		message  string
	}{
		{ztv1.NodeStrategyHandoff, "StepTimedOut", "the agent to see the " + toRev + " ztunnel listening in every ambient pod"},
		{ztv1.NodeStrategyDrain, "VerificationFailed", "no single ztunnel holds all capture ports"},
	} {
		t.Run(string(tc.strategy), func(t *testing.T) {
			e := newEnvNodes(t, agentNodes)
			before := e.snapshot()
			dp := e.startDataPlane(t, simdataplane.Config{NoListen: []string{toRev}})
			captures := e.recordCaptures()
			w := e.watchInvariants(tc.strategy)
			e.startOrchestrator()
			u := seedUpgrade("broken", tc.strategy, nodesStep(intstr.FromInt32(1)), nodesStep(intstr.FromInt32(3)))
			u.Spec.Analysis.AgentVerification = ztv1.AgentVerificationRequired
			u.Spec.StepTimeout = &metav1.Duration{Duration: 30 * time.Second}
			e.create(u)
			u = e.waitPhase("broken", 3*time.Minute, ztv1.PhaseRolledBack, ztv1.PhaseFailed, ztv1.PhaseSucceeded)
			if u.Status.Phase != ztv1.PhaseRolledBack {
				t.Fatalf("phase %s, want RolledBack: %s", u.Status.Phase, u.Status.Message)
			}
			c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack)
			if c == nil || !strings.Contains(c.Message, tc.message) {
				t.Errorf("RolledBack condition %+v does not say %q", c, tc.message)
			}
			if !strings.Contains(fmt.Sprint(u.Status.Conditions), tc.reason) {
				t.Errorf("conditions %+v do not give the reason %s", u.Status.Conditions, tc.reason)
			}
			if u.Status.CurrentStep != 0 {
				t.Errorf("rolled back at step %d, want 0: the first wave must not pass", u.Status.CurrentStep)
			}
			if d := before.diff(e.snapshot()); len(d) > 0 {
				t.Errorf("rollback did not restore exactly:\n%s", strings.Join(d, "\n"))
			}
			for _, n := range e.workers() {
				e.eventually(n+" captured by "+fromRev+" again", time.Minute, func() (bool, string) { return e.capturedBy(n, fromRev) })
				seq := captures.of(n)
				for _, s := range seq {
					if strings.Contains(s, "("+toRev) || strings.Contains(s, ","+toRev) {
						t.Errorf("node %s: the %s ztunnel captured a pod, yet it never listens: %v", n, toRev, seq)
					}
				}
				t.Logf("node %s: %s", n, strings.Join(seq, " → "))
			}
			w.assert(t, time.Minute)
			if err := dp.Err(); err != nil {
				t.Errorf("data plane: %v", err)
			}
		})
	}
}
