package simdataplane

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
)

// Config shapes a DataPlane. Only Kubeconfig is required.
type Config struct {
	// Kubeconfig is the path of a kubeconfig for the cluster (sim.Cluster.Kubeconfig):
	// the data plane's informers and the agents use it.
	Kubeconfig string
	// Dir holds the data plane's state: the namespaces' bind mounts (Dir/netns), the
	// agents' bpffs (Dir/bpf), logs and the state file. Empty: a new folder under the
	// system temp directory, removed by Close.
	Dir string
	// ZtunnelNamespace holds the ztunnel DaemonSets of every revision (istio-system).
	ZtunnelNamespace string
	// Ports are the capture ports a stand-in ztunnel binds (15001, 15006, 15008).
	Ports []uint16
	// NoListen lists revisions whose stand-in ztunnels start, and are told about
	// their pods, but never bind a port: a ztunnel that fails to serve.
	NoListen []string
	// Drain is how long a stand-in ztunnel lives on after SIGTERM, its listeners
	// already closed, as ztunnel drains its connections (1s).
	Drain time.Duration
	// AgentBinary is the path of a ztcanary-agent binary to run on every node (see
	// BuildAgent). Empty: no agents.
	AgentBinary string
	// AgentSyncInterval, AgentMinWriteInterval and AgentResyncInterval are the agents'
	// --sync-interval (1s), --min-write-interval (500ms) and --resync-interval (5s):
	// shorter than in production, so that a simulated upgrade does not wait on them.
	AgentSyncInterval, AgentMinWriteInterval, AgentResyncInterval time.Duration
	// AgentArgs are more flags for every agent.
	AgentArgs []string
	// AgentDaemonSet, when set, runs every agent as this DaemonSet's container would
	// run on its node (deploy/agent/daemonset.yaml, so that tests prove the manifest):
	// as the DaemonSet's ServiceAccount (through a kubeconfig that impersonates it,
	// AgentKubeconfig), with the container's args and env, its user, only its
	// capabilities, no_new_privs when allowPrivilegeEscalation is false, and, with
	// readOnlyRootFilesystem, in a mount namespace where everything is read-only but
	// its writable volume mounts. Its hostPath volumes are the simulated node's: /sys/fs/bpf
	// a bpffs of the node's own, /var/run/netns the data plane's namespaces, any other
	// path this host's. The sandbox shares the host's network namespace (the simulated
	// API server listens on loopback) and cgroup namespace; seccomp and AppArmor
	// profiles are not applied. Only the simulation's flags are added to the
	// container's args: --kubeconfig, --metrics-bind-address=0 (the agents share a
	// network namespace), the three intervals above, and AgentArgs.
	AgentDaemonSet *appsv1.DaemonSet
	// Log receives the data plane's events (default: none).
	Log *zap.Logger
}

// DefaultPorts are ztunnel's capture ports: 15001 outbound, 15006 inbound plaintext,
// 15008 HBONE.
var DefaultPorts = []uint16{15001, 15006, 15008}

// ErrUnsupported is returned on systems other than Linux.
var ErrUnsupported = errors.New("the simulated data plane needs Linux")

func (c Config) withDefaults() Config {
	if c.ZtunnelNamespace == "" {
		c.ZtunnelNamespace = "istio-system"
	}
	if len(c.Ports) == 0 {
		c.Ports = DefaultPorts
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Drain, time.Second)
	def(&c.AgentSyncInterval, time.Second)
	def(&c.AgentMinWriteInterval, 500*time.Millisecond)
	def(&c.AgentResyncInterval, 5*time.Second)
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return c
}

// validate refuses a configuration Start cannot act on, naming the field.
func (c Config) validate(nodes []string) error {
	if c.Kubeconfig == "" {
		return errors.New("simdataplane: Config.Kubeconfig is empty: give the cluster's kubeconfig path")
	}
	if len(nodes) == 0 {
		return errors.New("simdataplane: no nodes given: name the nodes whose data plane to simulate")
	}
	for i, n := range nodes {
		if n == "" {
			return fmt.Errorf("simdataplane: nodes[%d] is empty", i)
		}
		if slices.Contains(nodes[:i], n) {
			return fmt.Errorf("simdataplane: node %s is given twice", n)
		}
	}
	for _, p := range c.Ports {
		if p == 0 {
			return errors.New("simdataplane: Config.Ports holds port 0")
		}
	}
	if c.AgentDaemonSet != nil && c.AgentBinary == "" {
		return errors.New("simdataplane: Config.AgentDaemonSet is set without Config.AgentBinary: give the agent binary to run as the DaemonSet says")
	}
	if c.Drain < 0 {
		return fmt.Errorf("simdataplane: Config.Drain %s is negative", c.Drain)
	}
	return nil
}

// State is what a DataPlane has materialized, for tests and progress displays.
type State struct {
	Nodes []NodeState
}

// NodeState is the simulated data plane of one node.
type NodeState struct {
	Name string
	// Pods are the ambient pods with a network namespace, by namespace/name.
	Pods []PodState
	// Ztunnels are the running stand-in ztunnels, oldest first.
	Ztunnels []ZtunnelState
	// AgentPID is the node's agent process (0: none).
	AgentPID int
	// AgentSandboxed: the agent runs as Config.AgentDaemonSet says.
	AgentSandboxed bool
}

// PodState is an ambient pod's network namespace.
type PodState struct {
	Namespace, Name, UID string
	IPs                  []string
	// Netns is the bind mount the agent finds.
	Netns string
}

// ZtunnelState is a stand-in ztunnel.
type ZtunnelState struct {
	Namespace, Name, UID, Revision string
	PID                            int
	// Cgroup is its cgroup v2 directory.
	Cgroup string
	// Serving lists the pods (namespace/name) it was handed, sorted.
	Serving []string
	// Listening is false for a NoListen revision.
	Listening bool
	// Terminating is true once it got SIGTERM.
	Terminating bool
}
