package orchestrator

import (
	"context"
	"fmt"
	"strings"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// startRollback records why the upgrade goes back, or, without automatic rollback,
// stops it Failed where it is.
func (r *Reconciler) startRollback(u *ztv1.RevisionUpgrade, reason, msg string) {
	if u.Spec.Rollback.Automatic != nil && !*u.Spec.Rollback.Automatic {
		r.setPhase(u, ztv1.PhaseFailed)
		setCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, reason, msg)
		u.Status.Message = "failed (automatic rollback disabled): " + msg
		r.Recorder.Event(u, eventWarning, reason, msg)
		return
	}
	r.setPhase(u, ztv1.PhaseRollingBack)
	r.setStage(u, StageRestoreRoute)
	setCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, reason, msg)
	setCondition(u, ztv1.ConditionRolledBack, metav1.ConditionFalse, reasonRollback, "rolling back: "+msg)
	u.Status.Message = "rolling back: " + msg
	r.Recorder.Event(u, eventWarning, reason, msg)
	rollbacksTotal.WithLabelValues(reason).Inc()
}

// rollback undoes the upgrade in order: the route first (so no traffic goes to the
// canary while nodes move back), then every node to its original revision with the
// same strategy, then the pinning, then the canary pods left on restored nodes.
func (r *Reconciler) rollback(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	switch u.Status.StepStage {
	case StageRestoreRoute:
		if err := r.restoreRoute(ctx, u); err != nil {
			return ctrl.Result{}, fmt.Errorf("restore route: %w", err)
		}
		u.Status.TrafficWeight, u.Status.TrafficStep = 0, nil
		r.setStage(u, StageRollback)
		return ctrl.Result{}, nil

	case StageRollback:
		var moving []string
		for _, n := range u.Status.Nodes {
			if n.Phase != ztv1.NodeStable && n.Phase != ztv1.NodeRestored {
				moving = append(moving, n.Name)
			}
		}
		nodes, err := r.listNodes(ctx)
		if err != nil {
			return ctrl.Result{}, err
		}
		w, err := r.readWorld(ctx, u, nodes, moving)
		if err != nil {
			return ctrl.Result{}, err
		}
		var waiting []string
		var drive []*ztv1.NodeStatus
		for j := range u.Status.Nodes {
			n := &u.Status.Nodes[j]
			if n.Phase == ztv1.NodeStable || n.Phase == ztv1.NodeRestored {
				continue
			}
			if _, ok := w.nodes[n.Name]; !ok {
				n.Phase = ztv1.NodeRestored // gone from the cluster: nothing to restore
				continue
			}
			drive = append(drive, n)
		}
		results, err := r.driveNodes(ctx, u, w, drive, func(n *ztv1.NodeStatus) string { return n.OriginalRevision })
		if err != nil {
			return ctrl.Result{}, err
		}
		for k, n := range drive {
			res := results[k]
			if res.done {
				n.Phase, n.Verified = ztv1.NodeRestored, false
				log.Info("node restored", zap.String("node", n.Name), zap.String("revision", n.OriginalRevision))
				continue
			}
			waiting = append(waiting, n.Name+": "+res.waiting)
		}
		u.Status.CanaryNodes = int32(countCanary(u))
		if len(waiting) > 0 {
			u.Status.Message = "rolling back; waiting for " + summarize(waiting)
			return ctrl.Result{RequeueAfter: defaultRequeue}, nil
		}
		r.setStage(u, StageUnpinning)
		return ctrl.Result{}, nil

	case StageUnpinning:
		if err := r.restorePins(ctx, u); err != nil {
			return ctrl.Result{}, err
		}
		r.setStage(u, StageEvicting)
		return ctrl.Result{}, nil

	case StageEvicting:
		pods, err := r.canaryPodsOnRestoredNodes(ctx, u)
		if err != nil {
			return ctrl.Result{}, err
		}
		if len(pods) > 0 {
			u.Status.Message = fmt.Sprintf("rolling back; evicting %d canary pods from restored nodes", len(pods))
			for _, p := range pods {
				log.Info("evicting canary pod", zap.String("pod", p.Namespace+"/"+p.Name), zap.String("node", p.Spec.NodeName),
					zap.Time("created", p.CreationTimestamp.Time), zap.Bool("terminating", p.DeletionTimestamp != nil))
			}
			return ctrl.Result{RequeueAfter: defaultRequeue}, r.evict(ctx, pods)
		}
		cond := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack)
		why := "rolled back"
		if cond != nil {
			why = "rolled back: " + strings.TrimPrefix(cond.Message, "rolling back: ")
		}
		setCondition(u, ztv1.ConditionRolledBack, metav1.ConditionTrue, "RolledBack", why)
		r.setPhase(u, ztv1.PhaseRolledBack)
		r.setStage(u, "Done")
		u.Status.Message = why
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, fmt.Errorf("unknown rollback stage %q", u.Status.StepStage)
}

// canaryPodsOnRestoredNodes lists pods of the to revision's workload namespaces that
// still run on nodes rolled back to another revision and were created before the
// Evicting stage began (status.stepStartedAt), that is under the upgrade's pinning.
func (r *Reconciler) canaryPodsOnRestoredNodes(ctx context.Context, u *ztv1.RevisionUpgrade) ([]*corev1.Pod, error) {
	restored := map[string]bool{}
	for _, n := range u.Status.Nodes {
		if n.Phase == ztv1.NodeRestored && n.OriginalRevision != u.Spec.To {
			restored[n.Name] = true
		}
	}
	var out []*corev1.Pod
	for _, wl := range u.Spec.Workloads {
		if wl.Revision != u.Spec.To {
			continue
		}
		var pods corev1.PodList
		if err := r.Client.List(ctx, &pods, client.InNamespace(wl.Namespace)); err != nil {
			return nil, fmt.Errorf("list canary pods in %s: %w", wl.Namespace, err)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if !restored[p.Spec.NodeName] || p.DeletionTimestamp != nil || podFinished(p) {
				continue
			}
			// A pod created after the pins were restored was placed by the workload's
			// own (restored) scheduling, which may well allow a restored node: evicting
			// it would only bring it back, for ever. Only pods placed under the
			// upgrade's pinning are evicted (same-second ones too: at worst one more
			// eviction, whose replacement is then left alone).
			if u.Status.StepStartedAt != nil && p.CreationTimestamp.After(u.Status.StepStartedAt.Time) {
				continue
			}
			out = append(out, p)
		}
	}
	return out, nil
}
