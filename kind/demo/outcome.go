package main

import (
	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// outcome is what a run showed, so that a test can judge it: how each upgrade ended,
// every traffic sample, and what the run started (to check it all went away).
type outcome struct {
	// Traffic and Agents say whether real traffic flowed and node agents verified.
	Traffic, Agents bool
	// First and Second are the end phases of the good and the failing upgrade.
	First, Second ztv1.RevisionUpgradeStatus
	// Restored is set once the demo checked that the rollback left node labels and
	// route rules exactly as before the failing upgrade.
	Restored bool
	// Samples are the traffic samples in the order the demo printed them.
	Samples []stepSample
	// PIDs are the processes the run started (cluster, Traefik, orchestrator, agents,
	// stand-in ztunnels), by name.
	PIDs map[string]int
	// Paths are the folders the run made (the cluster's, the data plane's, the
	// stand-ins' cgroups), NetNS the network namespaces it named.
	Paths, NetNS []string
}

// stepSample is one traffic sample: which upgrade and step, the canary weight the
// route carried, and what the traffic tester saw.
type stepSample struct {
	Upgrade int
	Step    string
	Weight  int32
	Header  bool // the route had the test header rule
	Sample  *sample
}

func (o *outcome) pid(name string, pid int) {
	if o.PIDs == nil {
		o.PIDs = map[string]int{}
	}
	if pid > 0 {
		o.PIDs[name] = pid
	}
}
