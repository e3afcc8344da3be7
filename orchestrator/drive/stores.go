package drive

import (
	"context"
	"fmt"

	"github.com/ztcanary/ztcanary/internal/mesh"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Why a pass reads the informers' stores rather than the cached client: the client's
// List builds a slice of object values, so every pass copied each node of the cluster
// (about 0.8 MB at 1000 nodes) and each pod of the nodes it drives, only to read
// them. Those copies were most of what a pass allocated, and the garbage collector's
// work with them. The stores hand out the cached pointers; the objects are shared
// with the cache and a pass only reads them.

// Stores are the manager cache's node store and pod indexer.
type Stores struct {
	nodes toolscache.Store
	pods  toolscache.Indexer
}

// podIndexers index the cached pods by node: every pod (Drain evicts a node's ambient
// pods) and the ztunnel pods alone (a Handoff pass needs only those, one or two per
// node, not the node's ten or a hundred workload pods).
var podIndexers = toolscache.Indexers{
	PodNodeIndex:     podIndex(IndexPodNode),
	ZtunnelNodeIndex: podIndex(IndexZtunnelNode),
}

func podIndex(f func(client.Object) []string) toolscache.IndexFunc {
	return func(o any) ([]string, error) {
		p, ok := o.(*corev1.Pod)
		if !ok {
			return nil, fmt.Errorf("pod index: a %T is not a pod", o)
		}
		return f(p), nil
	}
}

// NewStores registers the pod indexes on c's pod informer and returns the node and
// pod stores for the passes to read. A cache whose informers expose no store (a
// cache split by namespace, for one) gets controller-runtime's field indexes instead,
// and NewStores returns nil: the passes read through the client. It must run before
// the cache starts.
func NewStores(ctx context.Context, c cache.Cache) (*Stores, error) {
	podInf, err := c.GetInformer(ctx, &corev1.Pod{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	nodeInf, err := c.GetInformer(ctx, &corev1.Node{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	pods, podsOK := podInf.(interface{ GetIndexer() toolscache.Indexer })
	nodes, nodesOK := nodeInf.(interface{ GetStore() toolscache.Store })
	if !podsOK || !nodesOK {
		for name, f := range map[string]client.IndexerFunc{PodNodeIndex: IndexPodNode, ZtunnelNodeIndex: IndexZtunnelNode} {
			if err := c.IndexField(ctx, &corev1.Pod{}, name, f); err != nil {
				return nil, fmt.Errorf("index pods by %s: %w", name, err)
			}
		}
		return nil, nil
	}
	if err := podInf.AddIndexers(podIndexers); err != nil {
		return nil, fmt.Errorf("index pods by node: %w", err)
	}
	return &Stores{nodes: nodes.GetStore(), pods: pods.GetIndexer()}, nil
}

// ListNodes returns every node by name, sharing the cache's objects (read-only).
func (e *Env) ListNodes(ctx context.Context) (map[string]*corev1.Node, error) {
	if e.Stores != nil {
		objs := e.Stores.nodes.List()
		out := make(map[string]*corev1.Node, len(objs))
		for _, o := range objs {
			n, ok := o.(*corev1.Node)
			if !ok {
				return nil, fmt.Errorf("list nodes: the node store holds a %T", o)
			}
			out[n.Name] = n
		}
		return out, nil
	}
	var nodes corev1.NodeList
	if err := e.Client.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return ByName(nodes.Items), nil
}

// ByName maps listed items by name, pointing into the list (no copy).
func ByName[T any, PT interface {
	*T
	GetName() string
}](items []T) map[string]PT {
	out := make(map[string]PT, len(items))
	for i := range items {
		p := PT(&items[i])
		out[p.GetName()] = p
	}
	return out
}

// PodsOn returns the pods of one node that an index (PodNodeIndex or
// ZtunnelNodeIndex) lists, sharing the cache's objects (read-only).
func (e *Env) PodsOn(ctx context.Context, index, node string) ([]*corev1.Pod, error) {
	if e.Stores != nil {
		objs, err := e.Stores.pods.ByIndex(index, node)
		if err != nil {
			return nil, fmt.Errorf("list pods on node %s: %w", node, err)
		}
		out := make([]*corev1.Pod, 0, len(objs))
		for _, o := range objs {
			p, ok := o.(*corev1.Pod)
			if !ok {
				return nil, fmt.Errorf("list pods on node %s: the pod store holds a %T", node, o)
			}
			out = append(out, p)
		}
		return out, nil
	}
	var pods corev1.PodList
	if err := e.Client.List(ctx, &pods, client.MatchingFields{index: node}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list pods on node %s: %w", node, err)
	}
	out := make([]*corev1.Pod, len(pods.Items))
	for i := range pods.Items {
		out[i] = &pods.Items[i]
	}
	return out, nil
}

// PodNodeIndex indexes cached pods by node, so a pass reads only the pods of the
// nodes it drives, not every pod of the cluster.
const PodNodeIndex = "spec.nodeName"

// IndexPodNode is the index function of PodNodeIndex.
func IndexPodNode(o client.Object) []string {
	if n := o.(*corev1.Pod).Spec.NodeName; n != "" {
		return []string{n}
	}
	return nil
}

// ZtunnelNodeIndex indexes the ztunnel pods (label app=ztunnel, as Istio's chart
// sets for every revision) by node: a Handoff pass needs only those, one or two per
// node, not the node's ten or a hundred workload pods.
const ZtunnelNodeIndex = "ztunnel.spec.nodeName"

// IndexZtunnelNode is the index function of ZtunnelNodeIndex.
func IndexZtunnelNode(o client.Object) []string {
	p := o.(*corev1.Pod)
	if p.Spec.NodeName != "" && mesh.IsZtunnel(p.Labels) {
		return []string{p.Spec.NodeName}
	}
	return nil
}
