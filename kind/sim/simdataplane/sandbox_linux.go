//go:build linux

package simdataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// envSandbox makes the running binary the sandbox helper: it reads the sandbox (JSON)
// from this variable, sets it up and execs the sandboxed program, keeping its PID.
const envSandbox = "ZTCANARY_SIMDATAPLANE_SANDBOX"

// sandboxStatusFD is where the helper writes why it failed; it closes on exec, so
// the parent reading end of file with nothing read knows the program runs.
const sandboxStatusFD = 3

func init() {
	if spec := os.Getenv(envSandbox); spec != "" {
		os.Exit(sandboxMain(spec))
	}
}

// sandboxMain runs in a fresh process, started in a mount namespace of its own
// (CLONE_NEWNS, as a copy of the host's), in the host's PID and network namespaces.
// It makes the sandbox's mounts, drops to its user and capabilities, and execs the
// program. Credentials and capabilities belong to a thread, so everything runs on
// this one, locked, until exec.
func sandboxMain(spec string) int {
	runtime.LockOSThread() // never unlocked: execve from this thread carries its credentials
	status := os.NewFile(sandboxStatusFD, "sandbox-status")
	unix.CloseOnExec(sandboxStatusFD)
	fail := func(err error) int {
		fmt.Fprintf(status, "sandbox: %v", err)
		fmt.Fprintf(os.Stderr, "sandbox: %v\n", err)
		return 126
	}
	var s sandbox
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return fail(err)
	}
	if !s.Join {
		if err := s.mount(); err != nil {
			return fail(err)
		}
	}
	if err := s.dropPrivileges(); err != nil {
		return fail(err)
	}
	if err := os.Chdir("/"); err != nil {
		return fail(err)
	}
	err := syscall.Exec(s.Exe, append([]string{s.Exe}, s.Args...), s.Env)
	return fail(fmt.Errorf("exec %s: %w", s.Exe, err))
}

// mount makes the sandbox's view of the files: no propagation back to the host, the
// volume mounts, then (readOnlyRootFilesystem) everything read-only but the writable
// volume mounts.
func (s sandbox) mount() error {
	// A slave of the host: nothing mounted here leaks out, mounts made on the host
	// still reach the volume mounts that ask for them (HostToContainer).
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a slave mount: %w", err)
	}
	covered := map[string]bool{}
	for _, m := range s.Mounts {
		if err := ensureMountPoint(m.Target, covered); err != nil {
			return err
		}
		if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s at %s: %w", m.Source, m.Target, err)
		}
		prop := uintptr(unix.MS_PRIVATE)
		if m.Slave {
			prop = unix.MS_SLAVE
		}
		if err := unix.Mount("", m.Target, "", uintptr(unix.MS_REC)|prop, ""); err != nil {
			return fmt.Errorf("set the propagation of %s: %w", m.Target, err)
		}
	}
	setRO := func(path string, ro bool) error {
		attr := &unix.MountAttr{}
		if ro {
			attr.Attr_set = unix.MOUNT_ATTR_RDONLY
		} else {
			attr.Attr_clr = unix.MOUNT_ATTR_RDONLY
		}
		if err := unix.MountSetattr(unix.AT_FDCWD, path, unix.AT_RECURSIVE, attr); err != nil {
			return fmt.Errorf("make %s read-only=%v: %w", path, ro, err)
		}
		return nil
	}
	if s.ReadOnlyRoot {
		// Every mount, /proc, /sys and /dev included: stricter than a container
		// runtime (whose /dev and /proc stay writable), so a program that passes here
		// passes there.
		if err := setRO("/", true); err != nil {
			return err
		}
	}
	for _, m := range s.Mounts {
		if err := setRO(m.Target, m.ReadOnly); err != nil {
			return err
		}
	}
	return nil
}

// ensureMountPoint creates a missing mount point without touching the host's files:
// it mounts a tmpfs, private to the sandbox, on the nearest existing parent (as a
// container's own files would stand there) and creates the folders in it.
func ensureMountPoint(target string, covered map[string]bool) error {
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	parent := filepath.Dir(target)
	for {
		if _, err := os.Stat(parent); err == nil {
			break
		}
		if parent == "/" {
			return fmt.Errorf("mount point %s: no parent folder", target)
		}
		parent = filepath.Dir(parent)
	}
	if !covered[parent] {
		if err := unix.Mount("tmpfs", parent, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755,size=64k"); err != nil {
			return fmt.Errorf("mount a tmpfs on %s for mount point %s: %w", parent, target, err)
		}
		covered[parent] = true
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", target, err)
	}
	return nil
}

// dropPrivileges becomes the sandbox's user with only its capabilities: the bounding
// set first (it needs CAP_SETPCAP), then the user, then the permitted, effective and
// inheritable sets; ambient cleared; no_new_privs last.
func (s sandbox) dropPrivileges() error {
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if slices.Contains(s.Caps, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear the ambient capabilities: %w", err)
	}
	if s.UID != 0 || s.GID != 0 {
		// Raw per-thread calls: this thread execs. Kubernetes gives a non-root
		// container no ambient capabilities, so it has none after exec, as here.
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			return fmt.Errorf("setgroups: %w", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(s.GID), uintptr(s.GID), uintptr(s.GID)); e != 0 {
			return fmt.Errorf("setresgid %d: %w", s.GID, e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(s.UID), uintptr(s.UID), uintptr(s.UID)); e != 0 {
			return fmt.Errorf("setresuid %d: %w", s.UID, e)
		}
	}
	var data [2]unix.CapUserData
	for _, c := range s.Caps {
		data[c/32].Permitted |= 1 << (uint(c) % 32)
	}
	if s.UID != 0 {
		data = [2]unix.CapUserData{}
	}
	data[0].Effective, data[1].Effective = data[0].Permitted, data[1].Permitted
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("set no_new_privs: %w", err)
		}
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// startSandboxed starts the sandbox helper, which becomes s.Exe in a mount namespace
// of its own, and returns once it has exec'd (or why it failed). The process dies
// with this one.
func startSandboxed(s sandbox, stdout, stderr io.Writer) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	spec, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(self)
	cmd.Env = []string{envSandbox + "=" + string(spec)}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.ExtraFiles = []*os.File{w} // fd 3: sandboxStatusFD
	// Cloneflags, not Unshareflags: Go makes an unshared mount namespace private all
	// through, which would cut the propagation HostToContainer asks for.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, err
	}
	msg, _ := io.ReadAll(r)
	if len(msg) > 0 {
		_ = cmd.Wait()
		return nil, errors.New(string(msg))
	}
	return cmd, nil
}

// execInSandbox runs argv inside the mount namespace of the sandboxed process pid,
// with s's user and capabilities, as `kubectl exec` runs a command in a container,
// and returns its combined output.
func execInSandbox(pid int, s sandbox, argv []string) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, fmt.Errorf("nsenter (util-linux) is needed: %w", err)
	}
	s.Join, s.Exe, s.Args = true, argv[0], argv[1:]
	spec, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	cmd := exec.Command(nsenter, "--target", strconv.Itoa(pid), "--mount", "--", self)
	cmd.Env = []string{envSandbox + "=" + string(spec)}
	cmd.ExtraFiles = []*os.File{devnull} // fd 3: the status, unread
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd.CombinedOutput()
}
