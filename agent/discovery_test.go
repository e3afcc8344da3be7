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
)

func TestDiscover(t *testing.T) {
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	pod := func(ns, name, node string, labels, ann map[string]string, mut ...func(*corev1.Pod)) *corev1.Pod {
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
	objs := []client.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1", Labels: map[string]string{LabelRevision: "1-18-0"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{LabelDataplaneMode: "ambient"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		pod("istio-system", "zt-annotated-1", "w1", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-0"}),
		pod("istio-system", "zt-labelled-2", "w1", map[string]string{"app": "ztunnel", LabelRevision: "1-18-1"}, nil),
		pod("istio-system", "zt-other-node-3", "w2", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-0"}),
		pod("istio-system", "istiod-4", "w1", map[string]string{"app": "istiod"}, nil),
		pod("mesh", "app-5", "w1", nil, nil),
		pod("mesh", "other-node-6", "w2", nil, nil),
		pod("mesh", "opted-out-7", "w1", map[string]string{LabelDataplaneMode: "none"}, nil),
		pod("mesh", "host-network-8", "w1", nil, nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		pod("mesh", "finished-9", "w1", nil, nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		pod("mesh", "dual-stack-1", "w1", nil, nil, func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}
		}),
		pod("plain", "not-ambient-2", "w1", nil, nil),
		pod("mesh", "terminating-3", "w1", nil, nil, func(p *corev1.Pod) {
			p.DeletionTimestamp, p.Finalizers = &metav1.Time{Time: time.Now()}, []string{"test"}
		}),
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
		WithIndex(&corev1.Pod{}, "spec.nodeName", func(o client.Object) []string { return []string{o.(*corev1.Pod).Spec.NodeName} }).
		Build()
	v, err := Discover(context.Background(), c, DiscoveryOptions{Node: "w1", ZtunnelNamespace: "istio-system", NodeLabel: LabelRevision})
	if err != nil {
		t.Fatal(err)
	}
	if v.NodeRevision != "1-18-0" {
		t.Errorf("node revision %q", v.NodeRevision)
	}
	var zs []string
	for _, z := range v.Ztunnels {
		zs = append(zs, z.Name+"="+z.Revision+"/"+z.UID)
	}
	if got, want := strings.Join(zs, " "), "zt-annotated-1=1-18-0/uid-zt-annotated-1 zt-labelled-2=1-18-1/uid-zt-labelled-2"; got != want {
		t.Errorf("ztunnels %s, want %s", got, want)
	}
	var as []string
	for _, a := range v.Ambient {
		as = append(as, a.Key()+"="+strings.Join(a.IPs, ","))
	}
	if got, want := strings.Join(as, " "), "mesh/app-5=10.0.0.5 mesh/dual-stack-1=10.0.0.1,fd00::1"; got != want {
		t.Errorf("ambient pods %s, want %s", got, want)
	}
}
