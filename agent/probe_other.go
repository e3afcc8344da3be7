//go:build !linux

package agent

import (
	"time"

	"go.uber.org/zap"
)

// Probe is Linux only; on other systems every method returns ErrUnsupported.
type Probe struct{}

// Load returns ErrUnsupported.
func Load(*zap.Logger, ProbeOptions) (*Probe, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*Probe) Close() error { return nil }

// Unpin returns ErrUnsupported.
func (*Probe) Unpin() error { return ErrUnsupported }

// SetPorts returns ErrUnsupported.
func (*Probe) SetPorts([]uint16) error { return ErrUnsupported }

// Snapshot returns ErrUnsupported.
func (*Probe) Snapshot() ([]Owner, error) { return nil, ErrUnsupported }

// GC returns ErrUnsupported.
func (*Probe) GC(map[uint64]bool, time.Time) (int, error) { return 0, ErrUnsupported }
