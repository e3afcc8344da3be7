package orchestrator_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func watchedPod(ns, name, node, rev string, ready bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if ns == istioNS {
		p.Labels = map[string]string{"app": "ztunnel"}
		p.Annotations = map[string]string{revKey: rev}
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}
	return p
}

// The watcher judges each event from its per-node counts: these cases replay the
// events of a node's ztunnel swap.
func TestInvariantWatcher(t *testing.T) {
	type ev struct {
		pod     *corev1.Pod
		deleted bool
	}
	const node = "w1"
	oldZ := watchedPod(istioNS, "zt-old", node, fromRev, true)
	newZ := watchedPod(istioNS, "zt-new", node, toRev, true)
	newZStarting := watchedPod(istioNS, "zt-new", node, toRev, false)
	app := watchedPod(fromApps, "app", node, "", true)
	cases := []struct {
		name     string
		strategy ztv1.NodeStrategy
		events   []ev
		want     string // a violation containing this; "" for none
	}{
		{"a handoff that starts the new ztunnel first holds", ztv1.NodeStrategyHandoff,
			[]ev{{oldZ, false}, {app, false}, {newZStarting, false}, {newZ, false}, {oldZ, true}}, ""},
		{"a handoff that removes the old ztunnel before the new is Ready breaks", ztv1.NodeStrategyHandoff,
			[]ev{{oldZ, false}, {app, false}, {newZStarting, false}, {oldZ, true}, {newZ, false}}, "no Ready ztunnel"},
		{"a swap on an empty node holds with Drain", ztv1.NodeStrategyDrain,
			[]ev{{oldZ, false}, {app, false}, {app, true}, {oldZ, true}, {newZ, false}}, ""},
		{"two ztunnels under ambient pods break Drain", ztv1.NodeStrategyDrain,
			[]ev{{oldZ, false}, {app, false}, {newZStarting, false}}, "swapped under"},
		{"a pod on a node that is not a worker is not judged", ztv1.NodeStrategyHandoff,
			[]ev{{watchedPod(fromApps, "app", "control-plane", "", true), false}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWatcher(tc.strategy, []string{node})
			w.startChecking()
			for _, e := range tc.events {
				var o any = e.pod
				if e.deleted {
					o = cache.DeletedFinalStateUnknown{Key: e.pod.Namespace + "/" + e.pod.Name, Obj: e.pod}
				}
				w.pod(o, e.deleted, false)
			}
			err := w.Err()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("violation on a correct run: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want a violation saying %q", err, tc.want)
			}
			if w.Events() != len(tc.events) {
				t.Errorf("%d events counted, want %d", w.Events(), len(tc.events))
			}
		})
	}
}

// Before its initial list is counted, the watcher judges nothing: the list comes in
// name order, a node's ambient pods before its ztunnel.
func TestInvariantWatcherWaitsForItsInitialList(t *testing.T) {
	w := newWatcher(ztv1.NodeStrategyHandoff, []string{"w1"})
	w.pod(watchedPod(fromApps, "app", "w1", "", true), false, true)
	w.pod(watchedPod(istioNS, "zt", "w1", fromRev, true), false, true)
	w.startChecking()
	if err := w.Err(); err != nil {
		t.Fatalf("the initial list was judged half-way: %v", err)
	}
}
