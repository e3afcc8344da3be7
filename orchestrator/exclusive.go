package orchestrator

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// waitPoll is how often an upgrade waiting for another one looks again.
const waitPoll = 5 * time.Second

// One upgrade at a time over the same things: an upgrade starts only when no other
// upgrade in progress changes the same nodes, ztunnel DaemonSets, route or
// namespaces (plan.Overlap). The decision is taken here alone, before Start, on the
// API server's own list (not the cache): passes run one at a time, so an upgrade
// started by the pass before is seen, also when both were created in the same
// second. An upgrade that waits says for which one, and starts by itself after.

// waitForOthers reports whether u must wait for another upgrade in progress, and
// records why (Ready=False, WaitingForUpgrade, an Event on a change).
func (r *Reconciler) waitForOthers(ctx context.Context, u *ztv1.RevisionUpgrade) (bool, error) {
	var list ztv1.RevisionUpgradeList
	if err := r.Live().List(ctx, &list); err != nil {
		return false, fmt.Errorf("list upgrades in progress: %w", err)
	}
	scope, err := r.scopeNames(ctx, u)
	if err != nil {
		return false, err
	}
	for i := range list.Items {
		o := &list.Items[i]
		if o.Name == u.Name || !started(o) || o.Status.Phase.Terminal() {
			continue
		}
		if shared := plan.Overlap(o, u, scope); len(shared) > 0 {
			msg := fmt.Sprintf("waiting for upgrade %s (%s) to end: both change %s; this upgrade starts by itself then", o.Name, o.Status.Phase, strings.Join(shared, ", "))
			u.Status.Phase = ztv1.PhasePending
			if drive.SetCondition(u, ztv1.ConditionReady, metav1.ConditionFalse, ztv1.ReasonWaitingForUpgrade, msg) {
				r.Recorder.Event(u, drive.EventNormal, ztv1.ReasonWaitingForUpgrade, msg)
			}
			u.Status.Message = msg
			return true, nil
		}
	}
	return false, nil
}

// scopeNames are the nodes an Ambient upgrade's selector picks now (none for a
// Sidecar upgrade, or a selector that does not parse: Start refuses it).
func (r *Reconciler) scopeNames(ctx context.Context, u *ztv1.RevisionUpgrade) ([]string, error) {
	if u.Spec.Mode == ztv1.ModeSidecar {
		return nil, nil
	}
	sel, err := plan.ScopeSelector(&u.Spec)
	if err != nil {
		return nil, nil
	}
	var nodes corev1.NodeList
	if err := r.Client.List(ctx, &nodes, client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list nodes in scope: %w", err)
	}
	names := make([]string, len(nodes.Items))
	for i, n := range nodes.Items {
		names[i] = n.Name
	}
	return names, nil
}

// waiting ends a pass of an upgrade that waits for another.
func waiting() ctrl.Result { return ctrl.Result{RequeueAfter: waitPoll} }
