package ambient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// world is one pass's view of what the upgrade touches, read from the cache once.
type world struct {
	nodes map[string]*corev1.Node
	// ztunnels maps node name to the ztunnel pods on it, by revision (attributed
	// through the owning DaemonSet).
	ztunnels map[string][]ztunnelPod
	// ambient maps node name to the ambient pods on it (not ztunnel, not DaemonSet).
	ambient map[string][]*corev1.Pod
	// captures maps node name to its agent's report.
	captures map[string]*ztv1.NodeCapture
}

type ztunnelPod struct {
	pod      *corev1.Pod
	revision string
}

// readWorld reads, from the cache, what runs on the nodes of interest (nodes: every
// node, from listNodes). The lists share the cache's objects (no deep copy): the
// world is read-only. Ambient workload pods are read only for Drain, the one
// strategy that evicts them.
func (d *Driver) readWorld(ctx context.Context, u *ztv1.RevisionUpgrade, nodes map[string]*corev1.Node, of []string) (*world, error) {
	w := &world{
		nodes:    nodes,
		ztunnels: map[string][]ztunnelPod{},
		ambient:  map[string][]*corev1.Pod{},
		captures: map[string]*ztv1.NodeCapture{},
	}
	dss, err := ztunnelDaemonSets(ctx, d.Client, u.Spec.Ztunnel.Namespace)
	if err != nil {
		return nil, err
	}
	revByUID := map[types.UID]string{}
	for rev, ds := range dss {
		revByUID[ds.UID] = rev
	}
	for _, node := range of {
		pods, err := d.PodsOn(ctx, drive.ZtunnelNodeIndex, node)
		if err != nil {
			return nil, err
		}
		for _, p := range pods {
			if p.Namespace != u.Spec.Ztunnel.Namespace {
				continue
			}
			// Istio's chart gives every revision's pods the same labels: attribute
			// them through the DaemonSet that owns them.
			if owner := metav1.GetControllerOf(p); owner != nil {
				if rev, ok := revByUID[owner.UID]; ok {
					w.ztunnels[node] = append(w.ztunnels[node], ztunnelPod{pod: p, revision: rev})
				}
			}
		}
	}
	if u.Spec.NodeStrategy != ztv1.NodeStrategyHandoff {
		if err := d.readAmbient(ctx, u, w, of); err != nil {
			return nil, err
		}
	}
	if u.Spec.Analysis.AgentVerification != ztv1.AgentVerificationDisabled {
		captures, err := d.nodeCaptures(ctx)
		if err != nil {
			return nil, err
		}
		for _, node := range of {
			if nc, ok := captures[node]; ok {
				w.captures[node] = nc
			}
		}
	}
	return w, nil
}

// readAmbient fills w.ambient: the pods of the nodes of interest that the ambient
// data plane captures (mesh.Enrolled: by their namespace or their own label), not
// finished, terminating ones included (a drain waits for them to leave), DaemonSet
// pods excluded (a drain cannot evict them).
func (d *Driver) readAmbient(ctx context.Context, u *ztv1.RevisionUpgrade, w *world, of []string) error {
	var nss corev1.NamespaceList
	if err := d.Client.List(ctx, &nss, client.MatchingLabels{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}); err != nil {
		return fmt.Errorf("list ambient namespaces: %w", err)
	}
	nsLabels := make(map[string]map[string]string, len(nss.Items))
	for _, ns := range nss.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	for _, node := range of {
		pods, err := d.PodsOn(ctx, drive.PodNodeIndex, node)
		if err != nil {
			return err
		}
		for _, p := range pods {
			if mesh.IsZtunnelPod(u.Spec.Ztunnel.Namespace, p) || mesh.DaemonSetPod(p) || mesh.Finished(p) {
				continue
			}
			if mesh.Enrolled(nsLabels[p.Namespace], p) {
				w.ambient[node] = append(w.ambient[node], p)
			}
		}
	}
	return nil
}

// nodeCaptures reads every agent report from the cache by node, sharing the
// cache's objects (read-only).
func (d *Driver) nodeCaptures(ctx context.Context) (map[string]*ztv1.NodeCapture, error) {
	var list ztv1.NodeCaptureList
	if err := d.Client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list NodeCaptures: %w", err)
	}
	return drive.ByName(list.Items), nil
}

