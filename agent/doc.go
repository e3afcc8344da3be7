// Package agent is ztcanary's node agent: it proves, from the kernel, which ztunnel revision
// owns the capture listeners (15001 outbound, 15006 inbound, 15008 HBONE) of every ambient pod
// network namespace of its node, and how many connections each accepted.
//
// Data flows one way:
//
//	bpf programs (package bpf) --maps--> Probe.Snapshot --[]Owner-->
//	BuildReport(owners, cgroup id -> revision, netns cookie -> pod) --> NodeReport --> NodeCapture
//
// Probe (Linux only) loads the programs, pins their maps under one versioned bpffs folder so a
// restart keeps the counts, scans namespaces for listeners bound before it attached, and
// garbage-collects closed owners and vanished namespaces. The cgroup helpers turn the
// kubelet's cgroup layout (the pod UID is in the path) into the cgroup ids the maps hold.
// Classification is pure and unit-tested: None, Single(rev), Both(old,new).
package agent
