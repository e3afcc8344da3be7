package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
)

// Stages of a step, in order, recorded in status.stepStage.
const (
	StagePinning      = "Pinning"
	StageMoving       = "MovingNodes"
	StageVerifying    = "Verifying"
	StageTraffic      = "ShiftingTraffic"
	StageAnalysing    = "Analysing"
	StagePausing      = "Pausing"
	StageRestoreRoute = "RestoringRoute"
	StageRollback     = "RestoringNodes"
	StageUnpinning    = "RestoringPins"
	StageEvicting     = "EvictingCanaryPods"
	defaultRequeue    = 2 * time.Second
	driftPoll         = 5 * time.Second
	preflightRetry    = 30 * time.Second
	defaultTimeout    = 10 * time.Minute
	eventNormal       = corev1.EventTypeNormal
	eventWarning      = corev1.EventTypeWarning
	reasonRollback    = "RollingBack"
	reasonPreflight   = "PreflightFailed"
	reasonInvalid     = "InvalidSpec"
)

// Gate decides whether a wave may proceed. It is called once the step's nodes and
// traffic are in place; a non-nil error fails the gate (and rolls back), done=false
// asks to be called again later.
type Gate interface {
	Check(ctx context.Context, u *ztv1.RevisionUpgrade, step int) (done bool, message string, err error)
}

// Reconciler drives RevisionUpgrades. Every decision is recorded in the object's
// status before it is acted on, and every action is derived from the cluster's state,
// so killing the process at any point and starting another reaches the same end.
type Reconciler struct {
	Client   client.Client
	Recorder record.EventRecorder
	Log      *zap.Logger
	Clock    clock.PassiveClock
	// Gates run after each step's traffic change (traffic analysis).
	Gates []Gate
	// Routes builds the Router of an upgrade's route; nil: routes are refused.
	Routes RouterFactory
	// MaxEvictions bounds evictions per node and pass (default 10).
	MaxEvictions int
	// Coalesce is how long a change of a watched object may wait, merged with the
	// changes that follow, before the upgrades are reconciled (default 500ms).
	Coalesce time.Duration
	// stores, set by SetupWithManager, are the cache's node and pod stores that a
	// pass reads without copying (stores.go); nil: read through Client.
	stores *informerStores
}

// countWrite counts one write to the API server, for the API-cost figures.
func countWrite(kind string) { apiWrites.WithLabelValues(kind).Inc() }

// SetupWithManager registers the reconciler: RevisionUpgrades, and every object whose
// change can unblock an upgrade (nodes, pods, DaemonSets, Deployments, NodeCaptures),
// mapped to all upgrades still in progress. Only changes a pass reads wake it, and
// those are coalesced (events.go).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	active := r.coalescedUpgrades()
	if err := r.useInformerStores(context.Background(), mgr.GetCache()); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("revisionupgrade").
		For(&ztv1.RevisionUpgrade{}).
		Watches(&corev1.Node{}, active, builder.WithPredicates(nodeEvents)).
		Watches(&corev1.Pod{}, active, builder.WithPredicates(podEvents)).
		Watches(&appsv1.DaemonSet{}, active, builder.WithPredicates(daemonSetEvents)).
		Watches(&appsv1.Deployment{}, active, builder.WithPredicates(deploymentEvents)).
		Watches(&appsv1.StatefulSet{}, active, builder.WithPredicates(statefulSetEvents)).
		Watches(&ztv1.NodeCapture{}, active).
		Complete(r)
}

// activeUpgrades names the upgrades still in progress. It runs on every watched
// event, so it reads the cache without copying (upgrade statuses hold a thousand
// node entries).
func (r *Reconciler) activeUpgrades(ctx context.Context, _ client.Object) []reconcile.Request {
	var list ztv1.RevisionUpgradeList
	if err := r.Client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, u := range list.Items {
		if !terminal(u.Status.Phase) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Name: u.Name}})
		}
	}
	return out
}

func terminal(p ztv1.Phase) bool {
	return p == ztv1.PhaseSucceeded || p == ztv1.PhaseRolledBack || p == ztv1.PhaseFailed
}

