package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Stages of a Sidecar upgrade's step (with StagePausing) and of its rollback.
const (
	StageMovingNamespaces    = "MovingNamespaces"
	StageRestoringNamespaces = "RestoringNamespaces"
)

// reconcileSidecar drives a Sidecar-mode upgrade: namespace waves instead of node
// waves. Per namespace, in order: record its injection labels, relabel it
// (istio-injection removed, istio.io/rev=to), restart its workloads a bounded number
// at a time through their pod template, and verify that every new pod carries the
// to proxy, before the next namespace. As in Ambient mode, every decision is in
// status before it is acted on.
func (r *Reconciler) reconcileSidecar(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	if u.Status.Phase == ztv1.PhaseRollingBack {
		return r.rollbackSidecar(ctx, log, u)
	}
	if u.Annotations[ztv1.AnnotationAbort] == "true" && u.Status.Phase != "" && u.Status.Phase != ztv1.PhasePending {
		r.startSidecarRollback(u, "Aborted", "aborted by request (annotation "+ztv1.AnnotationAbort+")")
		return ctrl.Result{}, nil
	}
	switch u.Status.Phase {
	case "", ztv1.PhasePending:
		return r.startSidecar(ctx, log, u)
	}
	if u.Annotations[ztv1.AnnotationPause] == "true" {
		r.setPhase(u, ztv1.PhasePaused)
		setCondition(u, ztv1.ConditionPaused, metav1.ConditionTrue, "PausedByRequest", "held by annotation "+ztv1.AnnotationPause+"=true; remove it (ztcanary resume) to go on")
		u.Status.Message = "paused by request"
		return ctrl.Result{}, nil
	}
	if u.Status.Phase == ztv1.PhasePaused && u.Status.StepStage != StagePausing {
		r.setPhase(u, ztv1.PhaseProgressing)
		setCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, "Resumed", "resumed")
	}
	i := int(u.Status.CurrentStep)
	switch u.Status.StepStage {
	case StageMovingNamespaces:
		return r.moveNamespaces(ctx, log, u, i)
	case StagePausing:
		return r.pauseSidecar(u, i)
	}
	return ctrl.Result{}, fmt.Errorf("unknown stage %q", u.Status.StepStage)
}

// startSidecarRollback is startRollback for a Sidecar upgrade: no route to restore,
// so the rollback begins with the namespaces.
func (r *Reconciler) startSidecarRollback(u *ztv1.RevisionUpgrade, reason, msg string) {
	r.startRollback(u, reason, msg)
	if u.Status.Phase == ztv1.PhaseRollingBack {
		u.Status.StepStage = StageRestoringNamespaces
	}
}

// startSidecar checks the spec and the cluster, resolves the namespaces once and
// records them. Any failure is the Ready condition and nothing changes.
func (r *Reconciler) startSidecar(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade) (ctrl.Result, error) {
	u.Status.Phase = ztv1.PhasePending
	scope, err := r.preflightSidecar(ctx, u)
	if err == nil {
		err = validateSidecarPlan(&u.Spec, len(scope))
	}
	if err != nil {
		var pf *preflightError
		if errors.As(err, &pf) {
			r.refuse(u, pf.reason, pf.Error())
			return ctrl.Result{RequeueAfter: preflightRetry}, nil
		}
		return ctrl.Result{}, err
	}
	inScope := map[string]bool{}
	for _, n := range scope {
		inScope[n.Name] = true
	}
	gateways, err := r.gatewayInventory(ctx, inScope)
	if err != nil {
		return ctrl.Result{}, err
	}
	u.Status.Namespaces = scopeNamespaces(scope)
	u.Status.TotalNamespaces = int32(len(scope))
	u.Status.Gateways = gateways
	u.Status.CurrentStep = 0
	r.setStage(u, StageMovingNamespaces)
	r.setPhase(u, ztv1.PhaseProgressing)
	setCondition(u, ztv1.ConditionReady, metav1.ConditionTrue, "PreflightPassed", fmt.Sprintf("%d namespaces in scope; istiod-%s is ready and its injector selects them once relabelled", len(scope), u.Spec.To))
	setCondition(u, ztv1.ConditionGateways, metav1.ConditionTrue, "Inventoried", gatewaySummary(gateways, u.Spec.To))
	setCondition(u, ztv1.ConditionProgressing, metav1.ConditionTrue, "Started", "step 0 of "+strconv.Itoa(len(u.Spec.Steps)))
	u.Status.Message = "starting"
	log.Info("sidecar upgrade started", zap.Int("namespaces", len(scope)), zap.String("from", u.Spec.From), zap.String("to", u.Spec.To))
	return ctrl.Result{}, nil
}

