//go:build linux

package simdataplane

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// cgroup2Roots are where cgroup v2 is mounted: hybrid hosts (like these machines) at
// /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup. The agent looks in the same
// places.
var cgroup2Roots = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}

func findCgroup2Root() (string, error) {
	for _, p := range cgroup2Roots {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 mount at %s", strings.Join(cgroup2Roots, " or "))
}

// Check tells whether this host can run a data plane (agents: with agents): root,
// cgroup v2 and, for the agents' eBPF programs, kernel BTF. The error says what is
// missing.
func Check(agents bool) error {
	if os.Geteuid() != 0 {
		return errors.New("simdataplane: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN for network namespaces and cgroups, CAP_BPF for the agents)")
	}
	if _, err := findCgroup2Root(); err != nil {
		return fmt.Errorf("simdataplane: %w", err)
	}
	if agents {
		if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
			return errors.New("simdataplane: the agents need kernel BTF at /sys/kernel/btf/vmlinux")
		}
	}
	return nil
}

// podCgroupDir is the cgroup of pod uid on node below root, named as the kubelet's
// systemd cgroup driver names it (dashes of the UID become underscores).
func podCgroupDir(root, node, uid string) string {
	return filepath.Join(root, node, "kubepods.slice", "kubepods-besteffort.slice",
		"kubepods-besteffort-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// tempRoot holds the data planes started without a Dir, so Start can find and sweep
// the leftovers of killed runs.
func tempRoot() string { return filepath.Join(os.TempDir(), "ztcanary-simdataplane") }

const stateFile = "state.json"

// dirs are the places a data plane owns.
type dirs struct {
	root   string // Config.Dir or a temp folder
	own    bool   // root is removed by Close
	netns  string // bind mounts of pod namespaces
	logs   string
	bpf    string // bpffs mount for the agents' pins ("" without agents)
	cgroup string // cgroup v2 subtree of the stand-in ztunnels
	state  state
}

// state is written to root/state.json, so that a later Start can clean up after an
// owner that was killed.
type state struct {
	Owner      int       `json:"owner"`
	OwnerStart uint64    `json:"ownerStart"` // start time in clock ticks, against PID reuse
	Root       string    `json:"root"`
	RemoveRoot bool      `json:"removeRoot"`
	Netns      string    `json:"netns"`
	NetnsMount bool      `json:"netnsMount,omitempty"` // Netns is a shared bind mount of itself
	BPF        string    `json:"bpf,omitempty"`
	Cgroup     string    `json:"cgroup"`
	Processes  []process `json:"processes,omitempty"` // the agents (stand-ins live in Cgroup)
}

type process struct {
	PID int    `json:"pid"`
	Exe string `json:"exe"`
}

func (d dirs) log(name string) string { return filepath.Join(d.logs, name+".log") }

// makeDirs creates the folders, the cgroup subtree and (for agents) the bpffs mount,
// recording them in the state file first. With sandboxed agents the namespaces'
// folder becomes a shared mount (a bind of itself), so that the namespaces published
// after an agent started propagate into its mount namespace (HostToContainer).
func makeDirs(root string, agents, sandboxed bool) (d dirs, err error) {
	cg2, err := findCgroup2Root()
	if err != nil {
		return d, fmt.Errorf("simdataplane: %w", err)
	}
	if root == "" {
		if err := os.MkdirAll(tempRoot(), 0o755); err != nil {
			return d, fmt.Errorf("simdataplane: %w", err)
		}
		if root, err = os.MkdirTemp(tempRoot(), "dp-"); err != nil {
			return d, fmt.Errorf("simdataplane: %w", err)
		}
		d.own = true
	} else {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return d, fmt.Errorf("simdataplane: Config.Dir: %w", err)
		}
		if st, err := readState(root); err == nil {
			if ownerAlive(st) {
				return d, fmt.Errorf("simdataplane: Config.Dir %s is in use by process %d", root, st.Owner)
			}
			if err := teardown(st, zap.NewNop()); err != nil {
				return d, fmt.Errorf("simdataplane: clean up the previous run in %s: %w", root, err)
			}
		}
	}
	d.root = root
	d.netns, d.logs = filepath.Join(root, "netns"), filepath.Join(root, "logs")
	d.cgroup = filepath.Join(cg2, fmt.Sprintf("ztcanary-simdataplane-%d-%s", os.Getpid(), randHex(6)))
	if agents {
		d.bpf = filepath.Join(root, "bpf")
	}
	start, err := procStart(os.Getpid())
	if err != nil {
		return d, fmt.Errorf("simdataplane: %w", err)
	}
	d.state = state{Owner: os.Getpid(), OwnerStart: start, Root: root, RemoveRoot: d.own, Netns: d.netns, NetnsMount: sandboxed, BPF: d.bpf, Cgroup: d.cgroup}
	if err := d.writeState(nil); err != nil {
		return d, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.remove())
		}
	}()
	for _, p := range []string{d.netns, d.logs, d.cgroup} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return d, fmt.Errorf("simdataplane: %w", err)
		}
	}
	if sandboxed {
		if err := unix.Mount(d.netns, d.netns, "", unix.MS_BIND, ""); err != nil {
			return d, fmt.Errorf("simdataplane: bind %s on itself: %w", d.netns, err)
		}
		if err := unix.Mount("", d.netns, "", unix.MS_SHARED, ""); err != nil {
			return d, fmt.Errorf("simdataplane: make %s a shared mount: %w", d.netns, err)
		}
	}
	if d.bpf != "" {
		if err := os.MkdirAll(d.bpf, 0o700); err != nil {
			return d, fmt.Errorf("simdataplane: %w", err)
		}
		if err := unix.Mount("bpf", d.bpf, "bpf", 0, "mode=0700"); err != nil {
			return d, fmt.Errorf("simdataplane: mount bpffs at %s: %w", d.bpf, err)
		}
	}
	return d, nil
}

