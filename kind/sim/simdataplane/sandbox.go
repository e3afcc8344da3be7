package simdataplane

import (
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// sandbox is how an agent runs when Config.AgentDaemonSet is set: what the kubelet
// and a container runtime would make of the DaemonSet's pod on one node, reduced to
// what this host can do without images. It travels, as JSON, to the helper process
// (sandbox_linux.go) that sets it up and then becomes the agent.
type sandbox struct {
	// Exe is the program; Args its arguments (without the program's name), Env its
	// whole environment.
	Exe  string   `json:"exe"`
	Args []string `json:"args"`
	Env  []string `json:"env"`
	// Mounts are the container's volume mounts, in order, with their sources on this
	// host.
	Mounts []sandboxMount `json:"mounts,omitempty"`
	// ReadOnlyRoot makes every mount of the sandbox read-only but the writable volume
	// mounts (securityContext.readOnlyRootFilesystem).
	ReadOnlyRoot bool `json:"readOnlyRoot"`
	// UID and GID are runAsUser and runAsGroup.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Caps are the capability numbers the process keeps (bounding, permitted and
	// effective sets; the inheritable and ambient sets are empty, as Kubernetes
	// leaves them).
	Caps []int `json:"caps"`
	// NoNewPrivs is allowPrivilegeEscalation: false.
	NoNewPrivs bool `json:"noNewPrivs"`
	// Join: the mounts exist already (the helper was started by nsenter inside a
	// running sandbox's mount namespace, as `kubectl exec` enters a container).
	Join bool `json:"join,omitempty"`
}

// sandboxMount is a volume mount: Source on this host, bound at Target.
type sandboxMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly"`
	// Slave: mountPropagation HostToContainer, so that mounts made on the host later
	// (new pods' network namespaces) appear in the sandbox. Otherwise private, the
	// kubelet's default.
	Slave bool `json:"slave"`
}

// capNames are the kernel's capability numbers by the names a securityContext uses.
var capNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
	"LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// runtimeDefaultCaps are what containerd and CRI-O give a container that drops nothing.
var runtimeDefaultCaps = []string{
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}

func capNumber(name string) (int, error) {
	i := slices.Index(capNames, strings.TrimPrefix(strings.ToUpper(name), "CAP_"))
	if i < 0 {
		return 0, fmt.Errorf("unknown capability %q", name)
	}
	return i, nil
}

// CapabilityMask is the kernel's bit mask (as /proc/<pid>/status shows CapEff) of the
// capabilities a container with sc keeps: the runtime's defaults, less capabilities.drop
// (ALL drops every one), plus capabilities.add.
func CapabilityMask(sc *corev1.SecurityContext) (uint64, error) {
	caps, err := containerCaps(sc)
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return m, err
}

func containerCaps(sc *corev1.SecurityContext) ([]int, error) {
	keep := map[int]bool{}
	for _, n := range runtimeDefaultCaps {
		c, _ := capNumber(n)
		keep[c] = true
	}
	if sc != nil && sc.Capabilities != nil {
		for _, n := range sc.Capabilities.Drop {
			if strings.EqualFold(string(n), "ALL") {
				clear(keep)
				continue
			}
			c, err := capNumber(string(n))
			if err != nil {
				return nil, fmt.Errorf("capabilities.drop: %w", err)
			}
			delete(keep, c)
		}
		for _, n := range sc.Capabilities.Add {
			c, err := capNumber(string(n))
			if err != nil {
				return nil, fmt.Errorf("capabilities.add: %w", err)
			}
			keep[c] = true
		}
	}
	var out []int
	for c := range keep {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

// sandboxFor turns the DaemonSet's pod into the sandbox of its container on node:
// the container's args and environment (fieldRefs resolved as the kubelet would),
// its user, capabilities, privilege escalation and read-only root filesystem, and its
// hostPath volume mounts, each source taken from hostPaths when the simulated node
// keeps that folder elsewhere on this host (its bpffs, its network namespaces), else
// the same path on this host. What cannot be simulated faithfully is refused, naming
// the field, rather than run differently.
func sandboxFor(ds *appsv1.DaemonSet, node, exe string, hostPaths map[string]string) (sandbox, error) {
	pod := ds.Spec.Template.Spec
	field := func(f string, a ...any) error {
		return fmt.Errorf("simdataplane: DaemonSet %s/%s: "+f, append([]any{ds.Namespace, ds.Name}, a...)...)
	}
	if len(pod.Containers) != 1 || len(pod.InitContainers) > 0 {
		return sandbox{}, field("%d containers and %d init containers: one container is simulated", len(pod.Containers), len(pod.InitContainers))
	}
	if !pod.HostPID {
		return sandbox{}, field("spec.template.spec.hostPID is false: the agent reads the host's /proc, and only the host's PID namespace is simulated")
	}
	c := pod.Containers[0]
	if len(c.Command) > 0 {
		return sandbox{}, field("containers[0].command is set: the agent binary is the image's entrypoint, only args are simulated")
	}
	sc := c.SecurityContext
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		return sandbox{}, field("containers[0].securityContext.privileged is true: a privileged agent is not simulated")
	}
	s := sandbox{Exe: exe, Args: append([]string(nil), c.Args...)}
	var err error
	if s.Caps, err = containerCaps(sc); err != nil {
		return sandbox{}, field("containers[0].securityContext.%w", err)
	}
	// allowPrivilegeEscalation defaults to true unless CAP_SYS_ADMIN is added or the
	// container is privileged; false sets no_new_privs.
	s.NoNewPrivs = sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	s.ReadOnlyRoot = sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	uid, gid := (*int64)(nil), (*int64)(nil)
	if psc := pod.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	if sc != nil && sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc != nil && sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if uid != nil {
		s.UID = int(*uid) // else the image's user: root
	}
	if gid != nil {
		s.GID = int(*gid)
	}

	s.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + node}
	if len(c.EnvFrom) > 0 {
		return sandbox{}, field("containers[0].envFrom is not simulated")
	}
	for i, e := range c.Env {
		v := e.Value
		if f := e.ValueFrom; f != nil {
			if f.FieldRef == nil {
				return sandbox{}, field("containers[0].env[%d] (%s): only fieldRef is simulated", i, e.Name)
			}
			switch f.FieldRef.FieldPath {
			case "spec.nodeName":
				v = node
			case "metadata.namespace":
				v = ds.Namespace
			case "metadata.name":
				v = ds.Name + "-" + node
			case "spec.serviceAccountName":
				v = pod.ServiceAccountName
			default:
				return sandbox{}, field("containers[0].env[%d] (%s): fieldRef %s is not simulated", i, e.Name, f.FieldRef.FieldPath)
			}
		}
		s.Env = append(s.Env, e.Name+"="+v)
	}

	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	for i, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			return sandbox{}, field("containers[0].volumeMounts[%d]: no volume %s", i, m.Name)
		}
		if v.HostPath == nil {
			return sandbox{}, field("volume %s: only hostPath volumes are simulated", m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			return sandbox{}, field("containers[0].volumeMounts[%d]: subPath is not simulated", i)
		}
		src := v.HostPath.Path
		if mapped, ok := hostPaths[src]; ok {
			src = mapped
		}
		sm := sandboxMount{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly}
		switch p := m.MountPropagation; {
		case p == nil || *p == corev1.MountPropagationNone:
		case *p == corev1.MountPropagationHostToContainer:
			sm.Slave = true
		default:
			return sandbox{}, field("containers[0].volumeMounts[%d]: mountPropagation %s is not simulated (and needs a privileged container)", i, *p)
		}
		s.Mounts = append(s.Mounts, sm)
	}
	return s, nil
}