// Reconcile fetches the upgrade, takes at most one round of actions, and patches the
// status it changed (with an optimistic lock, so two replicas cannot both advance).
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (res ctrl.Result, err error) {
	labelled(ctx, func(ctx context.Context) { res, err = r.reconcileOnce(ctx, req) })
	return res, err
}

// reconcileOnce is one pass of Reconcile, run under the reconcile profile label
// (cpu.go), so a CPU profile tells the passes from watching the cluster.
func (r *Reconciler) reconcileOnce(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	u := &ztv1.RevisionUpgrade{}
	if err := r.Client.Get(ctx, req.NamespacedName, u); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if terminal(u.Status.Phase) {
		return ctrl.Result{}, nil
	}
	log := r.Log.With(zap.String("upgrade", u.Name))
	before := u.DeepCopy()
	res, err := r.reconcile(ctx, log, u)
	r.noteError(u, err)
	wrote, perr := r.patchStatus(ctx, before, u)
	if perr != nil {
		if apierrors.IsConflict(perr) {
			return ctrl.Result{Requeue: true}, nil
		}
		err = errors.Join(err, fmt.Errorf("patch status: %w", perr))
	}
	if wrote {
		r.observe(before, u)
	}
	if err != nil {
		// Not logged here: controller-runtime logs it once and retries with backoff
		// (a result beside an error would be ignored).
		return ctrl.Result{}, err
	}
	return res, nil
}

// maxConditionMessage bounds the error text a condition carries.
const maxConditionMessage = 1024

// noteError records the outcome of a pass in the Degraded condition: an error that
// would otherwise only be logged and retried (a write the API server refuses, for
// example) becomes visible on the upgrade, and the condition turns False once a pass
// completes again.
func (r *Reconciler) noteError(u *ztv1.RevisionUpgrade, err error) {
	if err == nil {
		if meta.IsStatusConditionTrue(u.Status.Conditions, ztv1.ConditionDegraded) {
			setCondition(u, ztv1.ConditionDegraded, metav1.ConditionFalse, "Recovered", "the last reconcile pass completed")
		}
		return
	}
	msg := err.Error()
	if len(msg) > maxConditionMessage {
		msg = strings.ToValidUTF8(msg[:maxConditionMessage], "") + "…"
	}
	msg += " (retried with backoff)"
	was := meta.IsStatusConditionTrue(u.Status.Conditions, ztv1.ConditionDegraded)
	setCondition(u, ztv1.ConditionDegraded, metav1.ConditionTrue, "ReconcileError", msg)
	if !was {
		r.Recorder.Event(u, eventWarning, "ReconcileError", msg)
	}
}

func (r *Reconciler) reconcile(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if u.Spec.Mode == ztv1.ModeSidecar {
		return r.reconcileSidecar(ctx, log, u) // namespace waves: sidecar.go
	}
	if u.Status.Phase == ztv1.PhaseRollingBack {
		return r.rollback(ctx, log, u)
	}
	if u.Annotations[ztv1.AnnotationAbort] == "true" && u.Status.Phase != "" && u.Status.Phase != ztv1.PhasePending {
		r.startRollback(u, "Aborted", "aborted by request (annotation "+ztv1.AnnotationAbort+")")
		return ctrl.Result{}, nil
	}
	switch u.Status.Phase {
	case "", ztv1.PhasePending:
		return r.start(ctx, log, u)
	default:
		if u.Annotations[ztv1.AnnotationPause] == "true" {
			r.setPhase(u, ztv1.PhasePaused)
			setCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, "PausedByRequest", "held by annotation "+ztv1.AnnotationPause+"=true; remove it (ztcanary resume) to go on")
			u.Status.Message = "paused by request"
			return ctrl.Result{}, nil
		}
		return r.progress(ctx, log, u)
	}
}

