// Package simdataplane gives the simulated cluster (package sim) a real data plane on
// this host, so that real node agents (cmd/ztcanary-agent) can prove from the kernel
// which ztunnel revision captures each ambient pod.
//
// kwok plays the kubelets: pods go Running without network namespaces or processes.
// For the nodes it is given, a DataPlane follows the API (informers on pods and
// namespaces) and materializes what a kubelet, a CNI and Istio's ztunnel would:
//
//   - every pod istio-cni would enrol (mesh.Enrolled: its namespace or the pod itself
//     labelled istio.io/dataplane-mode=ambient, not opted out, not hostNetwork, no
//     sidecar; kept until the API forgets it, as a sandbox outlives the deletion)
//     gets a network namespace holding the pod's IPs on its
//     loopback interface, bind-mounted as <Dir>/netns/cni-<pod uid> like a CRI does, so
//     the agent (flag --netns-dirs) finds it by the pod's IP;
//   - every ztunnel pod (app=ztunnel in the ztunnel namespace; the revision is the
//     istio.io/rev annotation or label) gets a stand-in ztunnel process placed, at its
//     birth (CLONE_INTO_CGROUP), in a cgroup v2 directory laid out like the kubelet's
//     systemd driver, kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope,
//     so the agent's cgroup resolver maps its sockets to the pod and its revision.
//
// The stand-ins behave like ztunnel's in-pod mode with istio-cni's node agent: a
// ztunnel that starts binds the capture ports (15001, 15006, 15008) with SO_REUSEPORT
// inside every ambient pod of its node, beside any older ztunnel (a handoff); a new
// ambient pod is handed to the newest running ztunnel of its node only, and bound
// before the pod's namespace is published, as istio-cni holds a pod until ztunnel has
// it; a pod that goes away is closed in every ztunnel; a ztunnel pod that terminates
// gets SIGTERM, closes its listeners at once and exits after Config.Drain. So when
// the orchestrator swaps a node's ztunnel (Drain or Handoff), the listeners follow.
// Config.NoListen names revisions whose stand-ins run but never bind, to exercise a
// failing verification.
//
// With Config.AgentBinary set, Start also runs one real agent per node, with its own
// pin folder on a bpffs mounted for the data plane. All agents share one kernel and
// each sees every listener of the host, but each reports only the pods the API
// places on its node (it lists pods by spec.nodeName and maps their IPs to network
// namespaces), so the NodeCaptures stay per node.
//
// With Config.AgentDaemonSet (deploy/agent/daemonset.yaml) each agent runs as that
// DaemonSet's container would on a node (sandbox.go): as its ServiceAccount, through a
// kubeconfig that impersonates it; with the container's args and env; with only its
// capabilities and no_new_privs; in a mount namespace of its own where the hostPath
// volumes are mounted (the node's bpffs, the data plane's namespaces, propagated
// HostToContainer) and, with readOnlyRootFilesystem, everything else is read-only.
// AgentExec runs a command in that mount namespace with the same privileges, as
// `kubectl exec` would. A sandbox helper (this binary again, as for the stand-ins)
// sets it up and execs the agent, which keeps its PID.
//
// The stand-in ztunnel is the calling binary itself, re-executed: this package's init
// runs the stand-in when the process starts with the stand-in's environment, so any
// program or test binary that imports simdataplane can start a DataPlane.
//
// Use:
//
//	if err := simdataplane.Check(true); err != nil { /* not root, no cgroup v2 or BTF: run without agents */ }
//	dp, err := simdataplane.Start(ctx, simdataplane.Config{
//		Kubeconfig:  cluster.Kubeconfig,
//		AgentBinary: "bin/ztcanary-agent", // empty: no agents
//		Log:         logger,
//	}, []string{"ambient-worker", "ambient-worker2"})
//	if err != nil { ... }
//	defer dp.Close()
//	_ = dp.Connect(ctx, "bookinfo-1-18-0", "reviews-x", 15006, 10) // counted by the agent
//
// Close stops the agents and the stand-ins by PID and removes every namespace mount,
// cgroup, bpffs mount and pin it made; Start undoes its partial work when it fails, and
// sweeps what a killed run left behind (its state file records the owner's PID). It
// needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN; CAP_BPF for the agents), cgroup v2 (at
// /sys/fs/cgroup/unified on hybrid hosts) and, for the agents, kernel BTF: see Check.
package simdataplane
