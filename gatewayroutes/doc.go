// Package gatewayroutes shifts user traffic between a stable and a canary backend.
//
// A Router owns a small, named part of a route object and nothing else. The caller
// (the orchestrator) checks the route's backends with Check and takes a Snapshot of
// the route before an upgrade, keeping it in the RevisionUpgrade's status, then
// calls SetRoutes once per step with the desired Split (an optional header-matched
// test rule and the canary's weight), waits for Ready, runs the traffic test
// (package traffictest) as the step's gate, and compares GetRoutes with what it set
// on every pass to notice someone else changing what ztcanary owns. Rollback calls
// Restore with the snapshot; a completed upgrade may call Promote. SetRoutes never
// gives a share to a canary without a ready endpoint.
//
// Two implementations: HTTPRouteRouter (Gateway API, server-side apply with field
// manager "ztcanary") and VirtualServiceRouter (Istio, weights between two subsets).
//
// Data flows one way: the Router reads and writes the API; it never calls back into
// the orchestrator.
package gatewayroutes
