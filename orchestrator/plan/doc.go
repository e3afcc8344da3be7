// Package plan is the orchestrator's pure planner: what an upgrade's scope is, how
// many nodes (or namespaces) each step targets, which ones it picks, whether a plan
// makes sense for the scope, and what the route should look like after each step.
// It reads only the values it is given (no API client), so every decision a driver
// takes from it can be tested in a table, and whole upgrades can be replayed as a
// step log (testdata/*.golden).
//
// Data flows in one direction: a driver (orchestrator/ambient,
// orchestrator/sidecar) reads the cluster, hands the plain objects to plan, records
// the answer in the upgrade's status, and only then acts on it.
package plan
