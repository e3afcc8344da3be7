package ambient

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// driftPoll is how often the route, which is not watched, is looked at again for
// drift while the upgrade holds or waits for a promote.
const driftPoll = 5 * time.Second

// Gate decides whether a wave may proceed. It is called once the step's nodes and
// traffic are in place; a non-nil error fails the gate (and rolls back), done=false
// asks to be called again later.
type Gate interface {
	Check(ctx context.Context, u *ztv1.RevisionUpgrade, step int) (done bool, message string, err error)
}

// Driver runs Ambient-mode upgrades.
type Driver struct {
	*drive.Env
	// Routes builds the Router of an upgrade's route; nil: routes are refused.
	Routes RouterFactory
	// Gates run after each step's traffic change (traffic analysis).
	Gates []Gate
}

var _ drive.Driver = (*Driver)(nil)

// Preflight runs the checks of Start without changing anything: the scope, the
// plan, the to revision's istiod and ztunnel, the workload namespaces, the route
// and its backends.
func (d *Driver) Preflight(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	_, err := d.preflight(ctx, u)
	return err
}

// Start validates the spec against the cluster, resolves the scope once and records
// the pinning to restore. Any failure is a condition and nothing changes.
func (d *Driver) Start(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	u.Status.Phase = ztv1.PhasePending
	scope, err := d.resolveScope(ctx, u)
	if err == nil {
		err = validate(u, scope)
	}
	var origRoute *runtime.RawExtension
	if err == nil {
		origRoute, err = d.preflight(ctx, u)
	}
	if err != nil {
		return d.NotStarted(u, err)
	}
	targets, err := d.pinTargets(ctx, u)
	if err != nil {
		return ctrl.Result{}, err
	}
	u.Status.OriginalRoute = origRoute
	u.Status.Nodes = plan.ScopeNodes(&u.Spec, scope)
	u.Status.TotalNodes = int32(len(scope))
	u.Status.OriginalPins = recordPins(u, targets)
	d.StartStep(u, 0, ztv1.StagePinning)
	d.SetPhase(u, ztv1.PhaseProgressing)
	drive.SetCondition(u, ztv1.ConditionReady, metav1.ConditionTrue, ztv1.ReasonPreflightPassed, fmt.Sprintf("%d nodes in scope; istiod-%s and the %s ztunnel are ready", len(scope), u.Spec.To, u.Spec.To))
	drive.SetCondition(u, ztv1.ConditionProgressing, metav1.ConditionTrue, ztv1.ReasonStarted, "step 0 of "+strconv.Itoa(len(u.Spec.Steps)))
	u.Status.Message = "starting"
	d.Log.Info("upgrade started", zap.String("upgrade", u.Name), zap.Int("nodes", len(scope)), zap.String("from", u.Spec.From), zap.String("to", u.Spec.To))
	return ctrl.Result{}, nil
}

// validate checks the plan against the scope; a plan that does not fit is refused.
func validate(u *ztv1.RevisionUpgrade, scope []corev1.Node) error {
	if err := plan.ValidateNodes(&u.Spec, len(scope)); err != nil {
		return plan.Refused(ztv1.ReasonInvalidSpec, "%s", err.Error())
	}
	return nil
}

// resolveScope lists the nodes the selector picks (default: labelled from). A
// selector that does not parse is a refusal.
func (d *Driver) resolveScope(ctx context.Context, u *ztv1.RevisionUpgrade) ([]corev1.Node, error) {
	sel, err := plan.ScopeSelector(&u.Spec)
	if err != nil {
		return nil, plan.Refused(ztv1.ReasonInvalidSpec, "%s", err.Error())
	}
	var list corev1.NodeList
	if err := d.Client.List(ctx, &list, client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list nodes in scope: %w", err)
	}
	return list.Items, nil
}

// Hold holds the upgrade while someone else changed what ztcanary set on the route
// (a GitOps revert, a person): it says so and never writes over it.
func (d *Driver) Hold(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, bool, error) {
	drift, err := d.routeDrift(ctx, u)
	if err != nil {
		return ctrl.Result{}, false, err
	}
	if len(drift) > 0 {
		d.SetPhase(u, ztv1.PhasePaused)
		msg := "the route changed under ztcanary: " + strings.Join(drift, "; ") + "; put back what ztcanary set, or abort the upgrade"
		if drive.SetCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, ztv1.ReasonRouteDrift, msg) {
			d.Recorder.Event(u, drive.EventWarning, ztv1.ReasonRouteDrift, msg)
		}
		u.Status.Message = msg
		return ctrl.Result{RequeueAfter: driftPoll}, true, nil
	}
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused); u.Status.Phase == ztv1.PhasePaused && c != nil && c.Reason == ztv1.ReasonRouteDrift {
		d.SetPhase(u, ztv1.PhaseProgressing)
		drive.SetCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, ztv1.ReasonDriftResolved, "the route is again as ztcanary set it")
	}
	if u.Status.TrafficStep != nil {
		// The route is not watched: a pass that waits looks at it again.
		return ctrl.Result{RequeueAfter: driftPoll}, false, nil
	}
	return ctrl.Result{}, false, nil
}

// StepStage is the stage each step after the first begins with.
func (d *Driver) StepStage() ztv1.Stage { return ztv1.StageMovingNodes }

// Describe says how many nodes of the scope run the to revision.
func (d *Driver) Describe(u *ztv1.RevisionUpgrade) string {
	return fmt.Sprintf("%d of %d nodes on %s", plan.CountCanary(u.Status.Nodes), len(u.Status.Nodes), u.Spec.To)
}

// Finish cleans up the route (when asked) and gives the ztunnel DaemonSets their
// update strategies back.
func (d *Driver) Finish(ctx context.Context, u *ztv1.RevisionUpgrade) (string, error) {
	if err := d.promoteRoute(ctx, u); err != nil {
		return "", fmt.Errorf("clean up route: %w", err)
	}
	if err := d.releaseStrategies(ctx, u); err != nil {
		return "", err
	}
	return fmt.Sprintf("all %d nodes run %s", len(u.Status.Nodes), u.Spec.To), nil
}
