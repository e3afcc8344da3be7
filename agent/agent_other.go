//go:build !linux

package agent

import (
	"context"

	"go.uber.org/zap"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Agent is Linux only.
type Agent struct{}

// New returns ErrUnsupported.
func New(*zap.Logger, client.Client, *Probe, *Metrics, Options) (*Agent, error) {
	return nil, ErrUnsupported
}

// Run returns ErrUnsupported.
func (*Agent) Run(context.Context) error { return ErrUnsupported }