// ztunnelState sums up a node's ztunnels: whether one of rev is Ready and whether
// any pod (even terminating) of another revision remains.
func (w *world) ztunnelState(node, rev string) (readyRev bool, others int) {
	for _, z := range w.ztunnels[node] {
		if z.revision == rev {
			readyRev = readyRev || mesh.Serving(z.pod)
		} else {
			others++
		}
	}
	return readyRev, others
}

// nodeStep is the outcome of driving one node one action further.
type nodeStep struct {
	done    bool
	waiting string // what the node waits for, for status and logs
}

// driveNode takes one action moving node n to revision target with the upgrade's
// strategy, or reports it done. It derives everything from the world, so a restart
// in the middle resumes where the cluster is.
func (d *Driver) driveNode(ctx context.Context, u *ztv1.RevisionUpgrade, w *world, n *ztv1.NodeStatus, target string) (nodeStep, error) {
	node, ok := w.nodes[n.Name]
	if !ok {
		return nodeStep{}, fmt.Errorf("node %s in scope no longer exists", n.Name)
	}
	if u.Spec.NodeStrategy == ztv1.NodeStrategyHandoff {
		return d.handoffNode(ctx, u, w, n, node, target)
	}
	return d.drainNode(ctx, u, w, n, node, target)
}

// nodeParallelism bounds how many nodes a pass drives at once: a wave of 100 nodes
// costs one round of API latency, not a hundred.
const nodeParallelism = 16

