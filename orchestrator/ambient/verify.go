package ambient

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// verify checks a wave: the canary workloads are Ready and, with agent verification
// Required, every canary node's NodeCapture shows the to ztunnel capturing every
// ambient pod. A report that contradicts the plan fails the gate.
func (d *Driver) verify(ctx context.Context, u *ztv1.RevisionUpgrade) (bool, string, error) {
	ok, msg, err := d.workloadsReady(ctx, u, u.Spec.To)
	if err != nil || !ok {
		return false, msg, err
	}
	if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationDisabled {
		return true, "", nil
	}
	captures, err := d.nodeCaptures(ctx)
	if err != nil {
		return false, "", err
	}
	// The ambient pods the API places on the canary nodes: a report passes only if it
	// covers each of them (a report made after the swap but before the canary pods
	// landed would otherwise prove nothing about them).
	var canary []string
	for _, n := range u.Status.Nodes {
		if n.Phase == ztv1.NodeCanary {
			canary = append(canary, n.Name)
		}
	}
	placed := &world{ambient: map[string][]*corev1.Pod{}}
	if err := d.readAmbient(ctx, u, placed, canary); err != nil {
		return false, "", err
	}
	required := u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationRequired
	matched := map[string]*ztv1.NodeCapture{}
	for _, name := range canary {
		nc, wait, err := judgeReport(u, name, captures[name], placed.ambient[name])
		if err != nil {
			return false, "", err
		}
		if wait != "" {
			if required {
				return false, wait, nil
			}
			continue
		}
		matched[name] = nc
	}
	// Record what the agents proved, from the reports that passed the gate.
	for j := range u.Status.Nodes {
		n := &u.Status.Nodes[j]
		if nc, ok := matched[n.Name]; ok {
			n.Verified, n.CapturedBy = true, capturedBy(nc)
		}
	}
	return true, "", nil
}

// judgeReport judges the agent's report of one canary node: the report (nil and a
// reason to wait when it does not prove the node yet), or an error when it
// contradicts the plan.
func judgeReport(u *ztv1.RevisionUpgrade, node string, nc *ztv1.NodeCapture, placed []*corev1.Pod) (*ztv1.NodeCapture, string, error) {
	if nc == nil || nc.Status.ObservedAt == nil {
		return nil, "no NodeCapture from the agent on " + node + " yet", nil
	}
	// Judge only a report the agent made after the wave's nodes were swapped (the
	// Verifying stage began after the last swap): an older one may show the handoff
	// (two revisions) or the old ztunnel.
	if since := u.Status.StageStart(); nc.Status.NodeRevision != u.Spec.To || (since != nil && nc.Status.ObservedAt.Before(since)) {
		return nil, "waiting for a report from the agent on " + node + " made after the swap", nil
	}
	switch nc.Status.Verdict {
	case ztv1.VerdictMatch:
		if missing := unreportedPods(nc, placed); len(missing) > 0 {
			return nil, fmt.Sprintf("waiting for the agent on %s to report %d more ambient pods (%s)", node, len(missing), drive.Summarize(missing)), nil
		}
		return nc, "", nil
	case ztv1.VerdictUnknown, "":
		return nil, "the agent on " + node + " cannot tell yet", nil
	case ztv1.VerdictMultipleRevisions:
		// The swap is done in the orchestrator's view (no from ztunnel pod is left
		// on the node): an agent that still sees two revisions has a lagging view
		// of the node's pods. Wait; the step timeout bounds it.
		return nil, "the agent on " + node + " still sees ztunnels of two revisions", nil
	}
	return nil, "", fmt.Errorf("agent on node %s reports %s: %s", node, nc.Status.Verdict, nc.Status.Message)
}

// capturedBy is the revision a matching report shows capturing the node's pods
// ("" when the node has none).
func capturedBy(nc *ztv1.NodeCapture) string {
	for _, p := range nc.Status.Pods {
		return p.CapturedBy
	}
	return ""
}

// unreportedPods names the pods of placed that the agent could see (running, with an
// IP, not terminating, not host-network) but its report does not list.
func unreportedPods(nc *ztv1.NodeCapture, placed []*corev1.Pod) []string {
	reported := make(map[string]bool, len(nc.Status.Pods))
	for _, p := range nc.Status.Pods {
		reported[p.Namespace+"/"+p.Name] = true
	}
	var missing []string
	for _, p := range placed {
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil || p.Spec.HostNetwork {
			continue
		}
		if key := p.Namespace + "/" + p.Name; !reported[key] {
			missing = append(missing, key)
		}
	}
	slices.Sort(missing)
	return missing
}
