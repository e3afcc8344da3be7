package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NodeStrategy says how a node's ztunnel is swapped from one revision to the other.
// +kubebuilder:validation:Enum=Drain;Handoff
type NodeStrategy string

const (
	// NodeStrategyDrain cordons the node, evicts its ambient pods (honouring
	// PodDisruptionBudgets), swaps the ztunnel and uncordons: no connection is reset.
	NodeStrategyDrain NodeStrategy = "Drain"
	// NodeStrategyHandoff starts the new ztunnel beside the old one and removes the old
	// one only once the new one is ready: no pod moves and new connections never fail;
	// long-lived connections reset after the old ztunnel's drain period.
	NodeStrategyHandoff NodeStrategy = "Handoff"
)

// Mode says what an upgrade moves from one revision to the other.
// +kubebuilder:validation:Enum=Ambient;Sidecar
type Mode string

const (
	// ModeAmbient moves nodes: each node's ztunnel, in node waves.
	ModeAmbient Mode = "Ambient"
	// ModeSidecar moves namespaces: each namespace's injection label, then its
	// workloads are restarted so the injector gives their pods the new proxy.
	ModeSidecar Mode = "Sidecar"
)

// AgentVerification says whether a wave needs the node agents' eBPF proof.
// +kubebuilder:validation:Enum=Required;Optional;Disabled
type AgentVerification string

const (
	// AgentVerificationRequired waits for every canary node's NodeCapture to show the
	// new ztunnel capturing every ambient pod; a mismatch fails the gate.
	AgentVerificationRequired AgentVerification = "Required"
	// AgentVerificationOptional uses NodeCapture reports when agents write them and
	// records what they show, but does not wait for them.
	AgentVerificationOptional AgentVerification = "Optional"
	// AgentVerificationDisabled ignores NodeCapture.
	AgentVerificationDisabled AgentVerification = "Disabled"
)

