package orchestrator_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/ztcanary/ztcanary/orchestrator"
)

// cpuShare splits a CPU profile of the orchestrator by what the CPU did: its own
// reconcile passes (samples under the reconcile profile label), taking in watched
// changes (the watch streams, the connection's read loop, the informers and their
// event handlers), the garbage collector's background work, and the rest (the Go
// scheduler, metrics and profile handlers).
type cpuShare struct {
	total, reconcile, watch, gc time.Duration
}

func (c cpuShare) add(o cpuShare) cpuShare {
	return cpuShare{c.total + o.total, c.reconcile + o.reconcile, c.watch + o.watch, c.gc + o.gc}
}

func (c cpuShare) other() time.Duration { return c.total - c.reconcile - c.watch - c.gc }

func (c cpuShare) String() string {
	r := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s" }
	return fmt.Sprintf("%s CPU: reconcile passes %s, watch intake %s, GC %s, other %s", r(c.total), r(c.reconcile), r(c.watch), r(c.gc), r(c.other()))
}

// watchFrames are the function name prefixes of taking in watched changes.
var watchFrames = []string{
	"k8s.io/apimachinery/pkg/watch.", "k8s.io/client-go/rest/watch.", "k8s.io/client-go/tools/cache.",
	"sigs.k8s.io/controller-runtime/pkg/internal/source.", "golang.org/x/net/http2.(*clientConnReadLoop)",
}

func splitCPU(p *profile.Profile) cpuShare {
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" && st.Unit == "nanoseconds" {
			idx = i
		}
	}
	var out cpuShare
	if idx < 0 {
		return out
	}
	for _, s := range p.Sample {
		d := time.Duration(s.Value[idx])
		out.total += d
		if slices.Contains(s.Label[orchestrator.ProfileLabel], orchestrator.ProfileReconcile) {
			out.reconcile += d
			continue
		}
		switch {
		case stackHas(s, "runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge"):
			out.gc += d
		case stackHas(s, watchFrames...):
			out.watch += d
		}
	}
	return out
}

// stackHas: a frame of the sample's stack begins with one of prefixes.
func stackHas(s *profile.Sample, prefixes ...string) bool {
	for _, loc := range s.Location {
		for _, line := range loc.Line {
			if line.Function == nil {
				continue
			}
			for _, p := range prefixes {
				if strings.HasPrefix(line.Function.Name, p) {
					return true
				}
			}
		}
	}
	return false
}
