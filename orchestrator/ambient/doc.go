// Package ambient is the orchestrator's driver for Ambient-mode upgrades: node
// waves. Each step picks its nodes (orchestrator/plan), records them in status,
// swaps each node's ztunnel with the upgrade's strategy (Drain or Handoff, nodes.go),
// verifies the wave (the canary workloads and the node agents' eBPF proof,
// verify.go), shifts the route (traffic.go) and runs the gates; the first step
// pins each revision's ztunnel DaemonSet and the workloads to their revision's nodes
// (pins.go). A rollback (rollback.go) restores the route, the nodes, the pinning,
// then evicts the canary pods left on restored nodes.
//
// The controller shell (package orchestrator) calls it through drive.Driver.
package ambient