// RevisionUpgradeSpec is the desired upgrade: which revision replaces which, on which
// nodes, in which steps, with which traffic and gates.
// +kubebuilder:validation:XValidation:rule="self.from != self.to",message="spec.to must differ from spec.from: set spec.to to the revision to upgrade to",fieldPath=".to"
// +kubebuilder:validation:XValidation:rule="self.mode != 'Sidecar' || self.steps.all(s, has(s.namespaces))",message="spec.steps: every step of a Sidecar upgrade sets namespaces (a count or a percentage of the namespaces in scope)",fieldPath=".steps"
// +kubebuilder:validation:XValidation:rule="self.mode != 'Sidecar' || self.steps.all(s, !has(s.nodes))",message="spec.steps: a Sidecar upgrade moves namespaces, not nodes: replace nodes with namespaces",fieldPath=".steps"
// +kubebuilder:validation:XValidation:rule="self.mode != 'Sidecar' || self.steps.all(s, !has(s.traffic))",message="spec.steps: traffic is not supported in Sidecar mode (the workloads keep their Services; only their proxies change): remove it",fieldPath=".steps"
// +kubebuilder:validation:XValidation:rule="self.mode == 'Sidecar' || self.steps.all(s, !has(s.namespaces))",message="spec.steps: namespaces is for mode Sidecar; an Ambient upgrade moves nodes: replace namespaces with nodes, or set spec.mode: Sidecar",fieldPath=".steps"
// +kubebuilder:validation:XValidation:rule="self.mode != 'Sidecar' || (!has(self.workloads) && !has(self.route) && !has(self.nodeSelector))",message="spec.workloads, spec.route and spec.nodeSelector are for mode Ambient; a Sidecar upgrade selects namespaces (spec.namespaceSelector) and restarts their workloads"
// +kubebuilder:validation:XValidation:rule="self.mode == 'Sidecar' || !has(self.namespaceSelector)",message="spec.namespaceSelector is for mode Sidecar; an Ambient upgrade selects nodes (spec.nodeSelector): remove it, or set spec.mode: Sidecar",fieldPath=".namespaceSelector",reason="FieldValueForbidden"
type RevisionUpgradeSpec struct {
	// Mode is what the upgrade moves: Ambient (nodes and their ztunnel) or Sidecar
	// (namespaces, whose workloads are restarted with the new revision's sidecar).
	// +kubebuilder:default=Ambient
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.mode cannot change once the upgrade exists; create a new RevisionUpgrade"
	// +optional
	Mode Mode `json:"mode,omitempty"`

	// NamespaceSelector selects the namespaces of a Sidecar upgrade. Default: the
	// namespaces whose pods the from revision's injection webhooks select today
	// (istio.io/rev=from, and istio-injection=enabled when from owns the default
	// injection). The scope is resolved once, when the upgrade starts, and kept in
	// status.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// Sidecar tunes a Sidecar upgrade.
	// +kubebuilder:default={}
	// +optional
	Sidecar SidecarSpec `json:"sidecar,omitempty"`

	// From is the stable revision: the value of the node label (istio.io/rev) on the
	// nodes before the upgrade.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')",message="spec.from must be a revision as the istio.io/rev label writes it (e.g. 1-18-0): letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.from cannot change once the upgrade exists; create a new RevisionUpgrade"
	From string `json:"from"`

	// To is the canary revision.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')",message="spec.to must be a revision as the istio.io/rev label writes it (e.g. 1-18-1): letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.to cannot change once the upgrade exists; create a new RevisionUpgrade"
	To string `json:"to"`

	// NodeLabel is the node label key that pins revisions.
	// +kubebuilder:default="istio.io/rev"
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	// +optional
	NodeLabel string `json:"nodeLabel,omitempty"`

	// NodeSelector selects the nodes in scope. Default: the nodes whose NodeLabel is
	// From. The scope is resolved once, when the upgrade starts, and kept in status.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// NodeStrategy is how each node's ztunnel is swapped.
	// +kubebuilder:default=Drain
	// +optional
	NodeStrategy NodeStrategy `json:"nodeStrategy,omitempty"`

	// Ztunnel says where the ztunnel DaemonSets of both revisions live.
	// +kubebuilder:default={}
	// +optional
	Ztunnel ZtunnelSpec `json:"ztunnel,omitempty"`

	// Workloads are the namespaces whose Deployments and StatefulSets are pinned to
	// the nodes of a revision.
	// +kubebuilder:validation:MaxItems=64
	// +listType=map
	// +listMapKey=namespace
	// +optional
	Workloads []WorkloadPin `json:"workloads,omitempty"`

	// Route is the traffic to shift from the stable to the canary workloads.
	// +optional
	Route *RouteSpec `json:"route,omitempty"`

	// Steps are the waves, in order. Node counts and weights never decrease, and a
	// header-test step, if any, comes before every weight step. (Percentages, which
	// only compare with counts once the scope is known, are checked by the
	// orchestrator and refused through the Ready condition.)
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.filter(s, has(s.traffic) && has(s.traffic.weight)).map(s, s.traffic.weight).isSorted()",message="spec.steps: traffic weights must never decrease from one step to the next"
	// +kubebuilder:validation:XValidation:rule="self.filter(s, has(s.traffic) && has(s.traffic.header)).size() <= 1",message="spec.steps: at most one step may set a header-test rule"
	// +kubebuilder:validation:XValidation:rule="self.filter(s, has(s.traffic)).map(s, has(s.traffic.header) ? 0 : 1).isSorted()",message="spec.steps: the header-test step must come before every weight step"
	// +kubebuilder:validation:XValidation:rule="self.map(s, !has(s.nodes) ? 0 : type(s.nodes) == int ? int(s.nodes) : -1).filter(n, n >= 0).isSorted()",message="spec.steps: node counts must never decrease from one step to the next"
	// +kubebuilder:validation:XValidation:rule="self.filter(s, has(s.namespaces) && type(s.namespaces) == int).map(s, int(s.namespaces)).isSorted()",message="spec.steps: namespace counts must never decrease from one step to the next"
	Steps []Step `json:"steps"`

	// Analysis holds the gates run after each step.
	// +optional
	Analysis Analysis `json:"analysis,omitempty"`

	// Rollback says what happens when a gate fails or a step times out.
	// +kubebuilder:default={}
	// +optional
	Rollback RollbackSpec `json:"rollback,omitempty"`

	// StepTimeout bounds each step's work (moving its nodes, verifying them,
	// shifting traffic and the gates; not its pause): a step not done in time is
	// rolled back. In Sidecar mode it bounds each namespace's move.
	// +kubebuilder:default="10m"
	// +optional
	StepTimeout *metav1.Duration `json:"stepTimeout,omitempty"`
}

