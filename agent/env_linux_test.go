package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// The stand-in ztunnel is this test binary, re-executed with helperEnv set.
const helperEnv = "ZTCANARY_TEST_ZTUNNEL"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(ztunnelMain())
	}
	if os.Getenv(privCheckEnv) != "" {
		os.Exit(privCheckMain())
	}
	os.Exit(m.Run())
}

// ztunnelMain is a stand-in ztunnel: it gets pod network namespaces as fds 3.., and on "listen"
// binds the capture ports in each with SO_REUSEPORT (as ztunnel does in-pod), on "close"
// closes them, each answered "ok"; it accepts and closes connections meanwhile.
func ztunnelMain() int {
	var ports []int
	for _, p := range strings.Split(os.Getenv(helperEnv), ",") {
		n, err := strconv.Atoi(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad port", p)
			return 2
		}
		ports = append(ports, n)
	}
	nss, _ := strconv.Atoi(os.Getenv(helperEnv + "_NETNS"))
	var ls []net.Listener
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "listen":
			for i := 0; i < nss; i++ {
				err := InNetns(netns.NsHandle(3+i), func() error {
					for _, port := range ports {
						l, err := listenReusePort(port)
						if err != nil {
							return err
						}
						ls = append(ls, l)
						go acceptLoop(l)
					}
					return nil
				})
				if err != nil {
					fmt.Println("error:", err)
					return 1
				}
			}
		case "close":
			for _, l := range ls {
				l.Close()
			}
			ls = nil
		}
		fmt.Println("ok")
	}
	return 0
}

func listenReusePort(port int) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false) // Go listens with MPTCP by default; ztunnel uses plain TCP
	return lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
}

func acceptLoop(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// requirePrivileges skips without root, except under CI=true where it fails: there the
// eBPF tests must run. Under -short (make test-unit) it skips, even as root.
func requirePrivileges(t testing.TB) {
	t.Helper()
	simtest.SkipShort(t, "needs root and eBPF")
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN)"
	} else if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		why = "needs kernel BTF at /sys/kernel/btf/vmlinux"
	} else if _, err := FindCgroup2Root(); err != nil {
		why = err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: %s", why)
	}
	t.Skip(why)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newUID() string {
	h := randHex(16)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newProbe loads the capture programs with pins on a bpffs mounted for the test.
func newProbe(t testing.TB) (*Probe, ProbeOptions) {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	opts := ProbeOptions{PinDir: filepath.Join(dir, "capture-v1")}
	return loadProbe(t, opts), opts
}

func loadProbe(t testing.TB, opts ProbeOptions) *Probe {
	t.Helper()
	log := zap.NewNop() // benchmarks print their figures, not logs
	if tt, ok := t.(*testing.T); ok {
		log = zaptest.NewLogger(tt)
	}
	p, err := Load(log, opts)
	if err != nil {
		t.Fatalf("load probe: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// pod is a network namespace standing in for a pod.
type pod struct {
	name   string
	ns     netns.NsHandle
	cookie uint64
}

func newPod(t testing.TB, name string) *pod {
	t.Helper()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	var ns netns.NsHandle
	err = InNetns(orig, func() error { // a locked thread that goes back to orig
		var err error
		ns, err = netns.New()
		return err
	})
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink in netns: %v", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	cookie, err := NetnsCookie(ns)
	if err != nil {
		t.Fatal(err)
	}
	return &pod{name: name, ns: ns, cookie: cookie}
}

// dial makes n connections to port inside the pod and closes them.
func (p *pod) dial(t testing.TB, port, n int) {
	t.Helper()
	err := InNetns(p.ns, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false)
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("dial %s:%d: %v", p.name, port, err)
	}
}

// cgroupTree is a cgroup v2 folder owned by one test, laid out below like the kubelet's.
type cgroupTree struct {
	root string
}

func newCgroupTree(t testing.TB) *cgroupTree {
	t.Helper()
	base, err := FindCgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "ztcanary-test-"+randHex(4))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroups(t, root) })
	return &cgroupTree{root: root}
}

// removeCgroups removes a cgroup tree, deepest first (cgroup dirs go with rmdir only).
func removeCgroups(t testing.TB, root string) {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil {
			t.Errorf("remove cgroup %s: %v", dirs[i], err)
		}
	}
}

