// Package sim runs a simulated Kubernetes cluster for ztcanary's demo and tests.
//
// kind needs a Docker engine and image pulls, which the project's machines do not
// have, so the simulated cluster is made of the real control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) built from the Go module
// proxy, and kwok, which plays the kubelets: it marks nodes Ready and pods Running
// without running containers. The real Gateway API and Istio CRDs are installed from
// the module cache, so the real schemas and CEL rules judge what ztcanary writes.
//
// Data flows in three stages:
//
//  1. EnsureBinaries builds each binary once from the tool modules under
//     kind/tools (pinned versions, committed go.sum) into a cache outside the
//     repository keyed by version and module hash; later calls build nothing.
//  2. Start launches the processes on loopback on free ports, waits until each is
//     ready, writes a kubeconfig, creates kwok nodes named like the seed topology
//     and installs the CRDs.
//  3. Stop ends every process it started, by PID, and removes the cluster's data.
//     Processes die with the test binary that started them (Pdeathsig), and Start
//     sweeps leftovers of runs that were killed before they could clean up.
//
// Tests use package simtest, which ties a cluster's life to a testing.TB.
package sim
