package gatewayroutes

import (
	"context"
	"errors"
	"fmt"
)

// FieldManager is the server-side apply field manager ztcanary writes with.
const FieldManager = "ztcanary"

// Router moves traffic between the stable and the canary backend of one route. Every
// method is idempotent: calling it again with the same input changes nothing, so a
// restarted orchestrator can simply repeat its last step.
type Router interface {
	// Check reports, without writing, what keeps the route from being shifted at
	// all: a missing backend Service or port, a missing ReferenceGrant or
	// DestinationRule, a subset the DestinationRule does not define.
	Check(ctx context.Context) error
	// Snapshot captures what the router may change, for an exact Restore later.
	Snapshot(ctx context.Context) (Snapshot, error)
	// SetRoutes makes the route carry split. Invalid input is refused before any write.
	SetRoutes(ctx context.Context, split Split) error
	// GetRoutes reads the split the route carries now.
	GetRoutes(ctx context.Context) (Split, error)
	// Ready reports whether the data plane has accepted the route's current spec.
	Ready(ctx context.Context) (bool, string, error)
	// Restore writes back the snapshot, so the route is as it was before the upgrade.
	Restore(ctx context.Context, snap Snapshot) error
}

// Backend names a Service and port that traffic is sent to.
type Backend struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Port      int32  `json:"port"`
}

func (b Backend) String() string { return fmt.Sprintf("%s/%s:%d", b.Namespace, b.Name, b.Port) }

// Header is the request header that sends a test request to the canary.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Split is the traffic split ztcanary owns: an optional header-matched test rule to
// the canary, and the canary's share (0-100) of the requests without that header.
type Split struct {
	Header       *Header `json:"header,omitempty"`
	CanaryWeight int32   `json:"canaryWeight"`
}

func (s Split) String() string {
	if s.Header == nil {
		return fmt.Sprintf("canary %d%%", s.CanaryWeight)
	}
	return fmt.Sprintf("canary %d%%, header %s=%s", s.CanaryWeight, s.Header.Name, s.Header.Value)
}

// Validate refuses a split that no route can carry, naming the field and the fix.
func (s Split) Validate() error {
	if s.CanaryWeight < 0 || s.CanaryWeight > 100 {
		return fmt.Errorf("%w: canary weight %d is outside 0-100", ErrInvalid, s.CanaryWeight)
	}
	if s.Header != nil && s.Header.Name == "" {
		return fmt.Errorf("%w: test header has no name", ErrInvalid)
	}
	return nil
}

// Snapshot is the part of a route a Router may change, as it was, serialised so the
// orchestrator can keep it in the RevisionUpgrade's status.
type Snapshot struct {
	// Kind is the route kind (HTTPRoute, VirtualService).
	Kind string `json:"kind"`
	// Namespace and Name identify the route.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Field is the JSON path of the snapshotted field (spec.rules, spec.http).
	Field string `json:"field"`
	// Value is that field's JSON, exactly as read.
	Value []byte `json:"value"`
}

// Errors callers classify with errors.Is.
var (
	// ErrInvalid marks input no route can carry (weight out of range, empty header).
	ErrInvalid = errors.New("invalid traffic split")
	// ErrBackend marks a backend that is missing, lacks the port, or has no ready endpoint.
	ErrBackend = errors.New("backend not usable")
	// ErrReferenceNotPermitted marks a cross-namespace backend without a ReferenceGrant.
	ErrReferenceNotPermitted = errors.New("cross-namespace reference not permitted")
	// ErrRoute marks a route that cannot be shifted (not found, no rule to the stable backend).
	ErrRoute = errors.New("route not usable")
	// ErrRouteNotFound marks a route that does not exist; it is an ErrRoute too, and
	// reads the same.
	ErrRouteNotFound error = routeNotFound{}
)

type routeNotFound struct{}

func (routeNotFound) Error() string { return ErrRoute.Error() }
func (routeNotFound) Unwrap() error { return ErrRoute }

// DetectDrift compares the split ztcanary last set with the one the route carries and
// describes each difference. An empty result means no drift. The orchestrator pauses
// the upgrade on drift instead of writing again: it never fights another writer.
func DetectDrift(want, got Split) []string {
	var d []string
	if want.CanaryWeight != got.CanaryWeight {
		d = append(d, fmt.Sprintf("canary weight is %d, ztcanary set %d", got.CanaryWeight, want.CanaryWeight))
	}
	switch {
	case want.Header == nil && got.Header != nil:
		d = append(d, fmt.Sprintf("test rule for header %s=%s is present, ztcanary removed it", got.Header.Name, got.Header.Value))
	case want.Header != nil && got.Header == nil:
		d = append(d, fmt.Sprintf("test rule for header %s=%s is missing", want.Header.Name, want.Header.Value))
	case want.Header != nil && *want.Header != *got.Header:
		d = append(d, fmt.Sprintf("test rule matches header %s=%s, ztcanary set %s=%s", got.Header.Name, got.Header.Value, want.Header.Name, want.Header.Value))
	}
	return d
}
