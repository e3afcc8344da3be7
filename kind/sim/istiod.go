package sim

import (
	"context"
	"io"
)

// IstioVersion is the istio.io/istio pseudo-version kind/tools/istiod builds istiod
// from (the module has no release tags on the Go module proxy). IstioTag is the proxy
// image tag istiod reports and the sidecar-mode tests render into its values.
const (
	IstioVersion = "v0.0.0-20260827124520-eed52ebb66ad"
	IstioTag     = "1.31-dev"
)

var istiodComponent = component{name: "istiod", tool: "istiod", pkg: "istio.io/istio/pilot/cmd/pilot-discovery", version: IstioVersion,
	ldflags: "-s -w -X istio.io/istio/pkg/version.buildVersion=" + IstioTag + " -X istio.io/istio/pkg/version.buildGitRevision=eed52ebb66ad -X istio.io/istio/pkg/version.buildStatus=Clean"}

// EnsureIstiod returns the path of istiod (Istio's pilot-discovery: config
// distribution, CA and the sidecar injection webhook), building it from the Go module
// proxy into the cache on first use. The simulated cluster never needs it; the
// sidecar-mode tests run it out of cluster, one process per revision, so that pods
// created in a namespace labelled istio.io/rev really get that revision's proxy.
func EnsureIstiod(ctx context.Context, progress io.Writer) (string, error) {
	return ensureOnDemand(ctx, istiodComponent, progress)
}
