package ambient

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func TestUnreportedPods(t *testing.T) {
	pod := func(name string, mutate ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo-1-18-1", Name: name},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7"},
		}
		for _, m := range mutate {
			m(p)
		}
		return p
	}
	report := func(names ...string) *ztv1.NodeCapture {
		nc := &ztv1.NodeCapture{}
		for _, n := range names {
			nc.Status.Pods = append(nc.Status.Pods, ztv1.PodCapture{Namespace: "bookinfo-1-18-1", Name: n})
		}
		return nc
	}
	now := metav1.Now()
	cases := []struct {
		name   string
		report *ztv1.NodeCapture
		placed []*corev1.Pod
		want   []string
	}{
		{"a report covering every placed pod passes", report("a", "b"), []*corev1.Pod{pod("a"), pod("b")}, nil},
		{"an empty report made before the canary pods landed misses them", report(), []*corev1.Pod{pod("b"), pod("a")},
			[]string{"bookinfo-1-18-1/a", "bookinfo-1-18-1/b"}},
		{"a pod of the same name in another namespace is not covered", report("a"),
			[]*corev1.Pod{pod("a", func(p *corev1.Pod) { p.Namespace = "other" })}, []string{"other/a"}},
		{"a pending pod is not required yet", report(), []*corev1.Pod{pod("a", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending })}, nil},
		{"a pod without an IP is not required yet", report(), []*corev1.Pod{pod("a", func(p *corev1.Pod) { p.Status.PodIP = "" })}, nil},
		{"a terminating pod is not required", report(), []*corev1.Pod{pod("a", func(p *corev1.Pod) { p.DeletionTimestamp = &now })}, nil},
		{"a host-network pod is not required", report(), []*corev1.Pod{pod("a", func(p *corev1.Pod) { p.Spec.HostNetwork = true })}, nil},
		{"extra pods in the report do no harm", report("a", "gone"), []*corev1.Pod{pod("a")}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := unreportedPods(tc.report, tc.placed); !slices.Equal(got, tc.want) {
				t.Errorf("unreportedPods = %v, want %v", got, tc.want)
			}
		})
	}
}
