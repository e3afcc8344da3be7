package main

import (
	"context"

	"github.com/ztcanary/ztcanary/kind/sim"
)

// startAgents is where node agents plug into the demo: it starts, for the given
// workers of the cluster, the agent binary (flag -agent) and whatever data plane it
// observes (the simulated one of kind/sim/simdataplane: network namespaces per ambient
// pod, stand-in ztunnels in cgroups), and returns a function that stops all of it by
// PID. The demo calls it only as root (eBPF and network namespaces need it), after
// the seed topology and the route are installed and before the orchestrator starts;
// when it is set, upgrades require the agents' verification
// (spec.analysis.agentVerification: Required), else they run with Disabled.
//
// nil: no agents.
var startAgents func(ctx context.Context, cl *sim.Cluster, workers []string, agentBinary string) (stop func() error, err error)
