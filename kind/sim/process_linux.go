//go:build linux

package sim

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// setProcAttrs puts a child in its own process group. Unless detached, the child is
// also killed when the process that started it dies, so an interrupted test leaves
// no control plane behind.
func setProcAttrs(cmd *exec.Cmd, detach bool) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// lockFile takes an exclusive advisory lock on path, waiting for other holders.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// signal sends sig to the process group led by pid.
func signal(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// alive reports whether pid still runs the executable exe (so a recycled PID is
// never mistaken for one of ours). A zombie counts as gone.
func alive(pid int, exe string) bool {
	if pid <= 0 {
		return false
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	return exe == "" || link == exe
}