// start validates the spec against the cluster, resolves the scope once and records
// the pinning to restore. Any failure is a condition and nothing changes.
func (r *Reconciler) start(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	u.Status.Phase = ztv1.PhasePending
	var pf *preflightError
	scope, err := r.resolveScope(ctx, u)
	if err != nil {
		if errors.As(err, &pf) {
			r.refuse(u, pf.reason, pf.Error())
			return ctrl.Result{RequeueAfter: preflightRetry}, nil
		}
		return ctrl.Result{}, err
	}
	if err := validatePlan(&u.Spec, len(scope)); err != nil {
		r.refuse(u, reasonInvalid, err.Error())
		return ctrl.Result{RequeueAfter: preflightRetry}, nil
	}
	origRoute, err := r.preflight(ctx, u)
	if err != nil {
		if errors.As(err, &pf) {
			r.refuse(u, pf.reason, pf.Error())
			return ctrl.Result{RequeueAfter: preflightRetry}, nil
		}
		return ctrl.Result{}, err
	}
	targets, err := r.pinTargets(ctx, u)
	if err != nil {
		return ctrl.Result{}, err
	}
	u.Status.OriginalRoute = origRoute
	u.Status.Nodes = scopeNodes(&u.Spec, scope)
	u.Status.TotalNodes = int32(len(scope))
	u.Status.OriginalPins = recordPins(u, targets)
	u.Status.CurrentStep = 0
	r.setStage(u, StagePinning)
	r.setPhase(u, ztv1.PhaseProgressing)
	setCondition(u, ztv1.ConditionReady, metav1.ConditionTrue, "PreflightPassed", fmt.Sprintf("%d nodes in scope; istiod-%s and the %s ztunnel are ready", len(scope), u.Spec.To, u.Spec.To))
	setCondition(u, ztv1.ConditionProgressing, metav1.ConditionTrue, "Started", "step 0 of "+strconv.Itoa(len(u.Spec.Steps)))
	u.Status.Message = "starting"
	log.Info("upgrade started", zap.Int("nodes", len(scope)), zap.String("from", u.Spec.From), zap.String("to", u.Spec.To))
	return ctrl.Result{}, nil
}

func (r *Reconciler) refuse(u *ztv1.RevisionUpgrade, reason, msg string) {
	if setCondition(u, ztv1.ConditionReady, metav1.ConditionFalse, reason, msg) {
		r.Recorder.Event(u, eventWarning, reason, msg)
	}
	u.Status.Message = msg
}

// resolveScope lists the nodes the selector picks (default: labelled from). A
// selector that does not parse is a refusal.
func (r *Reconciler) resolveScope(ctx context.Context, u *ztv1.RevisionUpgrade) ([]corev1.Node, error) {
	sel := labels.SelectorFromSet(labels.Set{nodeLabel(&u.Spec): u.Spec.From})
	if u.Spec.NodeSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(u.Spec.NodeSelector)
		if err != nil {
			return nil, refused(reasonInvalid, "spec.nodeSelector: %v", err)
		}
		sel = s
	}
	var list corev1.NodeList
	if err := r.Client.List(ctx, &list, client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list nodes in scope: %w", err)
	}
	return list.Items, nil
}

