package agent

import "errors"

// DefaultPorts are ztunnel's capture ports: 15001 outbound, 15006 inbound plaintext, 15008
// HBONE.
var DefaultPorts = []uint16{15001, 15006, 15008}

// DefaultPinDir is the bpffs folder the maps are pinned in. The version in its name changes
// whenever a pinned map changes shape, since the kernel refuses to reuse a pin of another
// shape.
const DefaultPinDir = "/sys/fs/bpf/ztcanary/capture-v1"

// ErrUnsupported is returned by Probe on systems other than Linux.
var ErrUnsupported = errors.New("eBPF capture probe needs Linux")

// ProbeOptions configure Load.
type ProbeOptions struct {
	// PinDir is the bpffs folder for the maps (DefaultPinDir when empty). When PinDir is
	// below /sys/fs/bpf and no bpffs is mounted there, Load mounts one (in the agent's mount
	// namespace: for counts to survive restarts the host should mount it).
	PinDir string
	// Ports to follow (DefaultPorts when empty), at most 16.
	Ports []uint16
}

func (o ProbeOptions) withDefaults() ProbeOptions {
	if o.PinDir == "" {
		o.PinDir = DefaultPinDir
	}
	if len(o.Ports) == 0 {
		o.Ports = DefaultPorts
	}
	return o
}
