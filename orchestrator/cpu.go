package orchestrator

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// reconcileCPU is the orchestrator's own work: what its reconcile passes compute and
// send. The process's CPU also holds decoding every watched change (every pod the
// scheduler places, every node heartbeat) and the garbage collector's background
// work; those grow with the cluster's churn whether or not an upgrade runs.
var reconcileCPU = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "ztcanary_reconcile_cpu_seconds_total",
	Help: "CPU time of the reconcile passes: the goroutines that decide, encode writes and decode their replies (not watch decoding, nor the garbage collector's background work). Counted on Linux only.",
})

// accountCPU runs f with its goroutine locked to one thread and adds that thread's
// CPU time over f to reconcileCPU. Goroutines f starts account for themselves.
func accountCPU(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, ok := threadCPUTime()
	f()
	if end, ok2 := threadCPUTime(); ok && ok2 && end > start {
		reconcileCPU.Add((end - start).Seconds())
	}
}