// targetNamespaces resolves a step's namespace count against the scope, like nodes.
func targetNamespaces(step ztv1.Step, total int) (int, error) {
	n := intstr.FromInt32(0)
	if step.Namespaces != nil {
		n = *step.Namespaces
	}
	return targetNodes(ztv1.Step{Nodes: n}, total)
}

// validateSidecarPlan checks what the schema cannot: percentages against the scope.
func validateSidecarPlan(spec *ztv1.RevisionUpgradeSpec, total int) error {
	prev := 0
	for i, st := range spec.Steps {
		n, err := targetNamespaces(st, total)
		if err != nil {
			return refused(reasonInvalid, "spec.steps[%d].namespaces: %v", i, err)
		}
		if n < prev {
			return refused(reasonInvalid, "spec.steps[%d].namespaces: %s is %d of %d namespaces, fewer than the %d of the step before; namespace counts must never decrease", i, st.Namespaces.String(), n, total, prev)
		}
		prev = n
	}
	if prev < total {
		return refused(reasonInvalid, "spec.steps: the last step moves %d of %d namespaces; end with namespaces: 100%% so the upgrade completes", prev, total)
	}
	return nil
}

// scopeNamespaces builds the status entries of the namespaces in scope, by name.
func scopeNamespaces(nss []corev1.Namespace) []ztv1.NamespaceStatus {
	out := make([]ztv1.NamespaceStatus, 0, len(nss))
	for _, n := range nss {
		out = append(out, ztv1.NamespaceStatus{Name: n.Name, Step: -1, Phase: ztv1.NodeStable})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func countCanaryNamespaces(u *ztv1.RevisionUpgrade) int32 {
	n := int32(0)
	for _, s := range u.Status.Namespaces {
		if s.Phase == ztv1.NodeCanary {
			n++
		}
	}
	return n
}

// moveNamespaces assigns the step's namespaces (recording the choice first), then
// drives the first assigned namespace that is not on the to revision yet: one
// namespace at a time, each verified before the next starts.
func (r *Reconciler) moveNamespaces(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	want, err := targetNamespaces(u.Spec.Steps[i], len(u.Status.Namespaces))
	if err != nil {
		return ctrl.Result{}, err
	}
	assigned, added := 0, 0
	for j := range u.Status.Namespaces {
		n := &u.Status.Namespaces[j]
		if n.Step >= 0 && n.Step <= int32(i) {
			assigned++
		}
	}
	for j := range u.Status.Namespaces {
		n := &u.Status.Namespaces[j]
		if assigned >= want {
			break
		}
		if n.Step < 0 {
			n.Step = int32(i)
			assigned++
			added++
		}
	}
	if added > 0 {
		u.Status.Message = fmt.Sprintf("step %d: moving %d more namespaces to %s", i, added, u.Spec.To)
		return ctrl.Result{}, nil // the choice is recorded before any namespace is touched
	}
	for j := range u.Status.Namespaces {
		n := &u.Status.Namespaces[j]
		if n.Step < 0 || n.Step > int32(i) || n.Phase == ztv1.NodeCanary {
			continue
		}
		return r.driveNamespace(ctx, log, u, i, n)
	}
	u.Status.CanaryNamespaces = countCanaryNamespaces(u)
	r.setStage(u, StagePausing)
	return ctrl.Result{}, nil
}

// driveNamespace takes one namespace one action further towards the to revision.
func (r *Reconciler) driveNamespace(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade, i int, n *ztv1.NamespaceStatus) (ctrl.Result, error) {
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, client.ObjectKey{Name: n.Name}, &ns); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("get namespace %s: %w", n.Name, err)
		}
		n.Phase, n.Verified = ztv1.NodeCanary, false
		r.Recorder.Eventf(u, eventWarning, "NamespaceGone", "namespace %s was deleted before it moved", n.Name)
		return ctrl.Result{}, nil
	}
	if n.Phase == ztv1.NodeStable {
		// Record the labels to restore before changing them; the namespace's timer
		// starts now.
		n.OriginalLabels = injectionLabels(ns.Labels)
		n.Phase = ztv1.NodeMoving
		now := metav1.NewTime(r.Clock.Now())
		u.Status.StepStartedAt = &now
		u.Status.Message = fmt.Sprintf("step %d: moving namespace %s to %s", i, n.Name, u.Spec.To)
		r.Recorder.Eventf(u, eventNormal, "NamespaceMoving", "namespace %s: %s=%s, restarting its workloads", n.Name, revisionKey, u.Spec.To)
		return ctrl.Result{}, nil
	}
	if r.timedOut(u) {
		r.startSidecarRollback(u, "NamespaceTimedOut", fmt.Sprintf("namespace %s did not move to %s within %s: %s", n.Name, u.Spec.To, r.timeout(u), u.Status.Message))
		return ctrl.Result{}, nil
	}
	if err := r.setNamespaceLabels(ctx, &ns, map[string]*string{injectionLabel: nil, revisionKey: &u.Spec.To}); err != nil {
		return ctrl.Result{}, err
	}
	ws, err := r.namespaceWorkloads(ctx, n.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	waiting, failure, err := r.advanceRestarts(ctx, log, u, n, ws)
	if err != nil {
		return ctrl.Result{}, err
	}
	if failure != "" {
		r.startSidecarRollback(u, "InjectionFailed", "namespace "+n.Name+": "+failure)
		return ctrl.Result{}, nil
	}
	if len(waiting) > 0 {
		u.Status.Message = fmt.Sprintf("step %d: namespace %s: waiting for %s", i, n.Name, summarize(waiting))
		return ctrl.Result{RequeueAfter: defaultRequeue}, nil
	}
	n.Phase, n.Verified = ztv1.NodeCanary, true
	u.Status.CanaryNamespaces = countCanaryNamespaces(u)
	r.Recorder.Eventf(u, eventNormal, "NamespaceMoved", "namespace %s: %d workloads restarted, every pod carries the %s proxy", n.Name, len(n.Workloads), u.Spec.To)
	log.Info("namespace moved", zap.String("namespace", n.Name), zap.String("revision", u.Spec.To), zap.Int("step", i))
	return ctrl.Result{}, nil
}

