package agent

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
)

// LabelRevision is the default node label that pins revisions (the API's
// DefaultNodeLabel, istio.io/rev).
const LabelRevision = ztv1.DefaultNodeLabel

// ZtunnelPod is a ztunnel pod running on the agent's node.
type ZtunnelPod struct {
	Namespace, Name, UID, Revision string
}

// AmbientPod is an ambient pod of the agent's node (mesh.Ambient).
type AmbientPod struct {
	Namespace, Name, UID string
	IPs                  []string
}

// Key is "namespace/name".
func (p AmbientPod) Key() string { return p.Namespace + "/" + p.Name }

// NodeView is what the API says about the agent's node.
type NodeView struct {
	// NodeRevision is the value of the node's revision label.
	NodeRevision string
	Ztunnels     []ZtunnelPod
	Ambient      []AmbientPod
}

// DiscoveryOptions name where to look.
type DiscoveryOptions struct {
	Node string
	// ZtunnelNamespace holds the ztunnel DaemonSets of every revision (istio-system).
	ZtunnelNamespace string
	// NodeLabel is the node label key that pins revisions (istio.io/rev).
	NodeLabel string
}

// Discover reads the node's revision label, its ztunnel pods and its ambient pods
// (mesh.Ambient: enrolled by their namespace's label or their own): three requests (the
// node, the namespaces labelled ambient, the pods with spec.nodeName = node). Only the
// ambient namespaces' labels are read, which is all mesh.Ambient needs: a pod labelled
// ambient is found in any namespace, since every pod of the node is listed.
func Discover(ctx context.Context, c client.Client, o DiscoveryOptions) (NodeView, error) {
	var v NodeView
	var node corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: o.Node}, &node); err != nil {
		return v, fmt.Errorf("get node %s: %w", o.Node, err)
	}
	v.NodeRevision = node.Labels[o.NodeLabel]

	var nss corev1.NamespaceList
	if err := c.List(ctx, &nss, client.MatchingLabels{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}); err != nil {
		return v, fmt.Errorf("list ambient namespaces: %w", err)
	}
	nsLabels := make(map[string]map[string]string, len(nss.Items))
	for _, ns := range nss.Items {
		nsLabels[ns.Name] = ns.Labels
	}

	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.MatchingFields{"spec.nodeName": o.Node}); err != nil {
		return v, fmt.Errorf("list pods of node %s: %w", o.Node, err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if mesh.IsZtunnelPod(o.ZtunnelNamespace, p) {
			// A terminating ztunnel still counts: its listeners may still be open.
			if !mesh.Finished(p) {
				v.Ztunnels = append(v.Ztunnels, ZtunnelPod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Revision: mesh.Revision(p)})
			}
			continue
		}
		if mesh.Ambient(nsLabels[p.Namespace], p) {
			v.Ambient = append(v.Ambient, AmbientPod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), IPs: mesh.PodIPs(p)})
		}
	}
	sort.Slice(v.Ztunnels, func(i, j int) bool { return v.Ztunnels[i].Name < v.Ztunnels[j].Name })
	sort.Slice(v.Ambient, func(i, j int) bool { return v.Ambient[i].Key() < v.Ambient[j].Key() })
	return v, nil
}
