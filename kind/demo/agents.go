package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim/simdataplane"
)

// agentsUnavailable says why this run cannot have node agents ("" when it can): they
// need root, cgroup v2 and kernel BTF (simdataplane.Check), and the agent binary.
func agentsUnavailable(o options) string {
	if o.noAgents {
		return "-no-agents is set"
	}
	if err := simdataplane.Check(true); err != nil {
		return err.Error()
	}
	if _, err := os.Stat(o.agent); err != nil {
		return fmt.Sprintf("agent binary %s: %v (run make build)", o.agent, err)
	}
	return ""
}

// startAgents gives the workers a real data plane on this host (kind/sim/simdataplane:
// a network namespace per ambient pod, a stand-in ztunnel process per ztunnel pod in
// a kubelet-style cgroup, following the API) and runs one real ztcanary-agent per
// worker, then waits until every agent reports its pods captured by the stable
// revision. Close stops all of it by PID and removes its namespaces, cgroups, bpffs
// and pins.
func startAgents(ctx context.Context, d *demo, agentBinary string) (*simdataplane.DataPlane, error) {
	dp, err := simdataplane.Start(ctx, simdataplane.Config{Kubeconfig: d.cluster.Kubeconfig, AgentBinary: agentBinary}, d.workers)
	if err != nil {
		return nil, err
	}
	for _, n := range dp.State().Nodes {
		zt := make([]string, 0, len(n.Ztunnels))
		for _, z := range n.Ztunnels {
			zt = append(zt, fmt.Sprintf("%s (pid %d)", z.Revision, z.PID))
		}
		fmt.Printf("    %-16s agent pid %-7d %d ambient pod namespaces, stand-in ztunnel %s\n", n.Name, n.AgentPID, len(n.Pods), strings.Join(zt, ","))
	}
	fmt.Printf("    data plane folder %s (agent logs under logs/)\n", dp.Dir())
	for _, w := range d.workers {
		if err := poll(ctx, "the agent of "+w+" to report its pods captured by "+stable, func() (bool, string, error) {
			nc, err := d.nodeCapture(ctx, w)
			if err != nil || nc == nil {
				return false, "no NodeCapture yet", err
			}
			return nc.Status.NodeRevision == stable && nc.Status.Verdict == ztv1.VerdictMatch, captureSummary(nc), nil
		}); err != nil {
			return nil, errors.Join(err, dp.Close())
		}
	}
	return dp, nil
}

func (d *demo) nodeCapture(ctx context.Context, node string) (*ztv1.NodeCapture, error) {
	var nc ztv1.NodeCapture
	if err := d.c.Get(ctx, client.ObjectKey{Name: node}, &nc); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return &nc, nil
}

// captureSummary sums up a NodeCapture: its verdict and how many ambient pods each
// ztunnel revision captures, e.g. "Match: 3 pods by 1-18-1".
func captureSummary(nc *ztv1.NodeCapture) string {
	if nc.Status.ObservedAt == nil {
		return "not observed yet"
	}
	count := map[string]int{}
	for _, p := range nc.Status.Pods {
		k := string(p.State)
		switch {
		case p.State == ztv1.CaptureSingle:
			k = "by " + p.CapturedBy
		case p.CapturedBy != "":
			k += "(" + p.CapturedBy + ")"
		}
		count[k]++
	}
	var parts []string
	for k, n := range count {
		parts = append(parts, fmt.Sprintf("%d pods %s", n, k))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		parts = []string{"no ambient pods"}
	}
	return fmt.Sprintf("%s: %s", nc.Status.Verdict, strings.Join(parts, ", "))
}

// printAgents shows, per worker, what the upgrade's status says the agents proved
// (capturedBy, verified) beside the node's latest NodeCapture: the kernel's view of
// which ztunnel revision owns its pods' capture listeners.
func (d *demo) printAgents(ctx context.Context, u *ztv1.RevisionUpgrade) {
	if d.dp == nil {
		return
	}
	d.recordDataPlane()
	status := map[string]ztv1.NodeStatus{}
	if u != nil {
		for _, n := range u.Status.Nodes {
			status[n.Name] = n
		}
	}
	for _, w := range d.workers {
		var node corev1.Node
		rev := "?"
		if err := d.c.Get(ctx, client.ObjectKey{Name: w}, &node); err == nil {
			rev = node.Labels[seed.RevisionKey]
		}
		proof := "-"
		if s, ok := status[w]; ok {
			proof = string(s.Phase)
			switch {
			case s.Verified && s.CapturedBy != "":
				proof += ", verified: " + s.CapturedBy
			case s.Verified:
				proof += ", verified: no pods"
			case s.Phase == ztv1.NodeCanary:
				proof += ", not verified"
			}
		}
		agent := "no NodeCapture"
		if nc, err := d.nodeCapture(ctx, w); err == nil && nc != nil {
			agent = captureSummary(nc)
		}
		fmt.Printf("      agent  %-16s rev %-7s status %-27s NodeCapture %s\n", w, rev, proof, agent)
	}
}

// checkDataPlane reports processes of the data plane that died on their own.
func (d *demo) checkDataPlane() error {
	if d.dp == nil {
		return nil
	}
	if err := d.dp.Err(); err != nil {
		return fmt.Errorf("simulated data plane: %w", err)
	}
	return nil
}

// waitCaptured waits until every worker's agent reports the node labelled rev and its
// pods captured by the rev ztunnel alone (after an upgrade ended), then shows the
// proof beside what the upgrade's status recorded.
func (d *demo) waitCaptured(ctx context.Context, u *ztv1.RevisionUpgrade, rev string) error {
	if d.dp == nil {
		return nil
	}
	for _, w := range d.workers {
		if err := poll(ctx, "the agent of "+w+" to report its pods captured by "+rev, func() (bool, string, error) {
			nc, err := d.nodeCapture(ctx, w)
			if err != nil || nc == nil {
				return false, "no NodeCapture yet", err
			}
			return nc.Status.NodeRevision == rev && nc.Status.Verdict == ztv1.VerdictMatch, captureSummary(nc), nil
		}); err != nil {
			return err
		}
	}
	say("the agents report every worker's pods captured by the %s ztunnel alone:", rev)
	d.printAgents(ctx, u)
	return d.checkDataPlane()
}

// recordDataPlane notes the agents, stand-in ztunnels and their cgroups in the
// outcome, to check later that they are gone.
func (d *demo) recordDataPlane() {
	for _, n := range d.dp.State().Nodes {
		d.out.pid("agent-"+n.Name, n.AgentPID)
		for _, z := range n.Ztunnels {
			d.out.pid("ztunnel-"+z.Name, z.PID)
			d.out.Paths = append(d.out.Paths, z.Cgroup)
		}
	}
}
