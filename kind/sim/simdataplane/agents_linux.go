//go:build linux

package simdataplane

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// agentPackage is the node agent's command, for BuildAgent.
const agentPackage = "github.com/ztcanary/ztcanary/cmd/ztcanary-agent"

// agentProc is a running ztcanary-agent for one node.
type agentProc struct {
	node     string
	exe      string
	cmd      *exec.Cmd
	sandbox  *sandbox // nil: run as the test's own user, root
	exited   chan struct{}
	stopping bool
}

// agentArgs are the flags of node's agent: its own pin folder on the data plane's
// bpffs, the data plane's namespaces, the host's cgroup v2 mount.
func agentArgs(d *DataPlane, node string) []string {
	args := []string{
		"--kubeconfig=" + d.cfg.Kubeconfig,
		"--node-name=" + node,
		"--ztunnel-namespace=" + d.cfg.ZtunnelNamespace,
		"--pin-dir=" + filepath.Join(d.dirs.bpf, node, "capture-v1"),
		"--netns-dirs=" + d.dirs.netns,
		"--metrics-bind-address=0",
		"--sync-interval=" + d.cfg.AgentSyncInterval.String(),
		"--min-write-interval=" + d.cfg.AgentMinWriteInterval.String(),
		"--resync-interval=" + d.cfg.AgentResyncInterval.String(),
	}
	if root, err := findCgroup2Root(); err == nil {
		args = append(args, "--cgroup-root="+root)
	}
	args = append(args, "--ports="+joinPorts(d.cfg.Ports))
	return append(args, d.cfg.AgentArgs...)
}

// agentSandbox is how node's agent runs as Config.AgentDaemonSet says: the
// container's args with the simulation's flags after them (later flags win), its
// hostPaths mapped to the node's bpffs (a folder of the data plane's, one per node,
// so pins stay per node) and the data plane's namespaces.
func agentSandbox(d *DataPlane, node, exe string) (sandbox, error) {
	bpf := filepath.Join(d.dirs.bpf, node)
	if err := os.MkdirAll(bpf, 0o700); err != nil {
		return sandbox{}, fmt.Errorf("simdataplane: bpffs of %s: %w", node, err)
	}
	s, err := sandboxFor(d.cfg.AgentDaemonSet, node, exe, map[string]string{
		"/sys/fs/bpf": bpf, "/var/run/netns": d.dirs.netns, "/run/netns": d.dirs.netns,
	})
	if err != nil {
		return sandbox{}, err
	}
	s.Args = append(s.Args,
		"--kubeconfig="+d.agentKubeconfig,
		"--metrics-bind-address=0",
		"--sync-interval="+d.cfg.AgentSyncInterval.String(),
		"--min-write-interval="+d.cfg.AgentMinWriteInterval.String(),
		"--resync-interval="+d.cfg.AgentResyncInterval.String(),
	)
	if d.cfg.ZtunnelNamespace != "istio-system" {
		s.Args = append(s.Args, "--ztunnel-namespace="+d.cfg.ZtunnelNamespace)
	}
	if !slices.Equal(d.cfg.Ports, DefaultPorts) {
		s.Args = append(s.Args, "--ports="+joinPorts(d.cfg.Ports))
	}
	s.Args = append(s.Args, d.cfg.AgentArgs...)
	return s, nil
}

// writeImpersonating writes, into dir, a copy of the admin's kubeconfig that acts as
// the DaemonSet's ServiceAccount (as a pod using its token would), through the
// admin's right to impersonate.
func writeImpersonating(admin string, ds *appsv1.DaemonSet, dir string) (string, error) {
	cfg, err := clientcmd.LoadFromFile(admin)
	if err != nil {
		return "", fmt.Errorf("simdataplane: load kubeconfig %s: %w", admin, err)
	}
	sa := ds.Spec.Template.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = "system:serviceaccount:" + ds.Namespace + ":" + sa
		ai.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + ds.Namespace, "system:authenticated"}
	}
	path := filepath.Join(dir, "agent.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("simdataplane: write the agents' kubeconfig: %w", err)
	}
	return path, nil
}

