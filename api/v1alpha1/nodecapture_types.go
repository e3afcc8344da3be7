package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CaptureState says who owns a pod's capture listeners.
// +kubebuilder:validation:Enum=None;Single;Both;Unknown
type CaptureState string

// The capture states. During a handoff a pod goes Single(from) → Both → Single(to).
const (
	CaptureNone    CaptureState = "None"
	CaptureSingle  CaptureState = "Single"
	CaptureBoth    CaptureState = "Both"
	CaptureUnknown CaptureState = "Unknown"
)

// Verdict compares what the agent saw with the node's revision label.
// +kubebuilder:validation:Enum=Match;Mismatch;MultipleRevisions;NoZtunnel;Unknown
type Verdict string

// The verdicts of a NodeCapture.
const (
	// VerdictMatch: every ambient pod is captured by the ztunnel of the node label's
	// revision only.
	VerdictMatch Verdict = "Match"
	// VerdictMismatch: some pod is captured by another revision, or by none.
	VerdictMismatch Verdict = "Mismatch"
	// VerdictMultipleRevisions: ztunnels of two revisions run on the node.
	VerdictMultipleRevisions Verdict = "MultipleRevisions"
	// VerdictNoZtunnel: ambient pods but no ztunnel pod on the node.
	VerdictNoZtunnel Verdict = "NoZtunnel"
	// VerdictUnknown: the agent could not tell (starting, or eBPF unavailable).
	VerdictUnknown Verdict = "Unknown"
)

// ZtunnelPod is a ztunnel pod the agent found on its node.
type ZtunnelPod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID of the pod.
	// +optional
	UID string `json:"uid,omitempty"`
	// Revision from the istio.io/rev annotation (or label).
	// +optional
	Revision string `json:"revision,omitempty"`
	// CgroupID is the id (inode) of the pod's cgroup v2 directory.
	// +optional
	CgroupID int64 `json:"cgroupID,omitempty"`
}

// Listener is one ztunnel's listener on a capture port inside a pod's network
// namespace.
type Listener struct {
	// Revision of the ztunnel that owns it ("" if its cgroup matched no ztunnel pod).
	// +optional
	Revision string `json:"revision,omitempty"`
	// Ztunnel is the owning ztunnel pod's name.
	// +optional
	Ztunnel string `json:"ztunnel,omitempty"`
	// CgroupID of the process that listens.
	// +optional
	CgroupID int64 `json:"cgroupID,omitempty"`
	// TGID of the process that listens.
	// +optional
	TGID int32 `json:"tgid,omitempty"`
	// Listening is false once the socket closed.
	Listening bool `json:"listening"`
	// BoundAt is when the listener was seen bound.
	// +optional
	BoundAt *metav1.Time `json:"boundAt,omitempty"`
	// ClosedAt is when it closed.
	// +optional
	ClosedAt *metav1.Time `json:"closedAt,omitempty"`
	// Accepted counts connections it accepted.
	// +optional
	Accepted int64 `json:"accepted,omitempty"`
}

// PortCapture is one capture port (15001 outbound, 15006 inbound, 15008 HBONE).
type PortCapture struct {
	Port int32 `json:"port"`
	// +optional
	Listeners []Listener `json:"listeners,omitempty"`
}

// PodCapture says which ztunnel captures one ambient pod's traffic.
type PodCapture struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// +optional
	UID string `json:"uid,omitempty"`
	// State: None, Single, Both (during a handoff) or Unknown.
	State CaptureState `json:"state"`
	// CapturedBy is the revision owning the listeners when State is Single; during a
	// handoff both revisions, comma-separated, oldest first.
	// +optional
	CapturedBy string `json:"capturedBy,omitempty"`
	// +optional
	Ports []PortCapture `json:"ports,omitempty"`
}

// NodeCaptureStatus is what a node's agent observed.
type NodeCaptureStatus struct {
	// ObservedAt is when the agent last read the kernel's maps.
	// +optional
	ObservedAt *metav1.Time `json:"observedAt,omitempty"`
	// NodeRevision is the node label's value at ObservedAt.
	// +optional
	NodeRevision string `json:"nodeRevision,omitempty"`
	// Ztunnels are the ztunnel pods on the node.
	// +optional
	Ztunnels []ZtunnelPod `json:"ztunnels,omitempty"`
	// Pods are the ambient pods on the node.
	// +optional
	Pods []PodCapture `json:"pods,omitempty"`
	// Verdict compares Pods with NodeRevision.
	// +optional
	Verdict Verdict `json:"verdict,omitempty"`
	// Message explains the verdict.
	// +optional
	Message string `json:"message,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// NodeCapture is one node's proof, from eBPF maps, of which ztunnel revision
// captures each ambient pod's traffic. Named after its node; written only by that
// node's agent.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=nc,categories=ztcanary
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Revision",type=string,JSONPath=`.status.nodeRevision`
// +kubebuilder:printcolumn:name="Verdict",type=string,JSONPath=`.status.verdict`
// +kubebuilder:printcolumn:name="Observed",type=date,JSONPath=`.status.observedAt`
type NodeCapture struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status NodeCaptureStatus `json:"status,omitempty"`
}

// NodeCaptureList is a list of NodeCaptures.
// +kubebuilder:object:root=true
type NodeCaptureList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeCapture `json:"items"`
}

func init() {
	SchemeBuilder.Register(&NodeCapture{}, &NodeCaptureList{})
}
