package orchestrator

import (
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// TestSlimPodAnswersAsTheFullPod: every question the orchestrator asks of a cached
// pod gets the same answer from the slim copy as from the pod the API server sent,
// while what it does not read is dropped.
func TestSlimPodAnswersAsTheFullPod(t *testing.T) {
	now := metav1.NewTime(time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))
	ctrl := true
	full := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: "reviews-1", Namespace: "bookinfo", UID: "u1", ResourceVersion: "42", CreationTimestamp: now,
				Labels: map[string]string{"app": "reviews", mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient},
				Annotations: map[string]string{
					mesh.RevisionKey:                                   "1-19-0",
					mesh.AnnotationSidecarStatus:                       `{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"1-19-0"}`,
					mesh.AnnotationInjectTemplates:                     "gateway",
					ztv1.AnnotationRestart:                             "2026-12-02T12:00:00Z",
					"kubectl.kubernetes.io/last-applied-configuration": `{"a huge":"document"}`,
				},
				OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "reviews-abc", UID: "rs", Controller: &ctrl}},
			},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "reviews", Image: "reviews:v2"}}},
			Status: corev1.PodStatus{
				Phase: corev1.PodRunning, PodIP: "10.0.0.7",
				Conditions: []corev1.PodCondition{
					{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
					{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now, Reason: "r", Message: "m"},
					{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				},
			},
		}
		if mut != nil {
			mut(p)
		}
		return p
	}
	pods := map[string]*corev1.Pod{
		"running":   full(nil),
		"not ready": full(func(p *corev1.Pod) { p.Status.Conditions[1].Status = corev1.ConditionFalse }),
		"no ready":  full(func(p *corev1.Pod) { p.Status.Conditions = p.Status.Conditions[:1] }),
		"deleting":  full(func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
		"finished":  full(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		"host net":  full(func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		"no proxy":  full(func(p *corev1.Pod) { delete(p.Annotations, mesh.AnnotationSidecarStatus) }),
		"label rev": full(func(p *corev1.Pod) { delete(p.Annotations, mesh.RevisionKey); p.Labels[mesh.RevisionKey] = "1-19-0" }),
		"no annots": full(func(p *corev1.Pod) { p.Annotations = nil }),
		"ztunnel": full(func(p *corev1.Pod) {
			p.Labels = map[string]string{"app": "ztunnel"}
			p.OwnerReferences[0].Kind = "DaemonSet"
		}),
		"unscheduled": full(func(p *corev1.Pod) { p.Spec.NodeName = "" }),
	}
	for name, p := range pods {
		t.Run(name, func(t *testing.T) {
			obj, err := slimPod(p.DeepCopy())
			if err != nil {
				t.Fatal(err)
			}
			s := obj.(*corev1.Pod)
			same := func(what string, a, b any) {
				t.Helper()
				if a != b {
					t.Errorf("%s: full pod %v, slim pod %v", what, a, b)
				}
			}
			same("mesh.Ready", mesh.Ready(p), mesh.Ready(s))
			same("podReadyStatus", podReadyStatus(p), podReadyStatus(s))
			same("mesh.Serving", mesh.Serving(p), mesh.Serving(s))
			same("mesh.ProxyRevision", mesh.ProxyRevision(p), mesh.ProxyRevision(s))
			same("mesh.DescribeProxy", mesh.DescribeProxy(p), mesh.DescribeProxy(s))
			same("mesh.Revision", mesh.Revision(p), mesh.Revision(s))
			same("mesh.GatewayPod", mesh.GatewayPod(p), mesh.GatewayPod(s))
			same("mesh.DaemonSetPod", mesh.DaemonSetPod(p), mesh.DaemonSetPod(s))
			same("mesh.Enrolled", mesh.Enrolled(nil, p), mesh.Enrolled(nil, s))
			same("mesh.IsZtunnelPod", mesh.IsZtunnelPod("bookinfo", p), mesh.IsZtunnelPod("bookinfo", s))
			same("mesh.Finished", mesh.Finished(p), mesh.Finished(s))
			same("pod IP", p.Status.PodIP, s.Status.PodIP)
			same("hostNetwork", p.Spec.HostNetwork, s.Spec.HostNetwork)
			same("created", p.CreationTimestamp, s.CreationTimestamp)
			same("deleting", p.DeletionTimestamp == nil, s.DeletionTimestamp == nil)
			same("node index", len(drive.IndexPodNode(p)), len(drive.IndexPodNode(s)))
			same("ztunnel index", len(drive.IndexZtunnelNode(p)), len(drive.IndexZtunnelNode(s)))
			if podChanged(p, s) {
				t.Error("podChanged sees a difference between the pod and its slim copy")
			}
			if len(s.Spec.Containers) != 0 || s.Annotations["kubectl.kubernetes.io/last-applied-configuration"] != "" || len(s.Status.Conditions) > 1 {
				t.Errorf("slim pod keeps what the orchestrator never reads: %+v", s)
			}
		})
	}
}
