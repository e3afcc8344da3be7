package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestResolverTellsANewNamespaceFromADestroyedOne: the kernel gives a new namespace the
// inode number of one just destroyed, so a pod replaced between two refreshes must not
// pass for the old one (the old cookie and addresses would stay on the new pod).
func TestResolverTellsANewNamespaceFromADestroyedOne(t *testing.T) {
	requirePrivileges(t)
	dir := t.TempDir()
	r := NetnsResolver{Dirs: []string{dir}}
	t.Cleanup(r.Close)
	old := mountedNetns(t, "10.250.1.1", dir)
	if _, err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n := r.ByIP()["10.250.1.1"]; n == nil || n.Cookie != old.cookie {
		t.Fatalf("old pod not resolved: %v", r.ByIP())
	}
	old.remove(t) // the CRI tears the sandbox down
	// Give the kernel time to destroy a namespace nobody else holds.
	time.Sleep(200 * time.Millisecond)
	cur := mountedNetns(t, "10.250.1.2", dir)
	if _, err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	byIP := r.ByIP()
	if n := byIP["10.250.1.2"]; n == nil || n.Cookie != cur.cookie {
		t.Errorf("new pod resolved to %+v, want cookie %d", n, cur.cookie)
	}
	if n := byIP["10.250.1.1"]; n != nil {
		t.Errorf("the destroyed pod's address still resolves, to %+v", n)
	}
	if c := r.Cookies(); len(c) != 1 || !c[cur.cookie] {
		t.Errorf("cookies %v, want only the new pod's %d", c, cur.cookie)
	}
}

// bareNetns is a namespace held only by its bind mount and one handle.
type bareNetns struct {
	ns     netns.NsHandle
	cookie uint64
	path   string
}

// mountedNetns creates a namespace with ip on its loopback interface, bind-mounted in
// dir; removed at the end of the test unless removed before.
func mountedNetns(t *testing.T, ip, dir string) *bareNetns {
	t.Helper()
	p := newPodUnmanaged(t)
	h, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr(ip + "/32")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(lo, addr); err != nil {
		t.Fatalf("add %s: %v", ip, err)
	}
	p.path = filepath.Join(dir, "cni-"+randHex(8))
	if err := os.WriteFile(p.path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(p.ns)), p.path, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount netns: %v", err)
	}
	t.Cleanup(func() { p.remove(t) })
	return p
}

func newPodUnmanaged(t *testing.T) *bareNetns {
	t.Helper()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	var ns netns.NsHandle
	if err := InNetns(orig, func() error { ns, err = netns.New(); return err }); err != nil {
		t.Fatalf("new netns: %v", err)
	}
	cookie, err := NetnsCookie(ns)
	if err != nil {
		ns.Close()
		t.Fatal(err)
	}
	return &bareNetns{ns: ns, cookie: cookie}
}

// remove unmounts and closes the namespace; removing twice is harmless.
func (b *bareNetns) remove(t *testing.T) {
	if b.path != "" {
		if err := unix.Unmount(b.path, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount netns: %v", err)
		}
		b.path = ""
	}
	if b.ns > 0 {
		b.ns.Close()
		b.ns = netns.None()
	}
}
