package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The defaults of a RevisionUpgrade: the CRD's +kubebuilder:default markers say the
// same (TestSetDefaultsMatchesTheCRD compares them with the generated schema).
const (
	DefaultNodeLabel             = "istio.io/rev"
	DefaultIstioNamespace        = "istio-system"
	DefaultHandoffLabel          = "ztcanary.io/handoff"
	DefaultMaxConcurrentRestarts = 2
	DefaultStepTimeout           = 10 * time.Minute
	DefaultTrafficRequests       = 200
	DefaultTrafficConcurrency    = 8
	DefaultMinSuccessRate        = 99
)

// SetDefaults fills in what the API server's defaulting would (the CRD's default
// markers), so that code reading a spec that did not go through the API server (the
// CLI's dry runs, unit tests, an object written before a default existed) sees the
// same values. It changes only empty fields.
func SetDefaults(u *RevisionUpgrade) {
	s := &u.Spec
	setDefault(&s.Mode, ModeAmbient)
	setDefault(&s.Sidecar.IstiodNamespace, DefaultIstioNamespace)
	setDefault(&s.Sidecar.MaxConcurrentRestarts, DefaultMaxConcurrentRestarts)
	setDefault(&s.NodeLabel, DefaultNodeLabel)
	setDefault(&s.NodeStrategy, NodeStrategyDrain)
	setDefault(&s.Ztunnel.Namespace, DefaultIstioNamespace)
	setDefault(&s.Ztunnel.HandoffLabel, DefaultHandoffLabel)
	setDefault(&s.Analysis.AgentVerification, AgentVerificationOptional)
	if tt := s.Analysis.TrafficTest; tt != nil {
		setDefault(&tt.Requests, DefaultTrafficRequests)
		setDefault(&tt.Concurrency, DefaultTrafficConcurrency)
		setDefault(&tt.MinSuccessRate, DefaultMinSuccessRate)
	}
	if s.Rollback.Automatic == nil {
		t := true
		s.Rollback.Automatic = &t
	}
	if s.StepTimeout == nil {
		s.StepTimeout = &metav1.Duration{Duration: DefaultStepTimeout}
	}
}

func setDefault[T comparable](field *T, value T) {
	var zero T
	if *field == zero {
		*field = value
	}
}

// StepTimeoutOrDefault is spec.stepTimeout, or its default when unset or not
// positive.
func (s *RevisionUpgradeSpec) StepTimeoutOrDefault() time.Duration {
	if s.StepTimeout != nil && s.StepTimeout.Duration > 0 {
		return s.StepTimeout.Duration
	}
	return DefaultStepTimeout
}

// NodeLabelOrDefault is spec.nodeLabel, or its default (istio.io/rev) when unset.
func (s *RevisionUpgradeSpec) NodeLabelOrDefault() string {
	if s.NodeLabel == "" {
		return DefaultNodeLabel
	}
	return s.NodeLabel
}