// AgentKubeconfig is the kubeconfig the agents use: with Config.AgentDaemonSet, one
// impersonating its ServiceAccount; otherwise Config.Kubeconfig.
func (d *DataPlane) AgentKubeconfig() string {
	if d.agentKubeconfig != "" {
		return d.agentKubeconfig
	}
	return d.cfg.Kubeconfig
}

// AgentExec runs argv (an absolute path and its arguments) in the mount namespace of
// node's sandboxed agent, as its user with its capabilities, as `kubectl exec` runs
// a command in the agent's container, and returns the combined output.
func (d *DataPlane) AgentExec(node string, argv ...string) ([]byte, error) {
	d.mu.Lock()
	n, ok := d.nodes[node]
	var a *agentProc
	if ok {
		a = n.agent
	}
	d.mu.Unlock()
	if a == nil || a.sandbox == nil {
		return nil, fmt.Errorf("simdataplane: node %s has no agent run as Config.AgentDaemonSet says", node)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("simdataplane: AgentExec on %s: no command", node)
	}
	return execInSandbox(a.cmd.Process.Pid, *a.sandbox, argv)
}

func joinPorts(ports []uint16) string {
	var s string
	for i, p := range ports {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprint(p)
	}
	return s
}

// startAgent runs node's agent, logging to the data plane's log folder; it dies with
// this process.
func startAgent(d *DataPlane, node string) (*agentProc, error) {
	exe, err := filepath.Abs(d.cfg.AgentBinary)
	if err != nil {
		return nil, fmt.Errorf("simdataplane: agent binary: %w", err)
	}
	logf, err := os.OpenFile(d.dirs.log("agent-"+node), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("simdataplane: agent log: %w", err)
	}
	defer logf.Close()
	a := &agentProc{node: node, exe: exe, exited: make(chan struct{})}
	if d.cfg.AgentDaemonSet != nil {
		s, err := agentSandbox(d, node, exe)
		if err != nil {
			return nil, err
		}
		a.sandbox = &s
		if a.cmd, err = startSandboxed(s, logf, logf); err != nil {
			return nil, fmt.Errorf("simdataplane: start the agent of %s as DaemonSet %s/%s runs it: %w",
				node, d.cfg.AgentDaemonSet.Namespace, d.cfg.AgentDaemonSet.Name, err)
		}
	} else {
		a.cmd = exec.Command(exe, agentArgs(d, node)...)
		a.cmd.Stdout, a.cmd.Stderr = logf, logf
		a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := a.cmd.Start(); err != nil {
			return nil, fmt.Errorf("simdataplane: start the agent of %s: %w", node, err)
		}
	}
	if resolved, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", a.cmd.Process.Pid)); err == nil {
		a.exe = resolved // what a sweep compares against
	}
	go func() {
		err := a.cmd.Wait()
		d.mu.Lock()
		if !a.stopping {
			d.failures = append(d.failures, fmt.Errorf("the agent of %s (pid %d) exited on its own: %v", node, a.cmd.Process.Pid, err))
			d.log.Error("agent exited", zap.String("node", node), zap.Error(err))
		}
		d.mu.Unlock()
		close(a.exited)
	}()
	d.log.Info("agent started", zap.String("node", node), zap.Int("pid", a.cmd.Process.Pid))
	return a, nil
}

// stop sends SIGTERM (by PID), then SIGKILL if the agent has not ended within 10s.
func (a *agentProc) stop(mu *sync.Mutex) error {
	mu.Lock()
	a.stopping = true
	mu.Unlock()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited
	return fmt.Errorf("the agent of %s (pid %d) ignored SIGTERM for 10s: killed", a.node, a.cmd.Process.Pid)
}

// BuildAgent builds the ztcanary-agent binary into dir with the go command (run from
// within the ztcanary module, as tests are) and returns its path.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "ztcanary-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, agentPackage)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("simdataplane: build the agent: %w\n%s", err, b)
	}
	return out, nil
}