// SidecarSpec tunes a Sidecar upgrade.
type SidecarSpec struct {
	// IstiodNamespace is where the istiod Deployments (istiod-<revision>) and the
	// injector's configuration live.
	// +kubebuilder:default="istio-system"
	// +kubebuilder:validation:MaxLength=63
	// +optional
	IstiodNamespace string `json:"istiodNamespace,omitempty"`

	// MaxConcurrentRestarts bounds how many workloads of a namespace restart at
	// once; each one rolls out by its own strategy (maxSurge, maxUnavailable,
	// partition).
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxConcurrentRestarts int32 `json:"maxConcurrentRestarts,omitempty"`
}

// ZtunnelSpec locates the ztunnel DaemonSets (Istio's ztunnel chart: pods labelled
// app=ztunnel, the revision in the istio.io/rev annotation).
type ZtunnelSpec struct {
	// Namespace of the ztunnel DaemonSets of both revisions.
	// +kubebuilder:default="istio-system"
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// HandoffLabel is the transitional node label key that the `to` ztunnel
	// DaemonSet also matches during a Handoff (value: the `to` revision).
	// +kubebuilder:default="ztcanary.io/handoff"
	// +optional
	HandoffLabel string `json:"handoffLabel,omitempty"`
}

// WorkloadPin pins every Deployment and StatefulSet of a namespace to the nodes of a
// revision.
type WorkloadPin struct {
	// Namespace holding the workloads.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`
	// Revision whose nodes the workloads run on: spec.from or spec.to.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Revision string `json:"revision"`
}

// ObjectRef names a namespaced object.
type ObjectRef struct {
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// BackendRef names a Service port that a route sends to.
type BackendRef struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// Subset is the DestinationRule subset, for a VirtualService route.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Subset string `json:"subset,omitempty"`
}

// VirtualServiceRef names an Istio VirtualService and the DestinationRule that
// defines the subsets it shifts traffic between (spec.route.stable.subset and
// spec.route.canary.subset, two subsets of one Service).
type VirtualServiceRef struct {
	// Namespace of the VirtualService and the DestinationRule.
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
	// Name of the VirtualService.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// DestinationRule, in the same namespace, defines the stable and canary subsets.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	DestinationRule string `json:"destinationRule"`
	// Host is the destination host the VirtualService's routes send to, exactly as
	// written in them (default: the name of the stable Service).
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Host string `json:"host,omitempty"`
}

