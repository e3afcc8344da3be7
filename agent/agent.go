package agent

import (
	"time"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Options configure the agent daemon.
type Options struct {
	DiscoveryOptions
	Probe ProbeOptions
	// Cgroup2Root is the cgroup v2 mount (found when empty).
	Cgroup2Root string
	// ProcRoot is the host's /proc (for /proc/<pid>/ns/net and /proc/<pid>/cgroup).
	ProcRoot string
	// NetnsDirs hold the CRI's bind-mounted pod network namespaces.
	NetnsDirs []string
	// PollInterval is how often the maps are read (500ms).
	PollInterval time.Duration
	// SyncInterval is how often the API, cgroups and namespaces are listed again (5s).
	SyncInterval time.Duration
	// MinWriteInterval spaces status writes on change (2s); ResyncInterval forces one even
	// without change (30s), so ObservedAt shows the agent is alive.
	MinWriteInterval, ResyncInterval time.Duration
	// ClosedRetention is how long closed owners stay in the maps (10m).
	ClosedRetention time.Duration
}

// WithDefaults fills the zero fields.
func (o Options) WithDefaults() Options {
	if o.ZtunnelNamespace == "" {
		o.ZtunnelNamespace = ztv1.DefaultIstioNamespace
	}
	if o.NodeLabel == "" {
		o.NodeLabel = LabelRevision
	}
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.NetnsDirs == nil {
		o.NetnsDirs = []string{"/var/run/netns"}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.PollInterval, 500*time.Millisecond)
	def(&o.SyncInterval, 5*time.Second)
	def(&o.MinWriteInterval, 2*time.Second)
	def(&o.ResyncInterval, 30*time.Second)
	def(&o.ClosedRetention, 10*time.Minute)
	return o
}
