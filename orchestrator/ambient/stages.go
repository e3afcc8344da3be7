package ambient

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// Progress runs the current step's stage: Pinning (step 0), MovingNodes, Verifying,
// ShiftingTraffic, Analysing; the shell runs Pausing.
func (d *Driver) Progress(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	i := int(u.Status.CurrentStep)
	switch u.Status.StepStage {
	case ztv1.StagePinning:
		return d.pinning(ctx, u)
	case ztv1.StageMovingNodes:
		if d.TimedOut(u) {
			d.fail(u, ztv1.ReasonStepTimedOut, fmt.Sprintf("step %d did not finish moving its nodes within %s: %s", i, drive.Timeout(u), u.Status.Message))
			return ctrl.Result{}, nil
		}
		return d.moveNodes(ctx, u, i)
	case ztv1.StageVerifying:
		return d.verifying(ctx, u, i)
	case ztv1.StageShiftingTraffic:
		return d.shiftingTraffic(ctx, u, i)
	case ztv1.StageAnalysing:
		return d.analysing(ctx, u, i)
	}
	return ctrl.Result{}, fmt.Errorf("unknown stage %q", u.Status.StepStage)
}

// pinning pins the ztunnel DaemonSets and the workloads, then waits until the
// DaemonSets have settled. A pinned ztunnel DaemonSet is held at OnDelete, so its
// running pods stay, but it may still remove pods from nodes its pinning no longer
// selects; one whose strategy was not recorded (an upgrade started by an older
// ztcanary) rolls out its pinned template. No node moves until that is over, or a
// node's newest ztunnel, which istio-cni hands new pods to, may be one its swap
// removes.
func (d *Driver) pinning(ctx context.Context, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if err := d.applyPins(ctx, u); err != nil {
		return ctrl.Result{}, err
	}
	settled, msg, err := d.ztunnelsSettled(ctx, u)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !settled {
		if d.TimedOut(u) {
			d.fail(u, ztv1.ReasonPinningTimedOut, fmt.Sprintf("the ztunnel DaemonSets did not roll out their pinned templates within %s: %s", drive.Timeout(u), msg))
			return ctrl.Result{}, nil
		}
		u.Status.Message = "waiting for the ztunnel DaemonSets to roll out their pinned templates: " + msg
		return ctrl.Result{RequeueAfter: drive.Requeue}, nil
	}
	d.Recorder.Eventf(u, drive.EventNormal, "Pinned", "ztunnel DaemonSets and %d workload namespaces pinned to their revision's nodes", len(u.Spec.Workloads))
	d.SetStage(u, ztv1.StageMovingNodes)
	return ctrl.Result{}, nil
}

// verifying waits until the wave is verified (verify.go).
func (d *Driver) verifying(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	if d.TimedOut(u) {
		d.fail(u, ztv1.ReasonVerificationTimedOut, fmt.Sprintf("step %d was not verified within %s: %s", i, drive.Timeout(u), u.Status.Message))
		return ctrl.Result{}, nil
	}
	ok, msg, err := d.verify(ctx, u)
	if err != nil {
		d.fail(u, ztv1.ReasonVerificationFailed, err.Error())
		return ctrl.Result{}, nil
	}
	if !ok {
		u.Status.Message = "verifying step " + strconv.Itoa(i) + ": " + msg
		return ctrl.Result{RequeueAfter: drive.Requeue}, nil
	}
	drive.SetCondition(u, ztv1.ConditionVerified, metav1.ConditionTrue, ztv1.ReasonWaveVerified, fmt.Sprintf("step %d: %d canary nodes verified, canary workloads ready", i, u.Status.CanaryNodes))
	d.SetStage(u, ztv1.StageShiftingTraffic)
	return ctrl.Result{}, nil
}

// shiftingTraffic writes the step's traffic to the route; a backend without Ready
// endpoints yet is waited for within the step timeout.
func (d *Driver) shiftingTraffic(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	if err := d.applyTraffic(ctx, u, i); err != nil {
		if errors.Is(err, gatewayroutes.ErrBackend) && !d.TimedOut(u) {
			u.Status.Message = fmt.Sprintf("step %d: waiting to shift traffic: %v", i, err)
			return ctrl.Result{RequeueAfter: drive.Requeue}, nil
		}
		d.fail(u, ztv1.ReasonTrafficFailed, fmt.Sprintf("step %d: %v", i, err))
		return ctrl.Result{}, nil
	}
	d.SetStage(u, ztv1.StageAnalysing)
	return ctrl.Result{}, nil
}