// progress runs the current step's stages.
func (r *Reconciler) progress(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if u.Status.Phase == ztv1.PhasePaused && u.Status.StepStage != StagePausing {
		r.setPhase(u, ztv1.PhaseProgressing)
		setCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, "Resumed", "resumed")
	}
	i := int(u.Status.CurrentStep)
	step := u.Spec.Steps[i]
	// Someone else changed what ztcanary set on the route (a GitOps revert, a
	// person): hold, say so, and never write over it.
	drift, err := r.routeDrift(ctx, u)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(drift) > 0 {
		r.setPhase(u, ztv1.PhasePaused)
		msg := "the route changed under ztcanary: " + strings.Join(drift, "; ") + "; put back what ztcanary set, or abort the upgrade"
		if setCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, "RouteDrift", msg) {
			r.Recorder.Event(u, eventWarning, "RouteDrift", msg)
		}
		u.Status.Message = msg
		return ctrl.Result{RequeueAfter: driftPoll}, nil
	}
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused); u.Status.Phase == ztv1.PhasePaused && c != nil && c.Reason == "RouteDrift" {
		r.setPhase(u, ztv1.PhaseProgressing)
		setCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, "DriftResolved", "the route is again as ztcanary set it")
	}
	switch u.Status.StepStage {
	case StagePinning:
		if err := r.applyPins(ctx, u); err != nil {
			return ctrl.Result{}, err
		}
		// A pinned ztunnel DaemonSet is held at OnDelete, so its running pods stay,
		// but it may still remove pods from nodes its pinning no longer selects; one
		// whose strategy was not recorded (an upgrade started by an older ztcanary)
		// rolls out its pinned template. No node moves until that is over, or a
		// node's newest ztunnel, which istio-cni hands new pods to, may be one its
		// swap removes.
		settled, msg, err := r.ztunnelsSettled(ctx, u)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !settled {
			if r.timedOut(u) {
				r.startRollback(u, "PinningTimedOut", fmt.Sprintf("the ztunnel DaemonSets did not roll out their pinned templates within %s: %s", r.timeout(u), msg))
				return ctrl.Result{}, nil
			}
			u.Status.Message = "waiting for the ztunnel DaemonSets to roll out their pinned templates: " + msg
			return ctrl.Result{RequeueAfter: defaultRequeue}, nil
		}
		r.Recorder.Eventf(u, eventNormal, "Pinned", "ztunnel DaemonSets and %d workload namespaces pinned to their revision's nodes", len(u.Spec.Workloads))
		r.setStage(u, StageMoving)
		return ctrl.Result{}, nil

	case StageMoving:
		if r.timedOut(u) {
			r.startRollback(u, "StepTimedOut", fmt.Sprintf("step %d did not finish moving its nodes within %s: %s", i, r.timeout(u), u.Status.Message))
			return ctrl.Result{}, nil
		}
		return r.moveNodes(ctx, log, u, i, step)

	case StageVerifying:
		if r.timedOut(u) {
			r.startRollback(u, "VerificationTimedOut", fmt.Sprintf("step %d was not verified within %s: %s", i, r.timeout(u), u.Status.Message))
			return ctrl.Result{}, nil
		}
		ok, msg, err := r.verify(ctx, u, i)
		if err != nil {
			r.startRollback(u, "VerificationFailed", err.Error())
			return ctrl.Result{}, nil
		}
		if !ok {
			u.Status.Message = "verifying step " + strconv.Itoa(i) + ": " + msg
			return ctrl.Result{RequeueAfter: defaultRequeue}, nil
		}
		setCondition(u, ztv1.ConditionVerified, metav1.ConditionTrue, "WaveVerified", fmt.Sprintf("step %d: %d canary nodes verified, canary workloads ready", i, u.Status.CanaryNodes))
		r.setStage(u, StageTraffic)
		return ctrl.Result{}, nil

	case StageTraffic:
		if err := r.applyTraffic(ctx, u, i); err != nil {
			if errors.Is(err, gatewayroutes.ErrBackend) && !r.timedOut(u) {
				u.Status.Message = fmt.Sprintf("step %d: waiting to shift traffic: %v", i, err)
				return ctrl.Result{RequeueAfter: defaultRequeue}, nil
			}
			r.startRollback(u, "TrafficFailed", fmt.Sprintf("step %d: %v", i, err))
			return ctrl.Result{}, nil
		}
		r.setStage(u, StageAnalysing)
		return ctrl.Result{}, nil

	case StageAnalysing:
		ready, msg, err := r.routeReady(ctx, u)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !ready {
			if r.timedOut(u) {
				r.startRollback(u, "RouteNotAccepted", fmt.Sprintf("step %d: the gateway did not accept the route within %s: %s", i, r.timeout(u), msg))
				return ctrl.Result{}, nil
			}
			u.Status.Message = fmt.Sprintf("step %d: waiting for the gateway to accept the route: %s", i, msg)
			return ctrl.Result{RequeueAfter: defaultRequeue}, nil
		}
		for _, g := range r.Gates {
			done, msg, err := g.Check(ctx, u, i)
			if err != nil {
				r.startRollback(u, "GateFailed", fmt.Sprintf("step %d: %v", i, err))
				return ctrl.Result{}, nil
			}
			if !done {
				u.Status.Message = "analysing step " + strconv.Itoa(i) + ": " + msg
				return ctrl.Result{RequeueAfter: defaultRequeue}, nil
			}
		}
		r.setStage(u, StagePausing)
		return ctrl.Result{}, nil

	case StagePausing:
		return r.pause(ctx, u, i, step)
	}
	return ctrl.Result{}, fmt.Errorf("unknown stage %q", u.Status.StepStage)
}

