package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Stage is what the current step (or the rollback) of an upgrade does now, recorded
// in status.stepStage. The orchestrator writes these; the CLI and people read them.
type Stage string

// The stages of an Ambient upgrade's step, in order.
const (
	// StagePinning (step 0 only) pins each revision's ztunnel DaemonSet and the
	// workloads to their revision's nodes.
	StagePinning Stage = "Pinning"
	// StageMovingNodes swaps the ztunnel of the step's nodes.
	StageMovingNodes Stage = "MovingNodes"
	// StageVerifying waits for the canary workloads and the agents' proof.
	StageVerifying Stage = "Verifying"
	// StageShiftingTraffic writes the step's traffic to the route.
	StageShiftingTraffic Stage = "ShiftingTraffic"
	// StageAnalysing waits for the gateway to accept the route and runs the gates.
	StageAnalysing Stage = "Analysing"
)

// The stages of a Sidecar upgrade's step.
const (
	// StageMovingNamespaces relabels the step's namespaces and restarts their
	// workloads, one namespace at a time.
	StageMovingNamespaces Stage = "MovingNamespaces"
)

// Stages both modes share.
const (
	// StagePausing holds after a step's work: absent pause goes on, a duration
	// waits, {} waits for a promote.
	StagePausing Stage = "Pausing"
	// StageDone: the upgrade ended (Succeeded or RolledBack).
	StageDone Stage = "Done"
)

// The stages of a rollback, in order (Ambient: route, nodes, pins, canary pods;
// Sidecar: namespaces).
const (
	StageRestoringRoute      Stage = "RestoringRoute"
	StageRestoringNodes      Stage = "RestoringNodes"
	StageRestoringPins       Stage = "RestoringPins"
	StageEvictingCanaryPods  Stage = "EvictingCanaryPods"
	StageRestoringNamespaces Stage = "RestoringNamespaces"
)

// Terminal reports whether an upgrade in phase p has ended: nothing moves any more.
func (p Phase) Terminal() bool {
	return p == PhaseSucceeded || p == PhaseRolledBack || p == PhaseFailed
}

// Reasons of the conditions of a RevisionUpgrade (metav1.Condition.Reason). Users,
// docs and the CLI match on them: add freely, rename none.
const (
	// Ready=True.
	ReasonPreflightPassed = "PreflightPassed"
	// Ready=False: the spec does not fit the cluster (a refusal; nothing changed).
	ReasonInvalidSpec = "InvalidSpec"
	// Ready=False: another upgrade in progress changes the same nodes, ztunnel
	// DaemonSets, route or namespaces; this one starts by itself when that one ends.
	ReasonWaitingForUpgrade = "WaitingForUpgrade"

	// Progressing.
	ReasonStarted   = "Started"
	ReasonSucceeded = "Succeeded"

	// Paused.
	ReasonPausedByRequest = "PausedByRequest"
	ReasonResumed         = "Resumed"
	ReasonAwaitingPromote = "AwaitingPromote"
	ReasonPromoted        = "Promoted"
	// ReasonRouteDrift: someone else changed what ztcanary set on the route; the
	// upgrade holds until it is put back or aborted.
	ReasonRouteDrift    = "RouteDrift"
	ReasonDriftResolved = "DriftResolved"

	// Verified.
	ReasonWaveVerified = "WaveVerified"

	// RolledBack.
	ReasonRollingBack = "RollingBack"
	ReasonRolledBack  = "RolledBack"
	// ReasonIncomplete: the rollback ended, but status.unrestored lists what it
	// could not restore.
	ReasonIncomplete = "Incomplete"

	// Degraded.
	ReasonReconcileError = "ReconcileError"
	ReasonRecovered      = "Recovered"

	// Gateways (Sidecar mode).
	ReasonInventoried = "Inventoried"
)

// FinalizerRollback is the finalizer the orchestrator puts on an upgrade before it
// moves anything: deleting an upgrade in progress rolls it back (as an abort does)
// before the object goes; a finished or never-started upgrade goes at once. With no
// orchestrator running (uninstalled), remove it by hand to delete an upgrade:
// kubectl patch ru NAME --type merge -p '{"metadata":{"finalizers":null}}'.
const FinalizerRollback = "ztcanary.io/rollback"

// Reasons a rollback starts (the Progressing=False condition, an Event and the
// ztcanary_rollbacks_total label).
const (
	ReasonAborted              = "Aborted"
	ReasonDeleted              = "Deleted"
	ReasonPinningTimedOut      = "PinningTimedOut"
	ReasonStepTimedOut         = "StepTimedOut"
	ReasonVerificationTimedOut = "VerificationTimedOut"
	ReasonVerificationFailed   = "VerificationFailed"
	ReasonTrafficFailed        = "TrafficFailed"
	ReasonRouteNotAccepted     = "RouteNotAccepted"
	ReasonGateFailed           = "GateFailed"
	ReasonNamespaceTimedOut    = "NamespaceTimedOut"
	ReasonInjectionFailed      = "InjectionFailed"
)

// StageStart is when the current stage began (an upgrade written by an older
// orchestrator recorded it in stepStartedAt, which now marks the step's start).
func (s *RevisionUpgradeStatus) StageStart() *metav1.Time {
	if s.StageStartedAt != nil {
		return s.StageStartedAt
	}
	return s.StepStartedAt
}
