// Package mesh is ztcanary's one statement of the Istio contract: the names Istio gives
// its labels and annotations, and what they mean for a pod, a namespace or a DaemonSet
// (which revision it belongs to, whether it is a ztunnel, whether the ambient data plane
// captures it, which sidecar it carries, whether it is Ready).
//
// The orchestrator, the node agent and the command line all judge pods with these
// functions, so they cannot disagree: a pod the orchestrator waits for the agent to
// report is a pod the agent looks for. Each rule follows Istio's own code at the version
// ztcanary is tested with (istio.io/istio v0.0.0-20260827124520-eed52ebb66ad); the names
// are checked against istio.io/api in the tests.
//
// The package only reads objects: it makes no API calls and holds no state.
package mesh

// Istio's label and annotation keys and values.
const (
	// RevisionKey names a revision. Istio's ztunnel chart writes it as an annotation on
	// the DaemonSet and its pods, istiod's chart and the injection webhooks as a label,
	// the injector on the pods it mutates as an annotation (a label in older templates);
	// namespaces carry it as a label to choose their injector. ztcanary's default node
	// label has the same name.
	RevisionKey = "istio.io/rev"
	// LabelTag names the revision tag an injection webhook serves.
	LabelTag = "istio.io/tag"

	// LabelDataplaneMode enrols a namespace or a pod in the ambient data plane
	// (DataplaneModeAmbient) or opts a pod out (DataplaneModeNone).
	LabelDataplaneMode   = "istio.io/dataplane-mode"
	DataplaneModeAmbient = "ambient"
	DataplaneModeNone    = "none"

	// LabelInjection enables (InjectionEnabled) the default revision's sidecar injection
	// for a namespace, taking precedence over RevisionKey, or disables it
	// (InjectionDisabled).
	LabelInjection    = "istio-injection"
	InjectionEnabled  = "enabled"
	InjectionDisabled = "disabled"
	// SidecarInjectKey, a pod label or annotation, opts a pod out of injection ("false")
	// or in ("true").
	SidecarInjectKey = "sidecar.istio.io/inject"
	// AnnotationSidecarStatus is the status the injector writes on every pod it mutates
	// (JSON: the containers it added and its revision). Its presence means the pod has a
	// sidecar.
	AnnotationSidecarStatus = "sidecar.istio.io/status"
	// AnnotationInjectTemplates names the injection templates a pod asks for ("gateway"
	// for gateway proxies).
	AnnotationInjectTemplates = "inject.istio.io/templates"
	// ProxyContainer is the name of the injected proxy container.
	ProxyContainer = "istio-proxy"

	// LabelApp with AppZtunnel marks every ztunnel pod (and DaemonSet pod template)
	// whatever its revision; with AppIstiod, istiod's Deployments.
	LabelApp   = "app"
	AppZtunnel = "ztunnel"
	AppIstiod  = "istiod"

	// DefaultRevision is the revision of a control plane installed without one.
	DefaultRevision = "default"

	// CNIExcludedNamespace is the namespace istio-cni never enrols, whatever its labels
	// (the istio-cni chart's default cni.excludeNamespaces).
	CNIExcludedNamespace = "kube-system"
)
