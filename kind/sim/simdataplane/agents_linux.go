//go:build linux

package simdataplane

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// agentPackage is the node agent's command, for BuildAgent.
const agentPackage = "github.com/ztcanary/ztcanary/cmd/ztcanary-agent"

// agentProc is a running ztcanary-agent for one node.
type agentProc struct {
	node     string
	exe      string
	cmd      *exec.Cmd
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
	var ports string
	for i, p := range d.cfg.Ports {
		if i > 0 {
			ports += ","
		}
		ports += fmt.Sprint(p)
	}
	args = append(args, "--ports="+ports)
	return append(args, d.cfg.AgentArgs...)
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
	a.cmd = exec.Command(exe, agentArgs(d, node)...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("simdataplane: start the agent of %s: %w", node, err)
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
