// Package v1alpha1 holds the ztcanary.io/v1alpha1 API: RevisionUpgrade, written by
// users and the CLI and reconciled by the orchestrator, and NodeCapture, written by
// each node's agent and read by the orchestrator. Both are cluster-scoped.
// +kubebuilder:object:generate=true
// +groupName=ztcanary.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "ztcanary.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