// analysing waits for the gateway to accept the route, then runs the gates.
func (d *Driver) analysing(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	ready, msg, err := d.routeReady(ctx, u)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !ready {
		if d.TimedOut(u) {
			d.fail(u, ztv1.ReasonRouteNotAccepted, fmt.Sprintf("step %d: the gateway did not accept the route within %s: %s", i, drive.Timeout(u), msg))
			return ctrl.Result{}, nil
		}
		u.Status.Message = fmt.Sprintf("step %d: waiting for the gateway to accept the route: %s", i, msg)
		return ctrl.Result{RequeueAfter: drive.Requeue}, nil
	}
	for _, g := range d.Gates {
		done, msg, err := g.Check(ctx, u, i)
		if err != nil {
			d.fail(u, ztv1.ReasonGateFailed, fmt.Sprintf("step %d: %v", i, err))
			return ctrl.Result{}, nil
		}
		if !done {
			u.Status.Message = "analysing step " + strconv.Itoa(i) + ": " + msg
			return ctrl.Result{RequeueAfter: drive.Requeue}, nil
		}
	}
	d.SetStage(u, ztv1.StagePausing)
	return ctrl.Result{}, nil
}

// moveNodes assigns the step's nodes (recording the choice first) and drives each
// assigned node one action further.
func (d *Driver) moveNodes(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	want, err := plan.TargetNodes(u.Spec.Steps[i], len(u.Status.Nodes))
	if err != nil {
		return ctrl.Result{}, err
	}
	// The step that moves the last stable nodes shifts its traffic first, so no
	// stable workload is left Pending while it still serves traffic.
	if plan.TrafficFirst(&u.Spec, i, want, len(u.Status.Nodes), plan.CountCanary(u.Status.Nodes), u.Status.TrafficWeight) {
		if err := d.applyTraffic(ctx, u, i); err != nil {
			d.fail(u, ztv1.ReasonTrafficFailed, fmt.Sprintf("step %d: %v", i, err))
		}
		return ctrl.Result{}, nil
	}
	liveNodes, err := d.ListNodes(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	if added := plan.ChooseNodes(u.Status.Nodes, int32(i), want, liveNodes); added > 0 {
		for j := range u.Status.Nodes {
			if u.Status.Nodes[j].Step == int32(i) && u.Status.Nodes[j].Phase == ztv1.NodeStable {
				u.Status.Nodes[j].Phase = ztv1.NodeMoving
			}
		}
		u.Status.Message = fmt.Sprintf("step %d: moving %d more nodes to %s", i, added, u.Spec.To)
		return ctrl.Result{}, nil // the choice is recorded before any node is touched
	}
	return d.driveWave(ctx, u, i, want, liveNodes)
}

// driveWave drives each node assigned to steps up to i one action towards to, and
// ends the stage once want nodes are on to.
func (d *Driver) driveWave(ctx context.Context, u *ztv1.RevisionUpgrade, i, want int, liveNodes map[string]*corev1.Node) (ctrl.Result, error) {
	assigned, done := 0, 0
	var todo []*ztv1.NodeStatus
	var names []string
	for j := range u.Status.Nodes {
		n := &u.Status.Nodes[j]
		if n.Step < 0 || n.Step > int32(i) {
			continue
		}
		assigned++
		if n.Phase == ztv1.NodeCanary {
			done++
			continue
		}
		todo = append(todo, n)
		names = append(names, n.Name)
	}
	w, err := d.readWorld(ctx, u, liveNodes, names)
	if err != nil {
		return ctrl.Result{}, err
	}
	results, err := d.driveNodes(ctx, u, w, todo, func(*ztv1.NodeStatus) string { return u.Spec.To })
	if err != nil {
		return ctrl.Result{}, err
	}
	var waiting []string
	for k, n := range todo {
		if res := results[k]; !res.done {
			waiting = append(waiting, n.Name+": "+res.waiting)
			continue
		}
		// Verified and CapturedBy come from the agents' reports, in Verifying.
		n.Phase, n.Verified, n.CapturedBy = ztv1.NodeCanary, false, ""
		done++
		d.Recorder.Eventf(u, drive.EventNormal, "NodeMoved", "node %s now runs the %s ztunnel", n.Name, u.Spec.To)
		d.Log.Info("node moved", zap.String("upgrade", u.Name), zap.String("node", n.Name), zap.String("revision", u.Spec.To), zap.Int("step", i))
	}
	u.Status.CanaryNodes = int32(plan.CountCanary(u.Status.Nodes))
	if assigned < want {
		waiting = append(waiting, fmt.Sprintf("%d more Ready, schedulable nodes", want-assigned))
	}
	if done < want || len(waiting) > 0 {
		u.Status.Message = fmt.Sprintf("step %d: %d of %d nodes on %s; waiting for %s", i, done, want, u.Spec.To, drive.Summarize(waiting))
		return ctrl.Result{RequeueAfter: drive.Requeue}, nil
	}
	d.SetStage(u, ztv1.StageVerifying)
	return ctrl.Result{}, nil
}
