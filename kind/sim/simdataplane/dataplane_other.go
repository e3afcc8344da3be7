//go:build !linux

package simdataplane

import "context"

// DataPlane is Linux only.
type DataPlane struct{}

// Start returns ErrUnsupported.
func Start(context.Context, Config, []string) (*DataPlane, error) { return nil, ErrUnsupported }

// Check returns ErrUnsupported.
func Check(bool) error { return ErrUnsupported }

// BuildAgent returns ErrUnsupported.
func BuildAgent(context.Context, string) (string, error) { return "", ErrUnsupported }

// State returns nothing.
func (*DataPlane) State() State { return State{} }

// Connect returns ErrUnsupported.
func (*DataPlane) Connect(context.Context, string, string, int, int) error { return ErrUnsupported }

// Err returns ErrUnsupported.
func (*DataPlane) Err() error { return ErrUnsupported }

// Dir returns "".
func (*DataPlane) Dir() string { return "" }

// AgentLog returns ErrUnsupported.
func (*DataPlane) AgentLog(string) (string, error) { return "", ErrUnsupported }

// Close does nothing.
func (*DataPlane) Close() error { return nil }

// AgentKubeconfig returns "".
func (*DataPlane) AgentKubeconfig() string { return "" }

// AgentExec returns ErrUnsupported.
func (*DataPlane) AgentExec(string, ...string) ([]byte, error) { return nil, ErrUnsupported }
