package agent

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Labels and annotations the agent reads.
const (
	// LabelRevision is Istio's revision key: an annotation on the ztunnel chart's pods, or
	// a label; also the node label that pins revisions.
	LabelRevision = "istio.io/rev"
	// LabelDataplaneMode enrols a namespace (value "ambient") or opts a pod out ("none").
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// LabelZtunnelApp is the label every ztunnel pod carries, whatever its revision.
	LabelZtunnelApp = "app"
)

// ZtunnelPod is a ztunnel pod running on the agent's node.
type ZtunnelPod struct {
	Namespace, Name, UID, Revision string
}

// AmbientPod is an ambient pod of the agent's node.
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

// Discover reads the node's revision label, its ztunnel pods and its ambient pods: three
// requests (the node, the pods with spec.nodeName = node, the ambient namespaces).
func Discover(ctx context.Context, c client.Client, o DiscoveryOptions) (NodeView, error) {
	var v NodeView
	var node corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: o.Node}, &node); err != nil {
		return v, fmt.Errorf("get node %s: %w", o.Node, err)
	}
	v.NodeRevision = node.Labels[o.NodeLabel]

	var nss corev1.NamespaceList
	if err := c.List(ctx, &nss, client.MatchingLabels{LabelDataplaneMode: "ambient"}); err != nil {
		return v, fmt.Errorf("list ambient namespaces: %w", err)
	}
	ambientNS := map[string]bool{}
	for _, ns := range nss.Items {
		ambientNS[ns.Name] = true
	}

	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.MatchingFields{"spec.nodeName": o.Node}); err != nil {
		return v, fmt.Errorf("list pods of node %s: %w", o.Node, err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if p.Namespace == o.ZtunnelNamespace && p.Labels[LabelZtunnelApp] == "ztunnel" {
			rev := p.Annotations[LabelRevision]
			if rev == "" {
				rev = p.Labels[LabelRevision]
			}
			v.Ztunnels = append(v.Ztunnels, ZtunnelPod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Revision: rev})
			continue
		}
		// A terminating pod is leaving: istio-cni removes it from ztunnel when its sandbox
		// goes, before the API forgets it, so its listeners close while it is listed.
		if !ambientNS[p.Namespace] || p.Spec.HostNetwork || p.Labels[LabelDataplaneMode] == "none" || p.DeletionTimestamp != nil {
			continue
		}
		ap := AmbientPod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
		for _, ip := range p.Status.PodIPs {
			ap.IPs = append(ap.IPs, ip.IP)
		}
		if len(ap.IPs) == 0 && p.Status.PodIP != "" {
			ap.IPs = []string{p.Status.PodIP}
		}
		v.Ambient = append(v.Ambient, ap)
	}
	sort.Slice(v.Ztunnels, func(i, j int) bool { return v.Ztunnels[i].Name < v.Ztunnels[j].Name })
	sort.Slice(v.Ambient, func(i, j int) bool { return v.Ambient[i].Key() < v.Ambient[j].Key() })
	return v, nil
}
