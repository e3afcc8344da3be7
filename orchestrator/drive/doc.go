// Package drive is the contract between the orchestrator's controller shell
// (package orchestrator) and the drivers of its modes (orchestrator/ambient: node
// waves; orchestrator/sidecar: namespace waves): the Driver interface the shell
// calls, the Env it hands each driver (clients, event recorder, clock, the cache's
// node and pod stores), and the status bookkeeping every stage uses (stages,
// phases, conditions, the step's clock, the start of a rollback).
//
// The shell owns fetching the upgrade, steering (pause, resume, abort, promote),
// the pause between steps, the status patch and errors; a driver owns its stages,
// one method each, and never repeats the shell.
package drive
