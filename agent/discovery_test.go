package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/ztcanary/ztcanary/internal/mesh"
)

func testPod(ns, name, node string, labels, ann map[string]string, mut ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: labels, Annotations: ann},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0." + name[len(name)-1:]},
	}
	for _, m := range mut {
		m(p)
	}
	return p
}

// discoverOn runs Discover on node w1 of a fake API holding objs.
func discoverOn(t *testing.T, objs ...client.Object) NodeView {
	t.Helper()
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
		WithIndex(&corev1.Pod{}, "spec.nodeName", func(o client.Object) []string { return []string{o.(*corev1.Pod).Spec.NodeName} }).
		Build()
	v, err := Discover(context.Background(), c, DiscoveryOptions{Node: "w1", ZtunnelNamespace: "istio-system", NodeLabel: LabelRevision})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func ambientKeys(v NodeView) string {
	var as []string
	for _, a := range v.Ambient {
		as = append(as, a.Key()+"="+strings.Join(a.IPs, ","))
	}
	return strings.Join(as, " ")
}

func TestDiscover(t *testing.T) {
	objs := []client.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1", Labels: map[string]string{LabelRevision: "1-18-0"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		testPod("istio-system", "zt-annotated-1", "w1", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-0"}),
		testPod("istio-system", "zt-labelled-2", "w1", map[string]string{"app": "ztunnel", LabelRevision: "1-18-1"}, nil),
		testPod("istio-system", "zt-other-node-3", "w2", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-0"}),
		testPod("istio-system", "istiod-4", "w1", map[string]string{"app": "istiod"}, nil),
		testPod("mesh", "app-5", "w1", nil, nil),
		testPod("mesh", "other-node-6", "w2", nil, nil),
		testPod("mesh", "opted-out-7", "w1", map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeNone}, nil),
		testPod("mesh", "host-network-8", "w1", nil, nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		testPod("mesh", "finished-9", "w1", nil, nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		testPod("mesh", "dual-stack-1", "w1", nil, nil, func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}
		}),
		testPod("plain", "not-ambient-2", "w1", nil, nil),
		testPod("plain", "labelled-ambient-6", "w1", map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}, nil),
		testPod("mesh", "sidecar-4", "w1", nil, map[string]string{mesh.AnnotationSidecarStatus: "{}"}),
		testPod("istio-system", "zt-finished-5", "w1", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-0"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
		testPod("istio-system", "zt-terminating-6", "w1", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-1"}, func(p *corev1.Pod) {
			p.DeletionTimestamp, p.Finalizers = &metav1.Time{Time: time.Now()}, []string{"test"}
		}),
		testPod("mesh", "terminating-3", "w1", nil, nil, func(p *corev1.Pod) {
			p.DeletionTimestamp, p.Finalizers = &metav1.Time{Time: time.Now()}, []string{"test"}
		}),
	}
	v := discoverOn(t, objs...)
	if v.NodeRevision != "1-18-0" {
		t.Errorf("node revision %q", v.NodeRevision)
	}
	var zs []string
	for _, z := range v.Ztunnels {
		zs = append(zs, z.Name+"="+z.Revision+"/"+z.UID)
	}
	if got, want := strings.Join(zs, " "), "zt-annotated-1=1-18-0/uid-zt-annotated-1 zt-labelled-2=1-18-1/uid-zt-labelled-2 zt-terminating-6=1-18-1/uid-zt-terminating-6"; got != want {
		t.Errorf("ztunnels %s, want %s", got, want)
	}
	if got, want := ambientKeys(v), "mesh/app-5=10.0.0.5 mesh/dual-stack-1=10.0.0.1,fd00::1 plain/labelled-ambient-6=10.0.0.6"; got != want {
		t.Errorf("ambient pods %s, want %s", got, want)
	}
}

// TestDiscoverAmbientPodOfNamespaceNotEnrolled: a pod labelled
// istio.io/dataplane-mode=ambient is captured whatever its namespace (istio-cni's rule,
// mesh.Ambient), so the agent reports it even when no namespace is enrolled, as the
// orchestrator expects it to.
func TestDiscoverAmbientPodOfNamespaceNotEnrolled(t *testing.T) {
	ambient := map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}
	v := discoverOn(t,
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1", Labels: map[string]string{LabelRevision: "1-18-0"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		testPod("plain", "labelled-1", "w1", ambient, nil),
		testPod("plain", "unlabelled-2", "w1", nil, nil),
		testPod("plain", "labelled-host-network-3", "w1", ambient, nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		testPod("plain", "labelled-sidecar-4", "w1", ambient, map[string]string{mesh.AnnotationSidecarStatus: "{}"}),
		testPod("plain", "labelled-other-node-5", "w2", ambient, nil),
		testPod("kube-system", "labelled-excluded-6", "w1", ambient, nil),
	)
	if got, want := ambientKeys(v), "plain/labelled-1=10.0.0.1"; got != want {
		t.Errorf("ambient pods %s, want %s", got, want)
	}
}