// driveNodes drives each node one action towards target(node), in parallel. Each
// goroutine touches only its own NodeStatus; the world is read-only.
func (d *Driver) driveNodes(ctx context.Context, u *ztv1.RevisionUpgrade, w *world, nodes []*ztv1.NodeStatus, target func(*ztv1.NodeStatus) string) ([]nodeStep, error) {
	results := make([]nodeStep, len(nodes))
	errs := make([]error, len(nodes))
	sem := make(chan struct{}, nodeParallelism)
	var wg sync.WaitGroup
	for k, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[k], errs[k] = d.driveNode(ctx, u, w, n, target(n))
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// drainNode: cordon, evict the node's ambient pods, relabel, wait until the target
// ztunnel is Ready and no other one remains, uncordon. No connection is cut, because
// no ambient pod is left on the node when its ztunnel changes.
func (d *Driver) drainNode(ctx context.Context, u *ztv1.RevisionUpgrade, w *world, n *ztv1.NodeStatus, node *corev1.Node, target string) (nodeStep, error) {
	key := u.Spec.NodeLabelOrDefault()
	if node.Labels[key] == target {
		n.Revision = target
		ready, others := w.ztunnelState(n.Name, target)
		switch {
		case others > 0:
			return nodeStep{waiting: "the old ztunnel to leave"}, nil
		case !ready:
			return nodeStep{waiting: "the " + target + " ztunnel to be Ready"}, nil
		case node.Spec.Unschedulable && !n.WasCordoned:
			return nodeStep{waiting: "uncordon"}, d.patchNode(ctx, n.Name, map[string]any{"spec": map[string]any{"unschedulable": nil}})
		}
		return nodeStep{done: true}, nil
	}
	if !node.Spec.Unschedulable {
		return nodeStep{waiting: "cordon"}, d.patchNode(ctx, n.Name, map[string]any{"spec": map[string]any{"unschedulable": true}})
	}
	if pods := w.ambient[n.Name]; len(pods) > 0 {
		return nodeStep{waiting: fmt.Sprintf("%d ambient pods to leave", len(pods))}, d.Evict(ctx, pods)
	}
	n.Revision = target
	return nodeStep{waiting: "relabel"}, d.patchNode(ctx, n.Name, labelPatch(map[string]any{key: target}))
}

// handoffNode: set the transitional label so the target ztunnel starts beside the
// current one, wait until it is Ready (and, when agents report, listening in every
// ambient pod), then flip the node label and drop the transitional one in a single
// write, so the old ztunnel leaves only once the new one serves.
func (d *Driver) handoffNode(ctx context.Context, u *ztv1.RevisionUpgrade, w *world, n *ztv1.NodeStatus, node *corev1.Node, target string) (nodeStep, error) {
	key, hkey := u.Spec.NodeLabelOrDefault(), u.Spec.Ztunnel.HandoffLabel
	ready, others := w.ztunnelState(n.Name, target)
	if node.Labels[key] == target {
		n.Revision = target
		if _, ok := node.Labels[hkey]; ok {
			return nodeStep{waiting: "the handoff label to go"}, d.patchNode(ctx, n.Name, labelPatch(map[string]any{hkey: nil}))
		}
		switch {
		case others > 0:
			return nodeStep{waiting: "the old ztunnel to leave"}, nil
		case !ready:
			return nodeStep{waiting: "the " + target + " ztunnel to be Ready"}, nil
		}
		return nodeStep{done: true}, nil
	}
	if node.Labels[hkey] != target {
		return nodeStep{waiting: "the handoff label"}, d.patchNode(ctx, n.Name, labelPatch(map[string]any{hkey: target}))
	}
	if !ready {
		return nodeStep{waiting: "the " + target + " ztunnel to start beside the old one"}, nil
	}
	if !d.captureAgrees(u, w, n.Name, target) {
		return nodeStep{waiting: "the agent to see the " + target + " ztunnel listening in every ambient pod"}, nil
	}
	n.Revision = target
	return nodeStep{waiting: "relabel"}, d.patchNode(ctx, n.Name, labelPatch(map[string]any{key: target, hkey: nil}))
}

// captureAgrees is the handoff's agent check before the node label flips: the node's
// NodeCapture must show target listening in every ambient pod (alone or beside the
// old ztunnel). With agent verification Optional a missing report agrees; Disabled
// always agrees. After the flip, the Verifying stage judges the final capture.
func (d *Driver) captureAgrees(u *ztv1.RevisionUpgrade, w *world, node, target string) bool {
	mode := u.Spec.Analysis.AgentVerification
	if mode == ztv1.AgentVerificationDisabled {
		return true
	}
	nc, ok := w.captures[node]
	if !ok || nc.Status.ObservedAt == nil {
		return mode != ztv1.AgentVerificationRequired
	}
	for _, p := range nc.Status.Pods {
		switch {
		case p.State == ztv1.CaptureSingle && p.CapturedBy == target:
		case p.State == ztv1.CaptureBoth && slices.Contains(strings.Split(p.CapturedBy, ","), target):
		default:
			return false
		}
	}
	return true
}

func labelPatch(labels map[string]any) map[string]any {
	return map[string]any{"metadata": map[string]any{"labels": labels}}
}

func (d *Driver) patchNode(ctx context.Context, name string, patch map[string]any) error {
	b, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	drive.CountWrite("node")
	// The answer is asked for as metadata only: a pass reads nodes from the cache,
	// never from this reply, and a node's status is most of its size.
	node := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := d.Client.Patch(ctx, node, client.RawPatch(types.MergePatchType, b), client.FieldOwner(FieldManager)); err != nil {
		return fmt.Errorf("patch node %s: %w", name, err)
	}
	return nil
}

// workloadsReady reports whether every Deployment and StatefulSet of the namespaces
// pinned to rev has all its replicas updated and available.
func (d *Driver) workloadsReady(ctx context.Context, u *ztv1.RevisionUpgrade, rev string) (bool, string, error) {
	for _, wl := range u.Spec.Workloads {
		if wl.Revision != rev {
			continue
		}
		var deps appsv1.DeploymentList
		if err := d.Client.List(ctx, &deps, client.InNamespace(wl.Namespace)); err != nil {
			return false, "", err
		}
		for _, d := range deps.Items {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas < want || d.Status.AvailableReplicas < want || d.Status.Replicas > want {
				return false, fmt.Sprintf("Deployment %s/%s: %d of %d replicas updated and available", d.Namespace, d.Name, min(d.Status.UpdatedReplicas, d.Status.AvailableReplicas), want), nil
			}
		}
		var sts appsv1.StatefulSetList
		if err := d.Client.List(ctx, &sts, client.InNamespace(wl.Namespace)); err != nil {
			return false, "", err
		}
		for _, s := range sts.Items {
			want := int32(1)
			if s.Spec.Replicas != nil {
				want = *s.Spec.Replicas
			}
			if s.Status.ObservedGeneration < s.Generation || s.Status.UpdatedReplicas < want || s.Status.ReadyReplicas < want {
				return false, fmt.Sprintf("StatefulSet %s/%s: %d of %d replicas updated and ready", s.Namespace, s.Name, min(s.Status.UpdatedReplicas, s.Status.ReadyReplicas), want), nil
			}
		}
	}
	return true, "", nil
}

func metaOf(ns, name string) metav1.ObjectMeta { return metav1.ObjectMeta{Namespace: ns, Name: name} }
