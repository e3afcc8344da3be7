package sim

import (
	"context"
	"io"
)

// istio-render is built from the same istio.io/istio as istiod (IstioVersion): its
// charts are embedded in that module. A test keeps kind/tools/istiocharts in step.
var istioRenderComponent = component{name: "istio-render", tool: "istiocharts", pkg: ".", version: IstioVersion, ldflags: "-s -w"}

// EnsureIstioRender returns the path of istio-render, which renders Istio's real Helm
// charts (base, istiod, ztunnel, cni, gateway) with the Helm Go library, building it
// from the Go module proxy into the cache on first use. The seed topology (package
// kind/seed) installs what it renders; the cluster itself never needs it.
func EnsureIstioRender(ctx context.Context, progress io.Writer) (string, error) {
	return ensureOnDemand(ctx, istioRenderComponent, progress)
}