// RouteSpec is the route whose traffic moves from the stable to the canary backend.
// +kubebuilder:validation:XValidation:rule="has(self.httpRoute) != has(self.virtualService)",message="spec.route: set exactly one of httpRoute and virtualService"
// +kubebuilder:validation:XValidation:rule="!has(self.virtualService) || (has(self.stable.subset) && has(self.canary.subset) && self.stable.subset != self.canary.subset)",message="spec.route: a virtualService route shifts traffic between two DestinationRule subsets: set stable.subset and canary.subset, each a different subset"
// +kubebuilder:validation:XValidation:rule="!has(self.virtualService) || (self.stable.__namespace__ == self.canary.__namespace__ && self.stable.name == self.canary.name)",message="spec.route: with virtualService, stable and canary are two subsets of one Service: give them the same namespace and name"
// +kubebuilder:validation:XValidation:rule="!has(self.httpRoute) || (!has(self.stable.subset) && !has(self.canary.subset))",message="spec.route: subset is for virtualService routes; an httpRoute sends to whole Services, so remove stable.subset and canary.subset"
type RouteSpec struct {
	// HTTPRoute is a Gateway API HTTPRoute.
	// +optional
	HTTPRoute *ObjectRef `json:"httpRoute,omitempty"`
	// VirtualService is an Istio VirtualService whose routes to the stable subset
	// get the canary subset's weight.
	// +optional
	VirtualService *VirtualServiceRef `json:"virtualService,omitempty"`
	// Stable is the backend serving the from revision's workloads.
	Stable BackendRef `json:"stable"`
	// Canary is the backend serving the to revision's workloads.
	Canary BackendRef `json:"canary"`
	// CleanUpOnSuccess leaves a route with only the canary backend and no test rule
	// once the upgrade succeeds.
	// +optional
	CleanUpOnSuccess bool `json:"cleanUpOnSuccess,omitempty"`
}

// Step is one wave: nodes (or, in Sidecar mode, namespaces) moved, traffic set,
// then an optional pause.
type Step struct {
	// Nodes is how many nodes of the scope run the to revision after this step: a
	// count, or a percentage of the nodes in scope (rounded up). Absent means 0
	// (Ambient mode); a Sidecar upgrade sets namespaces instead.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=4
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? int(self) >= 0 : string(self).matches('^(100|[1-9]?[0-9])%$')",message="nodes must be a count of at least 0 or a percentage from 0% to 100%"
	// +optional
	Nodes intstr.IntOrString `json:"nodes,omitzero"`
	// Namespaces is how many namespaces of a Sidecar upgrade's scope run the to
	// revision after this step: a count, or a percentage of the namespaces in
	// scope (rounded up). Namespaces move one at a time, each verified before the
	// next.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=4
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? int(self) >= 0 : string(self).matches('^(100|[1-9]?[0-9])%$')",message="namespaces must be a count of at least 0 or a percentage from 0% to 100%"
	// +optional
	Namespaces *intstr.IntOrString `json:"namespaces,omitempty"`
	// Traffic is what the route does once the step's nodes are verified.
	// +optional
	Traffic *StepTraffic `json:"traffic,omitempty"`
	// Pause after the step. Absent: go on at once. {duration: 30s}: wait. {}: wait
	// for a manual promote.
	// +optional
	Pause *Pause `json:"pause,omitempty"`
}

// StepTraffic is a step's route change: a header-test rule or a canary weight.
// +kubebuilder:validation:XValidation:rule="has(self.header) != has(self.weight)",message="traffic: set exactly one of header (the test rule) and weight (the canary's share); for both, use two steps"
type StepTraffic struct {
	// Header adds a rule sending requests with this header to the canary backend.
	// +optional
	Header *HeaderMatch `json:"header,omitempty"`
	// Weight is the canary backend's share of traffic, 0 to 100.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	Weight *int32 `json:"weight,omitempty"`
}

