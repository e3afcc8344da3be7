package orchestrator

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

func labelledNode() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "w1", ResourceVersion: "1", Labels: map[string]string{"istio.io/rev": "1-18-0"}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Unix(1, 0)},
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse},
		}},
	}
}

func runningPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "ztunnel-abc", Namespace: "istio-system", ResourceVersion: "1", Labels: map[string]string{"app": "ztunnel"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "DaemonSet", Name: "ztunnel-1-18-0", UID: "ds1", Controller: ptr.To(true)}},
		},
		Spec: corev1.PodSpec{NodeName: "w1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
		}},
	}
}

func TestWatchFiltersPassOnlyWhatAPassReads(t *testing.T) {
	tests := []struct {
		name   string
		filter predicate.Predicate
		old    client.Object
		change func(o client.Object)
		wake   bool
	}{
		{"a node heartbeat does not wake a pass", nodeEvents, labelledNode(), func(o client.Object) {
			o.(*corev1.Node).Status.Conditions[0].LastHeartbeatTime = metav1.Unix(2, 0)
		}, false},
		{"another node condition does not wake a pass", nodeEvents, labelledNode(), func(o client.Object) {
			o.(*corev1.Node).Status.Conditions[1].Status = corev1.ConditionTrue
		}, false},
		{"a node relabelled wakes a pass", nodeEvents, labelledNode(), func(o client.Object) {
			o.(*corev1.Node).Labels["ztcanary.io/handoff"] = "1-18-1"
		}, true},
		{"a node cordoned wakes a pass", nodeEvents, labelledNode(), func(o client.Object) {
			o.(*corev1.Node).Spec.Unschedulable = true
		}, true},
		{"a node going NotReady wakes a pass", nodeEvents, labelledNode(), func(o client.Object) {
			o.(*corev1.Node).Status.Conditions[0].Status = corev1.ConditionUnknown
		}, true},
		{"a pod's other condition does not wake a pass", podEvents, runningPod(), func(o client.Object) {
			o.(*corev1.Pod).Status.Conditions[1].Status = corev1.ConditionFalse
		}, false},
		{"a pod turning Ready wakes a pass", podEvents, runningPod(), func(o client.Object) {
			o.(*corev1.Pod).Status.Conditions[0].Status = corev1.ConditionFalse
		}, true},
		{"a pod terminating wakes a pass", podEvents, runningPod(), func(o client.Object) {
			o.(*corev1.Pod).DeletionTimestamp = &metav1.Time{Time: time.Unix(3, 0)}
		}, true},
		{"a pod scheduled wakes a pass", podEvents, runningPod(), func(o client.Object) {
			o.(*corev1.Pod).Spec.NodeName = "w2"
		}, true},
		{"a pod finishing wakes a pass", podEvents, runningPod(), func(o client.Object) {
			o.(*corev1.Pod).Status.Phase = corev1.PodSucceeded
		}, true},
		{"a DaemonSet's status wakes a pass", daemonSetEvents, &appsv1.DaemonSet{}, func(o client.Object) {
			o.(*appsv1.DaemonSet).Status.NumberReady = 3
		}, true},
		{"a Deployment's new spec wakes a pass", deploymentEvents, &appsv1.Deployment{}, func(o client.Object) {
			o.SetGeneration(2)
		}, true},
		{"a Deployment touched only in its resourceVersion does not wake a pass", deploymentEvents, &appsv1.Deployment{}, func(o client.Object) {
			o.SetResourceVersion("7")
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.old.DeepCopyObject().(client.Object)
			n.SetResourceVersion("2")
			tt.change(n)
			if got := tt.filter.Update(event.UpdateEvent{ObjectOld: tt.old, ObjectNew: n}); got != tt.wake {
				t.Fatalf("update wakes a pass: %v, want %v", got, tt.wake)
			}
			if !tt.filter.Create(event.CreateEvent{Object: n}) || !tt.filter.Delete(event.DeleteEvent{Object: n}) {
				t.Fatal("creations and deletions must always wake a pass")
			}
		})
	}
}