// podCgroup creates the systemd-driver cgroup of a container of pod uid and returns its path.
func (c *cgroupTree) podCgroup(t testing.TB, uid string) string {
	t.Helper()
	p := filepath.Join(c.root, "kubepods.slice", "kubepods-besteffort.slice",
		"kubepods-besteffort-pod"+strings.ReplaceAll(uid, "-", "_")+".slice",
		"cri-containerd-"+randHex(32)+".scope")
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatalf("create pod cgroup: %v", err)
	}
	return p
}

// dupFile duplicates a netns handle into an *os.File to hand to a child process.
func dupFile(ns netns.NsHandle) (*os.File, error) {
	fd, err := unix.Dup(int(ns))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "netns"), nil
}

// ztunnel is a running stand-in ztunnel process.
type ztunnel struct {
	rev, uid, cgroup string
	cmd              *exec.Cmd
	in               io.WriteCloser
	out              *bufio.Scanner
}

// startZtunnel starts a stand-in ztunnel of revision rev as pod uid, in its own cgroup,
// serving the given pods. It does not listen until told to.
func startZtunnel(t testing.TB, tree *cgroupTree, rev string, pods []*pod, ports []uint16) *ztunnel {
	t.Helper()
	return startZtunnelPod(t, tree, rev, newUID(), pods, ports)
}

// startZtunnelPod is startZtunnel for the ztunnel pod of the given UID.
func startZtunnelPod(t testing.TB, tree *cgroupTree, rev, uid string, pods []*pod, ports []uint16) *ztunnel {
	t.Helper()
	z := &ztunnel{rev: rev, uid: uid, cgroup: tree.podCgroup(t, uid)}
	var ps []string
	for _, p := range ports {
		ps = append(ps, strconv.Itoa(int(p)))
	}
	z.cmd = exec.Command(os.Args[0], "-test.run=^$")
	z.cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(ps, ","), helperEnv+"_NETNS="+strconv.Itoa(len(pods)))
	for _, p := range pods {
		// A dup: the *os.File closes its fd when done, the pod keeps its own.
		fd, err := unix.Dup(int(p.ns))
		if err != nil {
			t.Fatal(err)
		}
		z.cmd.ExtraFiles = append(z.cmd.ExtraFiles, os.NewFile(uintptr(fd), "netns-"+p.name))
	}
	z.cmd.Stderr = os.Stderr
	var err error
	if z.in, err = z.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := z.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	z.out = bufio.NewScanner(stdout)
	err = z.cmd.Start()
	for _, f := range z.cmd.ExtraFiles {
		f.Close()
	}
	if err != nil {
		t.Fatalf("start stand-in ztunnel: %v", err)
	}
	pid := z.cmd.Process.Pid
	t.Cleanup(func() {
		_ = unix.Kill(pid, unix.SIGKILL)
		_ = z.cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(z.cgroup, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatalf("move ztunnel %d into its cgroup: %v", pid, err)
	}
	return z
}

func (z *ztunnel) do(t testing.TB, cmd string) {
	t.Helper()
	if _, err := fmt.Fprintln(z.in, cmd); err != nil {
		t.Fatalf("ztunnel %s %s: %v", z.rev, cmd, err)
	}
	if !z.out.Scan() || z.out.Text() != "ok" {
		t.Fatalf("ztunnel %s %s: answered %q", z.rev, cmd, z.out.Text())
	}
}

// listen makes the ztunnel bind the capture ports in its pods.
func (z *ztunnel) listen(t testing.TB) { z.do(t, "listen") }

// close makes the ztunnel close its listeners, as ztunnel does on SIGTERM.
func (z *ztunnel) close(t testing.TB) { z.do(t, "close") }

// revisions builds the cgroup id -> revision table the way the agent does: by walking the
// cgroup tree for pod UIDs, then mapping ztunnel pod UIDs to revisions.
func revisions(t testing.TB, tree *cgroupTree, zs ...*ztunnel) map[uint64]string {
	t.Helper()
	ix, err := PodCgroups(tree.root)
	if err != nil {
		t.Fatal(err)
	}
	byUID := map[string]string{}
	for _, z := range zs {
		byUID[z.uid] = z.rev
	}
	revs := map[uint64]string{}
	for id, uid := range ix.PodOf {
		if r, ok := byUID[uid]; ok {
			revs[id] = r
		}
	}
	for _, z := range zs {
		id, err := CgroupID(z.cgroup)
		if err != nil {
			t.Fatal(err)
		}
		if revs[id] != z.rev {
			t.Fatalf("cgroup %s (id %d) of ztunnel %s not resolved from the tree: %v", z.cgroup, id, z.rev, revs)
		}
	}
	return revs
}