// moveNodes assigns the step's nodes (recording the choice first) and drives each
// assigned node one action further.
func (r *Reconciler) moveNodes(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade, i int, step ztv1.Step) (ctrl.Result, error) {
	want, err := targetNodes(step, len(u.Status.Nodes))
	if err != nil {
		return ctrl.Result{}, err
	}
	// The step that moves the last stable nodes shifts its traffic first, so no
	// stable workload is left Pending while it still serves traffic.
	if want == len(u.Status.Nodes) && countCanary(u) < want && step.Traffic != nil && step.Traffic.Weight != nil &&
		u.Status.TrafficWeight < *step.Traffic.Weight {
		if err := r.applyTraffic(ctx, u, i); err != nil {
			r.startRollback(u, "TrafficFailed", fmt.Sprintf("step %d: %v", i, err))
		}
		return ctrl.Result{}, nil
	}
	liveNodes, err := r.listNodes(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	if added := chooseNodes(u.Status.Nodes, int32(i), want, liveNodes); added > 0 {
		for j := range u.Status.Nodes {
			if u.Status.Nodes[j].Step == int32(i) && u.Status.Nodes[j].Phase == ztv1.NodeStable {
				u.Status.Nodes[j].Phase = ztv1.NodeMoving
			}
		}
		u.Status.Message = fmt.Sprintf("step %d: moving %d more nodes to %s", i, added, u.Spec.To)
		return ctrl.Result{}, nil // the choice is recorded before any node is touched
	}
	var moving []string
	for _, n := range u.Status.Nodes {
		if n.Step >= 0 && n.Step <= int32(i) && n.Phase != ztv1.NodeCanary {
			moving = append(moving, n.Name)
		}
	}
	w, err := r.readWorld(ctx, u, liveNodes, moving)
	if err != nil {
		return ctrl.Result{}, err
	}
	assigned, done := 0, 0
	var waiting []string
	var drive []*ztv1.NodeStatus
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
		drive = append(drive, n)
	}
	results, err := r.driveNodes(ctx, u, w, drive, func(*ztv1.NodeStatus) string { return u.Spec.To })
	if err != nil {
		return ctrl.Result{}, err
	}
	for k, n := range drive {
		res := results[k]
		if res.done {
			// Verified and CapturedBy come from the agents' reports, in Verifying.
			n.Phase, n.Verified, n.CapturedBy = ztv1.NodeCanary, false, ""
			done++
			r.Recorder.Eventf(u, eventNormal, "NodeMoved", "node %s now runs the %s ztunnel", n.Name, u.Spec.To)
			log.Info("node moved", zap.String("node", n.Name), zap.String("revision", u.Spec.To), zap.Int("step", i))
			continue
		}
		waiting = append(waiting, n.Name+": "+res.waiting)
	}
	u.Status.CanaryNodes = int32(countCanary(u))
	if assigned < want {
		waiting = append(waiting, fmt.Sprintf("%d more Ready, schedulable nodes", want-assigned))
	}
	if done < want || len(waiting) > 0 {
		u.Status.Message = fmt.Sprintf("step %d: %d of %d nodes on %s; waiting for %s", i, done, want, u.Spec.To, summarize(waiting))
		return ctrl.Result{RequeueAfter: defaultRequeue}, nil
	}
	r.setStage(u, StageVerifying)
	return ctrl.Result{}, nil
}

func countCanary(u *ztv1.RevisionUpgrade) int {
	n := 0
	for _, s := range u.Status.Nodes {
		if s.Phase == ztv1.NodeCanary {
			n++
		}
	}
	return n
}

// capturedBy is the revision a matching report shows capturing the node's pods
// ("" when the node has none).
func capturedBy(nc *ztv1.NodeCapture) string {
	for _, p := range nc.Status.Pods {
		return p.CapturedBy
	}
	return ""
}