// HeaderMatch is an exact header match.
type HeaderMatch struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$`
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Value string `json:"value"`
}

// Pause holds the upgrade after a step.
type Pause struct {
	// Duration to wait; absent means wait for a manual promote.
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// Analysis holds the gates.
type Analysis struct {
	// TrafficTest sends requests after each traffic step and checks the split.
	// +optional
	TrafficTest *TrafficTest `json:"trafficTest,omitempty"`
	// AgentVerification says whether waves wait for the agents' eBPF proof.
	// +kubebuilder:default=Optional
	// +optional
	AgentVerification AgentVerification `json:"agentVerification,omitempty"`
}

// TrafficTest describes the traffic gate.
// +kubebuilder:validation:XValidation:rule="has(self.canaryHeader) != has(self.canaryBodyRegex)",message="spec.analysis.trafficTest: set exactly one of canaryHeader and canaryBodyRegex, to say how a canary answer is recognised"
type TrafficTest struct {
	// URL to send requests to (through the gateway).
	// +kubebuilder:validation:MinLength=1
	URL string `json:"url"`
	// Requests per test.
	// +kubebuilder:default=200
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +optional
	Requests int32 `json:"requests,omitempty"`
	// Concurrency of the test.
	// +kubebuilder:default=8
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Concurrency int32 `json:"concurrency,omitempty"`
	// MinSuccessRate is the lowest acceptable share of successful requests, in
	// percent.
	// +kubebuilder:default=99
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	MinSuccessRate int32 `json:"minSuccessRate,omitempty"`
	// CanaryHeader recognises a canary response by a response header (name=value).
	// +optional
	CanaryHeader *HeaderMatch `json:"canaryHeader,omitempty"`
	// CanaryBodyRegex recognises a canary response by its body: a response whose
	// body matches this regular expression (Go RE2 syntax, unanchored) is the
	// canary's. The orchestrator refuses a pattern that does not compile.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	CanaryBodyRegex string `json:"canaryBodyRegex,omitempty"`
}

// RollbackSpec says what happens on a failed gate or a timeout.
type RollbackSpec struct {
	// Automatic rolls everything back; false leaves the upgrade Failed where it is.
	// +kubebuilder:default=true
	// +optional
	Automatic *bool `json:"automatic,omitempty"`
}

// Phase is where an upgrade is.
// +kubebuilder:validation:Enum=Pending;Progressing;Paused;Succeeded;RollingBack;RolledBack;Failed
type Phase string

// The phases of an upgrade.
const (
	PhasePending     Phase = "Pending"
	PhaseProgressing Phase = "Progressing"
	PhasePaused      Phase = "Paused"
	PhaseSucceeded   Phase = "Succeeded"
	PhaseRollingBack Phase = "RollingBack"
	PhaseRolledBack  Phase = "RolledBack"
	PhaseFailed      Phase = "Failed"
)

// Condition types of a RevisionUpgrade.
const (
	// ConditionReady is True when preflight passed and the spec is acceptable.
	ConditionReady = "Ready"
	// ConditionProgressing is True while steps run.
	ConditionProgressing = "Progressing"
	// ConditionPaused is True while the upgrade waits for a duration or a promote.
	ConditionPaused = "Paused"
	// ConditionVerified is True when the last wave's nodes were verified.
	ConditionVerified = "Verified"
	// ConditionRolledBack is True once a rollback completed; its message says why.
	ConditionRolledBack = "RolledBack"
	// ConditionComplete is True when the upgrade succeeded.
	ConditionComplete = "Complete"
	// ConditionDegraded is True while reconcile passes fail with an error (the API
	// server refuses a write, a read fails) and are retried with backoff; its message
	// is the last error. False once a pass completes again.
	ConditionDegraded = "Degraded"
	// ConditionGateways (Sidecar mode) lists, when the upgrade starts, which
	// gateways' proxies run which revision and whether they move with their
	// namespace.
	ConditionGateways = "Gateways"
)

// Annotations the CLI sets to steer an upgrade.
const (
	// AnnotationPromote, set to any value, ends a manual pause.
	AnnotationPromote = "ztcanary.io/promote"
	// AnnotationPause, set to "true", holds the upgrade before its next action.
	AnnotationPause = "ztcanary.io/pause"
	// AnnotationAbort, set to "true", rolls the upgrade back.
	AnnotationAbort = "ztcanary.io/abort"
	// AnnotationRestart is set by ztcanary on a workload's pod template (Sidecar
	// mode) to restart it, like `kubectl rollout restart`; its value names the
	// revision and the upgrade. Rollback writes back the value it had before.
	AnnotationRestart = "ztcanary.io/restart"
)

// NodePhase is where one node is in its swap.
type NodePhase string

// The phases of a node.
const (
	NodeStable   NodePhase = "Stable"
	NodeMoving   NodePhase = "Moving"
	NodeCanary   NodePhase = "Canary"
	NodeRestored NodePhase = "Restored"
)

// NodeStatus is one node in scope.
type NodeStatus struct {
	// Name of the node.
	Name string `json:"name"`
	// OriginalRevision is the node label's value before the upgrade ("" if none).
	// +optional
	OriginalRevision string `json:"originalRevision,omitempty"`
	// Revision is the node label's value as ztcanary last set it.
	// +optional
	Revision string `json:"revision,omitempty"`
	// Step is the index of the step that moves this node, -1 while unplanned.
	Step int32 `json:"step"`
	// Phase of the node's swap.
	// +optional
	Phase NodePhase `json:"phase,omitempty"`
	// CapturedBy is the ztunnel revision the node's agent saw capturing its pods.
	// +optional
	CapturedBy string `json:"capturedBy,omitempty"`
	// Verified is true once the node's capture matched its revision.
	// +optional
	Verified bool `json:"verified,omitempty"`
	// WasCordoned records that the node was cordoned before ztcanary touched it, so
	// a Drain never uncordons a node someone else cordoned.
	// +optional
	WasCordoned bool `json:"wasCordoned,omitempty"`
}

// PinRecord is a workload's or ztunnel DaemonSet's nodeSelector value for the node
// label before the upgrade, so rollback restores it exactly.
type PinRecord struct {
	// Kind is DaemonSet, Deployment or StatefulSet.
	Kind string `json:"kind"`
	// Namespace of the object.
	Namespace string `json:"namespace"`
	// Name of the object.
	Name string `json:"name"`
	// Value of nodeSelector[nodeLabel] before the upgrade; absent when unset.
	// +optional
	Value *string `json:"value,omitempty"`
	// Affinity is the JSON of the pod template's affinity before the upgrade ("null"
	// when unset), recorded when ztcanary changes its node affinity (ztunnel
	// DaemonSets during a Handoff).
	// +optional
	Affinity string `json:"affinity,omitempty"`
	// UpdateStrategy is the JSON of a ztunnel DaemonSet's spec.updateStrategy before
	// the upgrade. ztcanary holds the DaemonSet at OnDelete while its template carries
	// the pinning, so pinning does not restart the ztunnel of every node at once, and
	// puts this back when the upgrade ends.
	// +optional
	UpdateStrategy string `json:"updateStrategy,omitempty"`
}

// NamespaceStatus is one namespace of a Sidecar upgrade.
type NamespaceStatus struct {
	// Name of the namespace.
	Name string `json:"name"`
	// Step is the index of the step that moves this namespace, -1 while unplanned.
	Step int32 `json:"step"`
	// Phase of the namespace's move (Stable, Moving, Canary, Restored), as for
	// nodes.
	// +optional
	Phase NodePhase `json:"phase,omitempty"`
	// OriginalLabels are the namespace's injection labels (istio-injection,
	// istio.io/rev) as they were just before ztcanary changed them; a key absent
	// here was absent. Rollback writes them back exactly.
	// +optional
	OriginalLabels map[string]string `json:"originalLabels,omitempty"`
	// StartedAt is when the namespace began to move: spec.stepTimeout bounds its
	// move from then.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`
	// Workloads are the workloads ztcanary restarted (or decided to restart), in
	// order, with what their pod template's restart annotation was before.
	// +optional
	Workloads []RestartRecord `json:"workloads,omitempty"`
	// Verified is true once every pod of the namespace's restarted workloads
	// carried the to revision's proxy.
	// +optional
	Verified bool `json:"verified,omitempty"`
}

