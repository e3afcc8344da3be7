package mesh

import (
	"encoding/json"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Revision returns the revision an object belongs to: its istio.io/rev annotation, else
// its istio.io/rev label, else "". A pod template is an object too (&ds.Spec.Template).
func Revision(obj metav1.Object) string {
	if v := obj.GetAnnotations()[RevisionKey]; v != "" {
		return v
	}
	return obj.GetLabels()[RevisionKey]
}

// DaemonSetRevision returns the revision of a ztunnel DaemonSet: its own (Revision), else
// its pod template's.
func DaemonSetRevision(ds *appsv1.DaemonSet) string {
	if rev := Revision(ds); rev != "" {
		return rev
	}
	return Revision(&ds.Spec.Template)
}

// IsZtunnel reports whether labels are a ztunnel pod's (app=ztunnel, which Istio's chart
// gives every revision's pods alike).
func IsZtunnel(labels map[string]string) bool {
	return labels[LabelApp] == AppZtunnel
}

// IsZtunnelPod reports whether a pod is a ztunnel of the mesh whose ztunnels run in
// systemNamespace (istio-cni's IsZtunnelPod).
func IsZtunnelPod(systemNamespace string, p *corev1.Pod) bool {
	return p.Namespace == systemNamespace && IsZtunnel(p.Labels)
}

// IsZtunnelDaemonSet reports whether a DaemonSet runs ztunnel pods.
func IsZtunnelDaemonSet(ds *appsv1.DaemonSet) bool {
	return IsZtunnel(ds.Spec.Template.Labels)
}

// NamespaceAmbient reports whether namespace labels enrol the namespace's pods in the
// ambient data plane (istio.io/dataplane-mode=ambient).
func NamespaceAmbient(nsLabels map[string]string) bool {
	return nsLabels[LabelDataplaneMode] == DataplaneModeAmbient
}

// Enrolled reports whether istio-cni redirects the pod's traffic to its node's ztunnel,
// as Istio decides it (cni/pkg/util: the chart's default enablementSelectors, then
// excludeNamespaces), given the labels of the pod's namespace:
//
//   - a pod labelled istio.io/dataplane-mode=ambient is enrolled, whatever its
//     namespace;
//   - a pod of a namespace labelled istio.io/dataplane-mode=ambient is enrolled unless it
//     is labelled istio.io/dataplane-mode=none;
//   - never a pod on the host network (its rules would go into the node's namespace);
//   - never a pod with a sidecar (the sidecar.istio.io/status annotation);
//   - never a pod of kube-system (CNIExcludedNamespace).
//
// Only the namespace's istio.io/dataplane-mode label is read: a caller may pass the labels
// of the ambient namespaces only (listed with that label) and nil for the others. It says
// nothing of the pod's lifecycle; see Ambient.
func Enrolled(nsLabels map[string]string, p *corev1.Pod) bool {
	if p.Spec.HostNetwork || HasSidecar(p) || p.Namespace == CNIExcludedNamespace {
		return false
	}
	switch p.Labels[LabelDataplaneMode] {
	case DataplaneModeAmbient:
		return true
	case DataplaneModeNone:
		return false
	}
	return NamespaceAmbient(nsLabels)
}

// Ambient reports whether a pod is an ambient pod of its node, the pods whose capture
// ztcanary verifies and waits for: Enrolled, and neither finished (Succeeded or Failed:
// istio-cni removes it from the mesh) nor terminating (it is leaving; istio-cni removes it
// from ztunnel when its sandbox goes, before the API forgets it, so its listeners may
// close while it is still listed). A pod not yet running, or without an IP yet, is
// ambient. ztunnel pods are not ambient (Istio's chart labels them
// istio.io/dataplane-mode=none), but callers tell them apart first (IsZtunnelPod).
//
// nsLabels are the labels of the pod's namespace, as for Enrolled.
func Ambient(nsLabels map[string]string, p *corev1.Pod) bool {
	return Enrolled(nsLabels, p) && !Finished(p) && !Terminating(p)
}

// HasSidecar reports whether the injector gave the pod a sidecar: it carries the
// injector's status annotation, whatever its content (istio-cni's test).
func HasSidecar(p *corev1.Pod) bool {
	_, ok := p.Annotations[AnnotationSidecarStatus]
	return ok
}

// injectorStatus is the part of sidecar.istio.io/status that ztcanary reads.
type injectorStatus struct {
	InitContainers []string `json:"initContainers"`
	Containers     []string `json:"containers"`
	Revision       string   `json:"revision"`
}

// ProxyRevision returns the revision of the injector that gave the pod its proxy, "" when
// the pod has no injected proxy. The status annotation and the pod's revision (Revision:
// the istio.io/rev the injector sets, an annotation in Istio's current injection template,
// a label in older ones) must agree, and the proxy container must be among the injected
// ones (as a container, or as a native sidecar init container).
func ProxyRevision(p *corev1.Pod) string {
	raw, ok := p.Annotations[AnnotationSidecarStatus]
	if !ok {
		return ""
	}
	var st injectorStatus
	if err := json.Unmarshal([]byte(raw), &st); err != nil || st.Revision == "" {
		return ""
	}
	if !slices.Contains(st.Containers, ProxyContainer) && !slices.Contains(st.InitContainers, ProxyContainer) {
		return ""
	}
	if Revision(p) != st.Revision {
		return ""
	}
	return st.Revision
}

// DescribeProxy says, for a message, what proxy a pod carries: "the <rev> proxy", the
// injector status and revision that do not make one, or "no injected proxy".
func DescribeProxy(p *corev1.Pod) string {
	if rev := ProxyRevision(p); rev != "" {
		return "the " + rev + " proxy"
	}
	if raw, ok := p.Annotations[AnnotationSidecarStatus]; ok {
		return fmt.Sprintf("an injector status %s with %s=%q", raw, RevisionKey, Revision(p))
	}
	return "no injected proxy"
}

// Ready reports whether the pod's Ready condition is True.
func Ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Serving reports whether a pod serves now: Running, Ready and not terminating.
func Serving(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && !Terminating(p) && Ready(p)
}

// Finished reports whether the pod's containers have all stopped for good (phase
// Succeeded or Failed).
func Finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// Terminating reports whether the pod is being deleted.
func Terminating(p *corev1.Pod) bool {
	return p.DeletionTimestamp != nil
}

// DaemonSetPod reports whether a DaemonSet controls the pod (a drain cannot evict it: the
// DaemonSet would run it again on the node).
func DaemonSetPod(p *corev1.Pod) bool {
	owner := metav1.GetControllerOf(p)
	return owner != nil && owner.Kind == "DaemonSet"
}

// PodIPs returns the pod's IPs: status.podIPs, else status.podIP, else none (a pod gets
// its IPs only once its sandbox is up).
func PodIPs(p *corev1.Pod) []string {
	if len(p.Status.PodIPs) > 0 {
		ips := make([]string, 0, len(p.Status.PodIPs))
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return ips
	}
	if p.Status.PodIP != "" {
		return []string{p.Status.PodIP}
	}
	return nil
}