// unreportedPods names the pods of placed that the agent could see (running, with an
// IP, not terminating, not host-network) but its report does not list.
func unreportedPods(nc *ztv1.NodeCapture, placed []*corev1.Pod) []string {
	reported := make(map[string]bool, len(nc.Status.Pods))
	for _, p := range nc.Status.Pods {
		reported[p.Namespace+"/"+p.Name] = true
	}
	var missing []string
	for _, p := range placed {
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil || p.Spec.HostNetwork {
			continue
		}
		if key := p.Namespace + "/" + p.Name; !reported[key] {
			missing = append(missing, key)
		}
	}
	slices.Sort(missing)
	return missing
}

func summarize(items []string) string {
	if len(items) > 3 {
		return fmt.Sprintf("%s and %d more", strings.Join(items[:3], "; "), len(items)-3)
	}
	return strings.Join(items, "; ")
}

// verify checks a wave: the canary workloads are Ready and, with agent verification
// Required, every canary node's NodeCapture shows the to ztunnel capturing every
// ambient pod. A report that contradicts the plan fails the gate.
func (r *Reconciler) verify(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (bool, string, error) {
	ok, msg, err := r.workloadsReady(ctx, u, u.Spec.To)
	if err != nil || !ok {
		return false, msg, err
	}
	if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationDisabled {
		return true, "", nil
	}
	captures, err := r.nodeCaptures(ctx)
	if err != nil {
		return false, "", err
	}
	// The ambient pods the API places on the canary nodes: a report passes only if it
	// covers each of them (a report made after the swap but before the canary pods
	// landed would otherwise prove nothing about them).
	var canary []string
	for _, n := range u.Status.Nodes {
		if n.Phase == ztv1.NodeCanary {
			canary = append(canary, n.Name)
		}
	}
	placed := &world{ambient: map[string][]*corev1.Pod{}}
	if err := r.readAmbient(ctx, u, placed, canary); err != nil {
		return false, "", err
	}
	matched := map[string]*ztv1.NodeCapture{}
	for _, n := range u.Status.Nodes {
		if n.Phase != ztv1.NodeCanary {
			continue
		}
		nc, ok := captures[n.Name]
		if !ok || nc.Status.ObservedAt == nil {
			if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationRequired {
				return false, "no NodeCapture from the agent on " + n.Name + " yet", nil
			}
			continue
		}
		// Judge only a report the agent made after the wave's nodes were swapped: an
		// older one may show the handoff (two revisions) or the old ztunnel.
		if nc.Status.NodeRevision != u.Spec.To || (u.Status.StepStartedAt != nil && nc.Status.ObservedAt.Before(u.Status.StepStartedAt)) {
			if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationRequired {
				return false, "waiting for a report from the agent on " + n.Name + " made after the swap", nil
			}
			continue
		}
		switch nc.Status.Verdict {
		case ztv1.VerdictMatch:
			if missing := unreportedPods(nc, placed.ambient[n.Name]); len(missing) > 0 {
				if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationRequired {
					return false, fmt.Sprintf("waiting for the agent on %s to report %d more ambient pods (%s)", n.Name, len(missing), summarize(missing)), nil
				}
				continue
			}
			matched[n.Name] = nc
		case ztv1.VerdictUnknown, "":
			if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationRequired {
				return false, "the agent on " + n.Name + " cannot tell yet", nil
			}
		case ztv1.VerdictMultipleRevisions:
			// The swap is done in the orchestrator's view (no from ztunnel pod is left
			// on the node): an agent that still sees two revisions has a lagging view
			// of the node's pods. Wait; the step timeout bounds it.
			if u.Spec.Analysis.AgentVerification == ztv1.AgentVerificationRequired {
				return false, "the agent on " + n.Name + " still sees ztunnels of two revisions", nil
			}
		default:
			return false, "", fmt.Errorf("agent on node %s reports %s: %s", n.Name, nc.Status.Verdict, nc.Status.Message)
		}
	}
	// Record what the agents proved, from the reports that passed the gate.
	for j := range u.Status.Nodes {
		n := &u.Status.Nodes[j]
		if nc, ok := matched[n.Name]; ok {
			n.Verified, n.CapturedBy = true, capturedBy(nc)
		}
	}
	return true, "", nil
}

// pause holds after a step: absent pause goes on at once, a duration waits, {} waits
// for a promote of this step (annotation value = step index).
func (r *Reconciler) pause(ctx context.Context, u *ztv1.RevisionUpgrade, i int, step ztv1.Step) (ctrl.Result, error) {
	if step.Pause != nil {
		if d := step.Pause.Duration; d != nil {
			left := u.Status.StepStartedAt.Add(d.Duration).Sub(r.Clock.Now())
			if left > 0 {
				u.Status.Message = fmt.Sprintf("step %d done; pausing %s more", i, left.Round(time.Second))
				return ctrl.Result{RequeueAfter: left}, nil
			}
		} else if u.Annotations[ztv1.AnnotationPromote] != strconv.Itoa(i) {
			r.setPhase(u, ztv1.PhasePaused)
			setCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, "AwaitingPromote", fmt.Sprintf("step %d done; run `ztcanary promote %s` (annotation %s=%d) to go on", i, u.Name, ztv1.AnnotationPromote, i))
			u.Status.Message = fmt.Sprintf("step %d done; waiting for promote", i)
			if u.Status.TrafficStep != nil {
				// The route is not watched: look at it again for drift while waiting.
				return ctrl.Result{RequeueAfter: driftPoll}, nil
			}
			return ctrl.Result{}, nil
		}
	}
	if u.Status.Phase == ztv1.PhasePaused {
		r.setPhase(u, ztv1.PhaseProgressing)
		setCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, "Promoted", fmt.Sprintf("step %d promoted", i))
	}
	if i+1 < len(u.Spec.Steps) {
		u.Status.CurrentStep = int32(i + 1)
		r.setStage(u, StageMoving)
		u.Status.Message = fmt.Sprintf("step %d of %d", i+1, len(u.Spec.Steps))
		return ctrl.Result{}, nil
	}
	if err := r.promoteRoute(ctx, u); err != nil {
		return ctrl.Result{}, fmt.Errorf("clean up route: %w", err)
	}
	if err := r.releaseStrategies(ctx, u); err != nil {
		return ctrl.Result{}, err
	}
	r.setPhase(u, ztv1.PhaseSucceeded)
	r.setStage(u, "Done")
	setCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, "Succeeded", "every step done")
	setCondition(u, ztv1.ConditionComplete, metav1.ConditionTrue, "Succeeded", fmt.Sprintf("all %d nodes run %s", len(u.Status.Nodes), u.Spec.To))
	u.Status.Message = fmt.Sprintf("done: all %d nodes on %s", len(u.Status.Nodes), u.Spec.To)
	return ctrl.Result{}, nil
}

