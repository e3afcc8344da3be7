package sidecar

import (
	"context"
	"fmt"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// RollbackStage is the one stage of a rollback: the namespaces.
func (d *Driver) RollbackStage() ztv1.Stage { return ztv1.StageRestoringNamespaces }

// Rollback returns every namespace that left the from revision: its injection
// labels exactly as recorded, then its workloads restarted back (the restart
// annotation written back as it was, so a Deployment returns to its former
// ReplicaSet), a bounded number at a time, until no pod carries the to proxy.
// Namespaces roll back side by side.
func (d *Driver) Rollback(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, bool, error) {
	if u.Status.StepStage != ztv1.StageRestoringNamespaces {
		// A rollback begun by an older orchestrator at its first Ambient stage.
		d.SetStage(u, ztv1.StageRestoringNamespaces)
		return ctrl.Result{}, false, nil
	}
	var waiting []string
	for j := range u.Status.Namespaces {
		n := &u.Status.Namespaces[j]
		if n.Phase != ztv1.NodeMoving && n.Phase != ztv1.NodeCanary {
			continue
		}
		done, msg, err := d.restoreNamespace(ctx, u, n)
		if err != nil {
			return ctrl.Result{}, false, err
		}
		if !done {
			waiting = append(waiting, n.Name+": "+msg)
			continue
		}
		n.Phase, n.Verified = ztv1.NodeRestored, false
		d.Recorder.Eventf(u, drive.EventNormal, "NamespaceRestored", "namespace %s: labels restored, workloads back off the %s proxy", n.Name, u.Spec.To)
		d.Log.Info("namespace restored", zap.String("upgrade", u.Name), zap.String("namespace", n.Name), zap.String("revision", u.Spec.From))
	}
	u.Status.CanaryNamespaces = plan.CountCanaryNamespaces(u.Status.Namespaces)
	if len(waiting) > 0 {
		u.Status.Message = "rolling back; waiting for " + drive.Summarize(waiting)
		return ctrl.Result{RequeueAfter: drive.Requeue}, false, nil
	}
	return ctrl.Result{}, true, nil
}

// restoreNamespace takes one namespace one action further back: its labels as
// recorded, then its workloads restarted back.
func (d *Driver) restoreNamespace(ctx context.Context, u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus) (bool, string, error) {
	var ns corev1.Namespace
	if err := d.Client.Get(ctx, client.ObjectKey{Name: n.Name}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return true, "", nil // gone: nothing to restore
		}
		return false, "", fmt.Errorf("get namespace %s: %w", n.Name, err)
	}
	want := map[string]*string{}
	for _, k := range []string{mesh.LabelInjection, mesh.RevisionKey} {
		if v, ok := n.OriginalLabels[k]; ok {
			want[k] = &v
		} else {
			want[k] = nil
		}
	}
	if err := d.setNamespaceLabels(ctx, &ns, want); err != nil {
		return false, "", err
	}
	ws, err := d.namespaceWorkloads(ctx, n.Name)
	if err != nil {
		return false, "", err
	}
	waiting, err := d.restartBack(ctx, u, n, ws)
	if err != nil || len(waiting) > 0 {
		return false, drive.Summarize(waiting), err
	}
	return true, "", nil
}

// restoreTarget is the restart annotation a workload's template goes back to.
type restoreTarget struct {
	w      *sidecarWorkload
	target *string
}

// restartBack takes each workload of a restored namespace one action back, at most
// maxRestarts in flight, and returns what is still awaited.
func (d *Driver) restartBack(ctx context.Context, u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus, ws []*sidecarWorkload) ([]string, error) {
	// Pods must leave the to proxy, unless the namespace's own labels chose the to
	// revision before the upgrade (then only the templates go back).
	avoid := u.Spec.To
	if _, injected := n.OriginalLabels[mesh.LabelInjection]; !injected && n.OriginalLabels[mesh.RevisionKey] == u.Spec.To {
		avoid = ""
	}
	var todo []restoreTarget
	var waiting []string
	inFlight := 0
	for _, t := range restoreTargets(u, n, ws, avoid) {
		state, msg := judgeBack(t.w, t.target, avoid)
		switch state {
		case restartDone:
		case restartNeeded:
			todo = append(todo, t)
		default:
			inFlight++
			if err := d.replaceOnDelete(ctx, t.w, t.target); err != nil {
				return nil, err
			}
			waiting = append(waiting, msg)
		}
	}
	for _, t := range todo {
		if inFlight >= maxRestarts(u) {
			waiting = append(waiting, t.w.key()+": queued")
			continue
		}
		if err := d.setRestart(ctx, t.w, t.target); err != nil {
			return nil, err
		}
		inFlight++
		d.Log.Info("workload restarted back", zap.String("upgrade", u.Name), zap.String("namespace", n.Name), zap.String("workload", t.w.key()), zap.String("revision", u.Spec.From))
		waiting = append(waiting, t.w.key()+": restarting back")
	}
	return waiting, nil
}

// restoreTargets says which workloads go back, and to what: a recorded one to its
// recorded value; one ztcanary did not restart but whose pods got the to proxy
// (created in the moved namespace), or whose template carries ztcanary's value, to
// a restart back to from.
func restoreTargets(u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus, ws []*sidecarWorkload, avoid string) []restoreTarget {
	recorded := map[string]*ztv1.RestartRecord{}
	for k := range n.Workloads {
		recorded[n.Workloads[k].Kind+"/"+n.Workloads[k].Name] = &n.Workloads[k]
	}
	forward := restartValue(u, u.Spec.To)
	back := restartValue(u, u.Spec.From)
	var out []restoreTarget
	for _, w := range ws {
		cur := templateRestart(w.template)
		switch rec, ok := recorded[w.key()]; {
		case ok:
			out = append(out, restoreTarget{w, rec.Original})
		case sameValue(cur, &forward) || sameValue(cur, &back) || (avoid != "" && hasProxy(w, avoid)):
			out = append(out, restoreTarget{w, &back})
		}
	}
	return out
}

func hasProxy(w *sidecarWorkload, rev string) bool {
	for _, p := range w.pods {
		if mesh.ProxyRevision(p) == rev {
			return true
		}
	}
	return false
}
