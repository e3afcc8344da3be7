package ambient

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// RollbackStage is the first stage of a rollback: the route.
func (d *Driver) RollbackStage() ztv1.Stage { return ztv1.StageRestoringRoute }

// fail starts the rollback (or stops the upgrade Failed without automatic rollback).
func (d *Driver) fail(u *ztv1.RevisionUpgrade, reason, msg string) {
	d.StartRollback(u, d.RollbackStage(), reason, msg)
}

// Rollback undoes the upgrade in order: the route first (so no traffic goes to the
// canary while nodes move back), then every node to its original revision with the
// same strategy, then the pinning, then the canary pods left on restored nodes.
func (d *Driver) Rollback(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, bool, error) {
	switch u.Status.StepStage {
	case ztv1.StageRestoringRoute:
		return ctrl.Result{}, false, d.rollbackRoute(ctx, u)
	case ztv1.StageRestoringNodes:
		res, err := d.rollbackNodes(ctx, u)
		return res, false, err
	case ztv1.StageRestoringPins:
		if err := d.restorePins(ctx, u); err != nil {
			return ctrl.Result{}, false, err
		}
		d.SetStage(u, ztv1.StageEvictingCanaryPods)
		return ctrl.Result{}, false, nil
	case ztv1.StageEvictingCanaryPods:
		return d.rollbackCanaryPods(ctx, u)
	}
	return ctrl.Result{}, false, fmt.Errorf("unknown rollback stage %q", u.Status.StepStage)
}

func (d *Driver) rollbackRoute(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	err := d.restoreRoute(ctx, u)
	switch {
	case errors.Is(err, gatewayroutes.ErrRouteNotFound) || apierrors.IsNotFound(err):
		// Deleted: nothing to wait for, nothing to restore; the rest goes back.
		kind, ns, name := routeRef(u.Spec.Route)
		drive.Unrestored(u, kind, ns, name, "deleted during the upgrade")
		d.Recorder.Eventf(u, drive.EventWarning, "RouteGone", "%s %s/%s no longer exists: nothing to restore there, rolling back the rest", kind, ns, name)
	case err != nil:
		return fmt.Errorf("restore route: %w", err)
	}
	u.Status.TrafficWeight, u.Status.TrafficStep = 0, nil
	d.SetStage(u, ztv1.StageRestoringNodes)
	return nil
}

// rollbackNodes drives every node that left its original revision one action back.
func (d *Driver) rollbackNodes(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	var moving []string
	for _, n := range u.Status.Nodes {
		if n.Phase != ztv1.NodeStable && n.Phase != ztv1.NodeRestored {
			moving = append(moving, n.Name)
		}
	}
	nodes, err := d.ListNodes(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	w, err := d.readWorld(ctx, u, nodes, moving)
	if err != nil {
		return ctrl.Result{}, err
	}
	var todo []*ztv1.NodeStatus
	for j := range u.Status.Nodes {
		n := &u.Status.Nodes[j]
		if n.Phase == ztv1.NodeStable || n.Phase == ztv1.NodeRestored {
			continue
		}
		if _, ok := w.nodes[n.Name]; !ok {
			n.Phase = ztv1.NodeRestored // gone from the cluster: nothing to restore
			drive.Unrestored(u, "Node", "", n.Name, "deleted during the upgrade")
			continue
		}
		todo = append(todo, n)
	}
	results, err := d.driveNodes(ctx, u, w, todo, func(n *ztv1.NodeStatus) string { return n.OriginalRevision })
	if err != nil {
		return ctrl.Result{}, err
	}
	var waiting []string
	for k, n := range todo {
		if res := results[k]; !res.done {
			waiting = append(waiting, n.Name+": "+res.waiting)
			continue
		}
		n.Phase, n.Verified = ztv1.NodeRestored, false
		d.Log.Info("node restored", zap.String("node", n.Name), zap.String("revision", n.OriginalRevision))
	}
	u.Status.CanaryNodes = int32(plan.CountCanary(u.Status.Nodes))
	if len(waiting) > 0 {
		u.Status.Message = "rolling back; waiting for " + drive.Summarize(waiting)
		return ctrl.Result{RequeueAfter: drive.Requeue}, nil
	}
	d.SetStage(u, ztv1.StageRestoringPins)
	return ctrl.Result{}, nil
}

// rollbackCanaryPods evicts the canary pods left on restored nodes; the rollback is
// done once none is left.
func (d *Driver) rollbackCanaryPods(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, bool, error) {
	pods, err := d.canaryPodsOnRestoredNodes(ctx, u)
	if err != nil {
		return ctrl.Result{}, false, err
	}
	if len(pods) == 0 {
		return ctrl.Result{}, true, nil
	}
	u.Status.Message = fmt.Sprintf("rolling back; evicting %d canary pods from restored nodes", len(pods))
	for _, p := range pods {
		d.Log.Info("evicting canary pod", zap.String("pod", p.Namespace+"/"+p.Name), zap.String("node", p.Spec.NodeName),
			zap.Time("created", p.CreationTimestamp.Time), zap.Bool("terminating", p.DeletionTimestamp != nil))
	}
	return ctrl.Result{RequeueAfter: drive.Requeue}, false, d.Evict(ctx, pods)
}

// canaryPodsOnRestoredNodes lists pods of the to revision's workload namespaces that
// still run on nodes rolled back to another revision and were created before the
// Evicting stage began (status.stageStartedAt), that is under the upgrade's pinning.
func (d *Driver) canaryPodsOnRestoredNodes(ctx context.Context, u *ztv1.RevisionUpgrade) ([]*corev1.Pod, error) {
	restored := map[string]bool{}
	for _, n := range u.Status.Nodes {
		if n.Phase == ztv1.NodeRestored && n.OriginalRevision != u.Spec.To {
			restored[n.Name] = true
		}
	}
	since := u.Status.StageStart()
	var out []*corev1.Pod
	for _, wl := range u.Spec.Workloads {
		if wl.Revision != u.Spec.To {
			continue
		}
		var pods corev1.PodList
		if err := d.Client.List(ctx, &pods, client.InNamespace(wl.Namespace)); err != nil {
			return nil, fmt.Errorf("list canary pods in %s: %w", wl.Namespace, err)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if !restored[p.Spec.NodeName] || p.DeletionTimestamp != nil || mesh.Finished(p) {
				continue
			}
			// A pod created after the pins were restored was placed by the workload's
			// own (restored) scheduling, which may well allow a restored node: evicting
			// it would only bring it back, for ever. Only pods placed under the
			// upgrade's pinning are evicted (same-second ones too: at worst one more
			// eviction, whose replacement is then left alone).
			if since != nil && p.CreationTimestamp.After(since.Time) {
				continue
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// routeRef names the route of a route spec, as a kind, namespace and name.
func routeRef(rs *ztv1.RouteSpec) (kind, ns, name string) {
	switch {
	case rs == nil:
		return "Route", "", ""
	case rs.HTTPRoute != nil:
		return "HTTPRoute", rs.HTTPRoute.Namespace, rs.HTTPRoute.Name
	case rs.VirtualService != nil:
		return "VirtualService", rs.VirtualService.Namespace, rs.VirtualService.Name
	}
	return "Route", "", ""
}