func (d *dirs) writeState(agents []process) error {
	d.state.Processes = agents
	b, err := json.MarshalIndent(d.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.root, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("simdataplane: write state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.root, stateFile)); err != nil {
		return fmt.Errorf("simdataplane: write state: %w", err)
	}
	return nil
}

// remove undoes makeDirs once every process is gone.
func (d dirs) remove() error {
	if d.root == "" {
		return nil
	}
	return teardown(d.state, zap.NewNop())
}

func readState(root string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(root, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file in %s: %w", root, err)
	}
	return st, nil
}

// procStart returns the start time of a process in clock ticks since boot (field 22
// of /proc/<pid>/stat).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func ownerAlive(st state) bool {
	start, err := procStart(st.Owner)
	return err == nil && start == st.OwnerStart
}

// sweepStale tears down the data planes under tempRoot whose owner died.
func sweepStale(log *zap.Logger) {
	ents, err := os.ReadDir(tempRoot())
	if err != nil {
		return
	}
	for _, e := range ents {
		root := filepath.Join(tempRoot(), e.Name())
		st, err := readState(root)
		if err != nil || ownerAlive(st) {
			continue
		}
		if err := teardown(st, log); err != nil {
			log.Warn("sweeping a killed data plane failed", zap.String("dir", root), zap.Error(err))
		} else {
			log.Info("swept the leftovers of a killed data plane", zap.String("dir", root), zap.Int("owner", st.Owner))
		}
	}
}

// teardown kills what is left of a data plane (its agents by PID, checked against
// their executable, and the processes of its cgroup subtree), then removes its
// namespace mounts, bpffs, cgroups and, if it owns it, its folder.
func teardown(st state, log *zap.Logger) error {
	var errs []error
	for _, p := range st.Processes {
		if exe, err := os.Readlink("/proc/" + strconv.Itoa(p.PID) + "/exe"); err == nil && exe == p.Exe {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
			log.Info("killed a leftover agent", zap.Int("pid", p.PID))
		}
	}
	if st.Cgroup != "" {
		errs = append(errs, removeCgroupTree(st.Cgroup))
	}
	if st.Netns != "" {
		ents, err := os.ReadDir(st.Netns)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, e := range ents {
			errs = append(errs, unpublish(filepath.Join(st.Netns, e.Name())))
		}
		if st.NetnsMount {
			err := unix.Unmount(st.Netns, unix.MNT_DETACH)
			if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", st.Netns, err))
			}
		}
	}
	bpfMounted := false
	if st.BPF != "" {
		err := unix.Unmount(st.BPF, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			bpfMounted = true
			errs = append(errs, fmt.Errorf("unmount bpffs %s: %w", st.BPF, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if st.RemoveRoot && !bpfMounted {
		return os.RemoveAll(st.Root)
	}
	if err := os.Remove(filepath.Join(st.Root, stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeCgroupTree kills the processes left in a cgroup subtree (ours: stand-ins)
// and removes its directories, deepest first.
func removeCgroupTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk cgroups %s: %w", root, err)
	}
	for _, dir := range dirs {
		for _, pid := range cgroupProcs(dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		// A killed process leaves its cgroup a moment after the signal.
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := unix.Rmdir(dirs[i])
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

func cgroupProcs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
