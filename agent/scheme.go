package agent

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// NewScheme holds the types the agent reads and writes: core Kubernetes and NodeCapture.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add core types: %w", err)
	}
	if err := ztv1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add ztcanary types: %w", err)
	}
	return s, nil
}
