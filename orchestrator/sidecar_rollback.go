package orchestrator

import (
	"context"
	"fmt"
	"strings"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// rollbackSidecar returns every namespace that left the from revision: its
// injection labels exactly as recorded, then its workloads restarted back (the
// restart annotation written back as it was, so a Deployment returns to its former
// ReplicaSet), a bounded number at a time, until no pod carries the to proxy.
// Namespaces roll back side by side.
func (r *Reconciler) rollbackSidecar(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if u.Status.StepStage != StageRestoringNamespaces {
		// Rollback started by the shared path (StageRestoreRoute): no route here.
		r.setStage(u, StageRestoringNamespaces)
		return ctrl.Result{}, nil
	}
	var waiting []string
	for j := range u.Status.Namespaces {
		n := &u.Status.Namespaces[j]
		if n.Phase != ztv1.NodeMoving && n.Phase != ztv1.NodeCanary {
			continue
		}
		done, msg, err := r.restoreNamespace(ctx, log, u, n)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !done {
			waiting = append(waiting, n.Name+": "+msg)
			continue
		}
		n.Phase, n.Verified = ztv1.NodeRestored, false
		r.Recorder.Eventf(u, eventNormal, "NamespaceRestored", "namespace %s: labels restored, workloads back off the %s proxy", n.Name, u.Spec.To)
		log.Info("namespace restored", zap.String("namespace", n.Name), zap.String("revision", u.Spec.From))
	}
	u.Status.CanaryNamespaces = countCanaryNamespaces(u)
	if len(waiting) > 0 {
		u.Status.Message = "rolling back; waiting for " + summarize(waiting)
		return ctrl.Result{RequeueAfter: defaultRequeue}, nil
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

// restoreNamespace takes one namespace one action further back.
func (r *Reconciler) restoreNamespace(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus) (bool, string, error) {
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, client.ObjectKey{Name: n.Name}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return true, "", nil // gone: nothing to restore
		}
		return false, "", fmt.Errorf("get namespace %s: %w", n.Name, err)
	}
	want := map[string]*string{}
	for _, k := range []string{injectionLabel, revisionKey} {
		if v, ok := n.OriginalLabels[k]; ok {
			want[k] = &v
		} else {
			want[k] = nil
		}
	}
	if err := r.setNamespaceLabels(ctx, &ns, want); err != nil {
		return false, "", err
	}
	ws, err := r.namespaceWorkloads(ctx, n.Name)
	if err != nil {
		return false, "", err
	}
	recorded := map[string]*ztv1.RestartRecord{}
	for k := range n.Workloads {
		recorded[n.Workloads[k].Kind+"/"+n.Workloads[k].Name] = &n.Workloads[k]
	}
	// Pods must leave the to proxy, unless the namespace's own labels chose the to
	// revision before the upgrade (then only the templates go back).
	avoid := u.Spec.To
	if _, injected := n.OriginalLabels[injectionLabel]; !injected && n.OriginalLabels[revisionKey] == u.Spec.To {
		avoid = ""
	}
	forward := restartValue(u, u.Spec.To)
	back := restartValue(u, u.Spec.From)
	limit := maxRestarts(u)
	type pending struct {
		w      *sidecarWorkload
		target *string
	}
	var todo []pending
	inFlight := 0
	var waiting []string
	for _, w := range ws {
		// The value to write back: the recorded one; for a workload ztcanary did not
		// restart but whose pods got the to proxy (created in the moved namespace), a
		// restart back to from.
		var target *string
		if rec, ok := recorded[w.key()]; ok {
			target = rec.Original
		} else if sameValue(templateRestart(w.template), &forward) || sameValue(templateRestart(w.template), &back) || (avoid != "" && hasProxy(w, avoid)) {
			target = &back
		} else {
			continue
		}
		state, msg := judgeBack(w, target, avoid)
		switch state {
		case restartDone:
			continue
		case restartNeeded:
			todo = append(todo, pending{w, target})
		default:
			inFlight++
			if err := r.replaceOnDelete(ctx, w, target); err != nil {
				return false, "", err
			}
			waiting = append(waiting, msg)
		}
	}
	for _, p := range todo {
		if inFlight >= limit {
			waiting = append(waiting, p.w.key()+": queued")
			continue
		}
		if err := r.setRestart(ctx, p.w, p.target); err != nil {
			return false, "", err
		}
		inFlight++
		log.Info("workload restarted back", zap.String("namespace", n.Name), zap.String("workload", p.w.key()), zap.String("revision", u.Spec.From))
		waiting = append(waiting, p.w.key()+": restarting back")
	}
	if len(waiting) > 0 {
		return false, summarize(waiting), nil
	}
	return true, "", nil
}

func hasProxy(w *sidecarWorkload, rev string) bool {
	for _, p := range w.pods {
		if proxyRevision(p) == rev {
			return true
		}
	}
	return false
}