// RestartRecord is one workload restarted so its pods get another proxy.
type RestartRecord struct {
	// Kind is Deployment, StatefulSet or DaemonSet.
	Kind string `json:"kind"`
	// Name of the workload.
	Name string `json:"name"`
	// Original is the pod template's ztcanary.io/restart annotation before the
	// upgrade; absent when it was unset. Rollback writes it back, which returns the
	// template (and, for a Deployment, its ReplicaSet) to what it was.
	// +optional
	Original *string `json:"original,omitempty"`
	// Done is true once the workload rolled out and all its pods carried the to
	// revision's proxy.
	// +optional
	Done bool `json:"done,omitempty"`
}

// GatewayStatus is a gateway proxy workload and the revision its pods run.
type GatewayStatus struct {
	// Namespace of the gateway.
	Namespace string `json:"namespace"`
	// Name of its workload (Deployment, StatefulSet, DaemonSet; the pod if none).
	Name string `json:"name"`
	// Revisions its pods run (from the injector's status annotation, else the
	// istio.io/rev label), comma-separated when they differ.
	// +optional
	Revision string `json:"revision,omitempty"`
	// Pods counts its running pods.
	Pods int32 `json:"pods"`
	// InScope is true when the gateway's namespace is in the upgrade's scope, so
	// its pods will be restarted onto the to revision too.
	// +optional
	InScope bool `json:"inScope,omitempty"`
}