// advanceRestarts takes each workload of a namespace one action further towards the
// to proxy: record a restart (at most maxConcurrentRestarts in flight), write it,
// wait for its rollout, mark it done. It returns what is still awaited, or why the
// gate failed (a new pod without the to proxy).
func (r *Reconciler) advanceRestarts(ctx context.Context, log *zap.Logger, u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus, ws []*sidecarWorkload) (waiting []string, failure string, err error) {
	target := restartValue(u, u.Spec.To)
	limit := maxRestarts(u)
	recorded := map[string]int{}
	inFlight := 0
	for k, rec := range n.Workloads {
		recorded[rec.Kind+"/"+rec.Name] = k
		if !rec.Done {
			inFlight++
		}
	}
	for _, w := range ws {
		k, isRecorded := recorded[w.key()]
		if !isRecorded {
			if !needsMove(w, u.Spec.To) {
				continue
			}
			if inFlight >= limit {
				waiting = append(waiting, w.key()+": queued")
				continue
			}
			// Record the restart, and what to write back on rollback, before it.
			n.Workloads = append(n.Workloads, ztv1.RestartRecord{Kind: w.kind, Name: w.name, Original: templateRestart(w.template)})
			inFlight++
			waiting = append(waiting, w.key()+": restart recorded")
			continue
		}
		rec := &n.Workloads[k]
		if rec.Done {
			continue
		}
		state, msg := judgeForward(w, target, u.Spec.To)
		switch state {
		case restartNeeded:
			if err := r.setRestart(ctx, w, &target); err != nil {
				return nil, "", err
			}
			log.Info("workload restarted", zap.String("namespace", n.Name), zap.String("workload", w.key()), zap.String("revision", u.Spec.To))
			waiting = append(waiting, w.key()+": restarting")
		case restartFailed:
			return nil, msg, nil
		case restartRolling:
			if err := r.replaceOnDelete(ctx, w, &target); err != nil {
				return nil, "", err
			}
			waiting = append(waiting, msg)
		case restartDone:
			rec.Done = true
			inFlight--
		}
	}
	// A recorded workload that no longer exists has nothing left to restart.
	live := map[string]bool{}
	for _, w := range ws {
		live[w.key()] = true
	}
	for k := range n.Workloads {
		if !live[n.Workloads[k].Kind+"/"+n.Workloads[k].Name] {
			n.Workloads[k].Done = true
		}
	}
	return waiting, "", nil
}

