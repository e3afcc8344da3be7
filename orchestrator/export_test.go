package orchestrator

// Labelled runs f as a reconcile pass runs, under the reconcile profile label.
var Labelled = labelled