// UnrestoredObject is an object a rollback could not restore, and why.
type UnrestoredObject struct {
	// Kind of the object (Node, HTTPRoute, VirtualService, DaemonSet, Deployment,
	// StatefulSet).
	Kind string `json:"kind"`
	// Namespace of the object ("" for a node).
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Name of the object.
	Name string `json:"name"`
	// Reason it was not restored.
	Reason string `json:"reason"`
}

// RevisionUpgradeStatus tells where the upgrade is and why it waits.
type RevisionUpgradeStatus struct {
	// ObservedGeneration is the generation last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase of the upgrade.
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// CurrentStep is the index of the step in progress (or the last one done).
	// +optional
	CurrentStep int32 `json:"currentStep"`
	// StepStage is what the current step does now: Pinning, MovingNodes,
	// Verifying, ShiftingTraffic, Analysing, Pausing (MovingNamespaces in Sidecar
	// mode), a rollback stage (RestoringRoute, RestoringNodes, RestoringPins,
	// EvictingCanaryPods, RestoringNamespaces), or Done.
	// +optional
	StepStage Stage `json:"stepStage,omitempty"`
	// StepStartedAt is when the current step began: spec.stepTimeout bounds the
	// step's work from then (its pause excluded).
	// +optional
	StepStartedAt *metav1.Time `json:"stepStartedAt,omitempty"`
	// StageStartedAt is when the current stage began (for pauses and durations).
	// +optional
	StageStartedAt *metav1.Time `json:"stageStartedAt,omitempty"`
	// CanaryNodes counts the nodes in scope labelled with the to revision.
	// +optional
	CanaryNodes int32 `json:"canaryNodes"`
	// TotalNodes counts the nodes in scope.
	// +optional
	TotalNodes int32 `json:"totalNodes"`
	// TrafficWeight is the canary backend's share of traffic now.
	// +optional
	TrafficWeight int32 `json:"trafficWeight"`
	// TrafficStep is the index of the last step whose traffic was set on the route
	// (absent: the route is untouched), so drift is judged against it.
	// +optional
	TrafficStep *int32 `json:"trafficStep,omitempty"`
	// Nodes in scope, resolved when the upgrade started, in the order they move.
	// +optional
	Nodes []NodeStatus `json:"nodes,omitempty"`
	// OriginalPins are the nodeSelector values before the upgrade.
	// +optional
	OriginalPins []PinRecord `json:"originalPins,omitempty"`
	// Namespaces in scope of a Sidecar upgrade, resolved when it started, in the
	// order they move.
	// +optional
	Namespaces []NamespaceStatus `json:"namespaces,omitempty"`
	// CanaryNamespaces counts the namespaces in scope moved to the to revision and
	// verified.
	// +optional
	CanaryNamespaces int32 `json:"canaryNamespaces,omitempty"`
	// TotalNamespaces counts the namespaces in scope.
	// +optional
	TotalNamespaces int32 `json:"totalNamespaces,omitempty"`
	// Gateways are the gateway proxies found when a Sidecar upgrade started, with
	// the revision each runs.
	// +optional
	Gateways []GatewayStatus `json:"gateways,omitempty"`
	// OriginalRoute is the route's spec before the upgrade.
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	OriginalRoute *runtime.RawExtension `json:"originalRoute,omitempty"`
	// Unrestored lists what a rollback could not restore (an object that no longer
	// exists); the RolledBack condition then has reason Incomplete.
	// +kubebuilder:validation:MaxItems=1024
	// +optional
	Unrestored []UnrestoredObject `json:"unrestored,omitempty"`
	// Message says, for a person, what the upgrade waits for or why it stopped.
	// +optional
	Message string `json:"message,omitempty"`
	// Conditions: Ready, Progressing, Paused, Verified, RolledBack, Complete, Degraded
	// (and Gateways in Sidecar mode).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// RevisionUpgrade moves the nodes in scope from one Istio revision to another in
// waves, shifting traffic and verifying each wave, and rolls back on failure.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ru;rus,categories=ztcanary
// +kubebuilder:subresource:status
// The plan's fields are immutable once the upgrade has started (the rules below run
// on status writes too, with the spec unchanged). spec.workloads has no such rule:
// CEL's == found two identical lists of its type (listType=map, two entries) unequal
// on a status write, and comparing their entries one by one was refused as too
// costly; rollback restores the pins recorded in status, whatever it says now.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.nodeLabel) == has(oldSelf.spec.nodeLabel) && (!has(self.spec.nodeLabel) || self.spec.nodeLabel == oldSelf.spec.nodeLabel))",message="spec.nodeLabel cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.nodeLabel",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.nodeSelector) == has(oldSelf.spec.nodeSelector) && (!has(self.spec.nodeSelector) || self.spec.nodeSelector == oldSelf.spec.nodeSelector))",message="spec.nodeSelector cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.nodeSelector",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.nodeStrategy) == has(oldSelf.spec.nodeStrategy) && (!has(self.spec.nodeStrategy) || self.spec.nodeStrategy == oldSelf.spec.nodeStrategy))",message="spec.nodeStrategy cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.nodeStrategy",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.ztunnel) == has(oldSelf.spec.ztunnel) && (!has(self.spec.ztunnel) || self.spec.ztunnel == oldSelf.spec.ztunnel))",message="spec.ztunnel cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.ztunnel",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.route) == has(oldSelf.spec.route) && (!has(self.spec.route) || self.spec.route == oldSelf.spec.route))",message="spec.route cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.route",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.steps) == has(oldSelf.spec.steps) && (!has(self.spec.steps) || self.spec.steps == oldSelf.spec.steps))",message="spec.steps cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.steps",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (has(self.spec.namespaceSelector) == has(oldSelf.spec.namespaceSelector) && (!has(self.spec.namespaceSelector) || self.spec.namespaceSelector == oldSelf.spec.namespaceSelector))",message="spec.namespaceSelector cannot change once the upgrade has started (it shapes the plan): abort the upgrade (ztcanary abort) and create a new RevisionUpgrade",fieldPath=".spec.namespaceSelector",reason="FieldValueForbidden"
// +kubebuilder:printcolumn:name="From",type=string,JSONPath=`.spec.from`
// +kubebuilder:printcolumn:name="To",type=string,JSONPath=`.spec.to`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Step",type=integer,JSONPath=`.status.currentStep`
// +kubebuilder:printcolumn:name="Canary Nodes",type=integer,JSONPath=`.status.canaryNodes`
// +kubebuilder:printcolumn:name="Weight",type=integer,JSONPath=`.status.trafficWeight`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`,priority=1
// +kubebuilder:printcolumn:name="Canary Namespaces",type=integer,JSONPath=`.status.canaryNamespaces`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RevisionUpgrade struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RevisionUpgradeSpec   `json:"spec,omitempty"`
	Status RevisionUpgradeStatus `json:"status,omitempty"`
}

// RevisionUpgradeList is a list of RevisionUpgrades.
// +kubebuilder:object:root=true
type RevisionUpgradeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RevisionUpgrade `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RevisionUpgrade{}, &RevisionUpgradeList{})
}
