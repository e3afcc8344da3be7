package orchestrator

import (
	"context"
	"maps"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// defaultCoalesce is how long a change of a watched object may wait before the
// upgrades it concerns are reconciled, so that a burst of events (a wave's ztunnel
// pods starting on a hundred nodes) costs one pass, not hundreds.
const defaultCoalesce = 500 * time.Millisecond

// Why the watches filter and coalesce: a pass reads the whole wave, so it does not
// matter which event woke it, only that one did after the last relevant change.
// On a 1000-node cluster, pods and nodes change many times a second (kubelet or kwok
// heartbeats, status updates of pods that play no part in the upgrade); before the
// filters, each of them started a full pass.

// coalescedUpgrades enqueues every upgrade still in progress, at most once per
// coalescing window: the work queue keeps the earliest due time of an item, so
// events arriving within the window merge into one reconcile.
func (r *Reconciler) coalescedUpgrades() handler.EventHandler {
	enqueue := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		for _, req := range r.activeUpgrades(ctx, nil) {
			q.AddAfter(req, r.coalesce())
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, _ event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q)
		},
		UpdateFunc: func(ctx context.Context, _ event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q)
		},
		DeleteFunc: func(ctx context.Context, _ event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q)
		},
		GenericFunc: func(ctx context.Context, _ event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q)
		},
	}
}

func (r *Reconciler) coalesce() time.Duration {
	if r.Coalesce > 0 {
		return r.Coalesce
	}
	return defaultCoalesce
}

// updateOnly filters update events with changed; creations and deletions always pass.
func updateOnly[T client.Object](changed func(old, new T) bool) predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(T)
		n, ok2 := e.ObjectNew.(T)
		return !ok1 || !ok2 || changed(o, n)
	}}
}

// nodeChanged: what a pass reads of a node is its labels (revision, handoff),
// whether it is cordoned, and whether it is Ready. Heartbeats change none of these.
func nodeChanged(o, n *corev1.Node) bool {
	return !maps.Equal(o.Labels, n.Labels) || o.Spec.Unschedulable != n.Spec.Unschedulable ||
		nodeReadyStatus(o) != nodeReadyStatus(n)
}

func nodeReadyStatus(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}

// podChanged: a pass reads where a pod runs, its labels and owner (ztunnel or
// ambient workload), whether it is going or gone, and whether it is Ready.
func podChanged(o, n *corev1.Pod) bool {
	return o.Spec.NodeName != n.Spec.NodeName || o.Status.Phase != n.Status.Phase ||
		(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) ||
		podReadyStatus(o) != podReadyStatus(n) || !maps.Equal(o.Labels, n.Labels) ||
		!equality.Semantic.DeepEqual(o.OwnerReferences, n.OwnerReferences)
}

func podReadyStatus(p *corev1.Pod) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status
		}
	}
	return ""
}

// workloadChanged: a pass reads a workload's spec (generation), labels, annotations
// (the revision of a ztunnel DaemonSet) and status (replicas ready).
func workloadChanged[T client.Object](status func(T) any) func(o, n T) bool {
	return func(o, n T) bool {
		return o.GetGeneration() != n.GetGeneration() || !maps.Equal(o.GetLabels(), n.GetLabels()) ||
			!maps.Equal(o.GetAnnotations(), n.GetAnnotations()) || !equality.Semantic.DeepEqual(status(o), status(n))
	}
}

var (
	nodeEvents        = updateOnly(nodeChanged)
	podEvents         = updateOnly(podChanged)
	daemonSetEvents   = updateOnly(workloadChanged(func(d *appsv1.DaemonSet) any { return d.Status }))
	deploymentEvents  = updateOnly(workloadChanged(func(d *appsv1.Deployment) any { return d.Status }))
	statefulSetEvents = updateOnly(workloadChanged(func(s *appsv1.StatefulSet) any { return s.Status }))
)
