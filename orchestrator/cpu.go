package orchestrator

import (
	"context"
	"runtime/pprof"
)

// ProfileLabel is the pprof label key that marks the orchestrator's own work in a CPU
// profile (value ProfileReconcile): the reconcile passes and the goroutines they
// start. The rest of the process's CPU is decoding the watched changes (every pod the
// scheduler places, every node heartbeat), the caches, and the garbage collector's
// background work, which grow with the cluster's churn whether an upgrade runs or not.
// Labels cost nothing unless a profile is taken (--pprof-bind-address).
const (
	ProfileLabel     = "ztcanary"
	ProfileReconcile = "reconcile"
)

// labelled runs f with the reconcile profile label on its goroutine (goroutines f
// starts inherit it).
func labelled(ctx context.Context, f func(context.Context)) {
	pprof.Do(ctx, pprof.Labels(ProfileLabel, ProfileReconcile), f)
}
