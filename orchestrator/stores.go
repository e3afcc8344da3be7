package orchestrator

import (
	"context"
	"fmt"

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

// informerStores are the manager cache's node store and pod indexer.
type informerStores struct {
	nodes toolscache.Store
	pods  toolscache.Indexer
}

// podIndexers index the cached pods by node: every pod (Drain evicts a node's ambient
// pods) and the ztunnel pods alone (a Handoff pass needs only those, one or two per
// node, not the node's ten or a hundred workload pods).
var podIndexers = toolscache.Indexers{
	podNodeIndex:     podIndex(indexPodNode),
	ztunnelNodeIndex: podIndex(indexZtunnelNode),
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

// useInformerStores registers the pod indexes on c's pod informer and keeps the node
// and pod stores for the passes to read. A cache whose informers expose no store (a
// cache split by namespace, for one) gets controller-runtime's field indexes instead,
// and the passes read through the client. It must run before the cache starts.
func (r *Reconciler) useInformerStores(ctx context.Context, c cache.Cache) error {
	podInf, err := c.GetInformer(ctx, &corev1.Pod{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	nodeInf, err := c.GetInformer(ctx, &corev1.Node{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	pods, podsOK := podInf.(interface{ GetIndexer() toolscache.Indexer })
	nodes, nodesOK := nodeInf.(interface{ GetStore() toolscache.Store })
	if !podsOK || !nodesOK {
		r.stores = nil
		for name, f := range map[string]client.IndexerFunc{podNodeIndex: indexPodNode, ztunnelNodeIndex: indexZtunnelNode} {
			if err := c.IndexField(ctx, &corev1.Pod{}, name, f); err != nil {
				return fmt.Errorf("index pods by %s: %w", name, err)
			}
		}
		return nil
	}
	if err := podInf.AddIndexers(podIndexers); err != nil {
		return fmt.Errorf("index pods by node: %w", err)
	}
	r.stores = &informerStores{nodes: nodes.GetStore(), pods: pods.GetIndexer()}
	return nil
}

// listNodes returns every node by name, sharing the cache's objects (read-only).
func (r *Reconciler) listNodes(ctx context.Context) (map[string]*corev1.Node, error) {
	if r.stores != nil {
		objs := r.stores.nodes.List()
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
	if err := r.Client.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return byName(nodes.Items), nil
}

// byName maps listed items by name, pointing into the list (no copy).
func byName[T any, PT interface {
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

// podsOn returns the pods of one node that an index (podNodeIndex or
// ztunnelNodeIndex) lists, sharing the cache's objects (read-only).
func (r *Reconciler) podsOn(ctx context.Context, index, node string) ([]*corev1.Pod, error) {
	if r.stores != nil {
		objs, err := r.stores.pods.ByIndex(index, node)
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
	if err := r.Client.List(ctx, &pods, client.MatchingFields{index: node}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list pods on node %s: %w", node, err)
	}
	out := make([]*corev1.Pod, len(pods.Items))
	for i := range pods.Items {
		out[i] = &pods.Items[i]
	}
	return out, nil
}