func (r *Reconciler) timeout(u *ztv1.RevisionUpgrade) time.Duration {
	if u.Spec.StepTimeout != nil && u.Spec.StepTimeout.Duration > 0 {
		return u.Spec.StepTimeout.Duration
	}
	return defaultTimeout
}

func (r *Reconciler) timedOut(u *ztv1.RevisionUpgrade) bool {
	return u.Status.StepStartedAt != nil && r.Clock.Since(u.Status.StepStartedAt.Time) > r.timeout(u)
}

// setStage records a new stage of the current step and when it began.
func (r *Reconciler) setStage(u *ztv1.RevisionUpgrade, stage string) {
	if u.Status.StepStage == stage {
		return
	}
	u.Status.StepStage = stage
	u.Status.Message = fmt.Sprintf("step %d: %s", u.Status.CurrentStep, stage)
	r.Recorder.Eventf(u, eventNormal, "Stage", "step %d: %s", u.Status.CurrentStep, stage)
	now := metav1.NewTime(r.Clock.Now())
	u.Status.StepStartedAt = &now
}

func (r *Reconciler) setPhase(u *ztv1.RevisionUpgrade, p ztv1.Phase) {
	if u.Status.Phase == p {
		return
	}
	r.Recorder.Eventf(u, eventNormal, string(p), "phase %s → %s", phaseOrNone(u.Status.Phase), p)
	u.Status.Phase = p
}

func phaseOrNone(p ztv1.Phase) string {
	if p == "" {
		return "None"
	}
	return string(p)
}

// setCondition sets a condition and reports whether it changed.
func setCondition(u *ztv1.RevisionUpgrade, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	return meta.SetStatusCondition(&u.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: u.Generation,
	})
}