// maxRestarts is the bound on workloads restarting at once in a namespace.
func maxRestarts(u *ztv1.RevisionUpgrade) int {
	if n := int(u.Spec.Sidecar.MaxConcurrentRestarts); n > 0 {
		return n
	}
	return 2
}

// setNamespaceLabels sets (nil: removes) labels of a namespace, writing only when
// one differs.
func (r *Reconciler) setNamespaceLabels(ctx context.Context, ns *corev1.Namespace, want map[string]*string) error {
	patch := map[string]any{}
	for k, v := range want {
		cur, ok := ns.Labels[k]
		switch {
		case v == nil && ok:
			patch[k] = nil
		case v != nil && (!ok || cur != *v):
			patch[k] = *v
		}
	}
	if len(patch) == 0 {
		return nil
	}
	countWrite("namespace")
	b, err := json.Marshal(labelPatch(patch))
	if err != nil {
		return err
	}
	if err := r.Client.Patch(ctx, ns, client.RawPatch(types.MergePatchType, b)); err != nil {
		return fmt.Errorf("label namespace %s: %w", ns.Name, err)
	}
	return nil
}

// pauseSidecar holds after a step like pause does for nodes.
func (r *Reconciler) pauseSidecar(u *ztv1.RevisionUpgrade, i int) (ctrl.Result, error) {
	step := u.Spec.Steps[i]
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
			u.Status.Message = fmt.Sprintf("step %d done (%d of %d namespaces on %s); waiting for promote", i, u.Status.CanaryNamespaces, u.Status.TotalNamespaces, u.Spec.To)
			return ctrl.Result{}, nil
		}
	}
	if u.Status.Phase == ztv1.PhasePaused {
		r.setPhase(u, ztv1.PhaseProgressing)
		setCondition(u, ztv1.ConditionPaused, metav1.ConditionFalse, "Promoted", fmt.Sprintf("step %d promoted", i))
	}
	if i+1 < len(u.Spec.Steps) {
		u.Status.CurrentStep = int32(i + 1)
		r.setStage(u, StageMovingNamespaces)
		u.Status.Message = fmt.Sprintf("step %d of %d", i+1, len(u.Spec.Steps))
		return ctrl.Result{}, nil
	}
	r.setPhase(u, ztv1.PhaseSucceeded)
	r.setStage(u, "Done")
	setCondition(u, ztv1.ConditionProgressing, metav1.ConditionFalse, "Succeeded", "every step done")
	setCondition(u, ztv1.ConditionComplete, metav1.ConditionTrue, "Succeeded", fmt.Sprintf("all %d namespaces run %s", len(u.Status.Namespaces), u.Spec.To))
	u.Status.Message = fmt.Sprintf("done: all %d namespaces on %s", len(u.Status.Namespaces), u.Spec.To)
	return ctrl.Result{}, nil
}
