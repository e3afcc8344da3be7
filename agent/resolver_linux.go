package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsResolver finds the network namespaces of pods by their IP addresses: it lists the
// namespaces of the host (the CRI's bind mounts under /var/run/netns and, optionally, those
// of running processes) and reads the addresses inside each new one, once.
//
// It tells namespaces apart by device and inode number, and holds each known one open
// until it vanishes from the listing: the kernel gives a new namespace the inode number
// of one just destroyed, so a pod replaced between two refreshes (its sandbox removed, a
// new one created) would otherwise pass for the old namespace, with its cookie and
// addresses. Held open, a destroyed pod's namespace lingers until the next Refresh.
type NetnsResolver struct {
	// Dirs hold bind-mounted network namespaces (containerd and CRI-O: /var/run/netns).
	Dirs []string
	// ProcRoot, if set, is also searched: /proc/<pid>/ns/net of every process.
	ProcRoot string
	// Refused, if set, hears once about each listed namespace the process may not open
	// or enter (a missing capability), whose pods would otherwise stay unresolved in
	// silence.
	Refused func(path string, err error)

	known   map[nsID]*Netns
	refused map[nsID]bool
}

type nsID struct{ dev, ino uint64 }

// Netns is a network namespace the resolver found.
type Netns struct {
	// Path opens it (a bind mount or /proc/<pid>/ns/net).
	Path   string
	Cookie uint64
	IPs    []string

	handle netns.NsHandle // held while the resolver knows the namespace
}

// Open opens the namespace (a new handle, which the caller closes).
func (n *Netns) Open() (netns.NsHandle, error) {
	if n.handle > 0 {
		fd, err := unix.FcntlInt(uintptr(n.handle), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return netns.None(), fmt.Errorf("dup netns handle of %s: %w", n.Path, err)
		}
		return netns.NsHandle(fd), nil
	}
	return netns.GetFromPath(n.Path)
}

// Close releases the namespaces the resolver holds and forgets them.
func (r *NetnsResolver) Close() {
	for id, n := range r.known {
		n.release()
		delete(r.known, id)
	}
}

func (n *Netns) release() {
	if n.handle > 0 {
		n.handle.Close()
	}
	n.handle = netns.None()
}

// Refresh lists the namespaces again: new ones are read, vanished ones forgotten. It
// returns the namespaces seen for the first time.
func (r *NetnsResolver) Refresh() ([]*Netns, error) {
	if r.known == nil {
		r.known = map[nsID]*Netns{}
	}
	paths := map[nsID]string{}
	add := func(p string) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return
		}
		id := nsID{st.Dev, st.Ino}
		if _, ok := paths[id]; !ok {
			paths[id] = p
		}
	}
	for _, d := range r.Dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("list %s: %w", d, err)
		}
		for _, e := range ents {
			add(filepath.Join(d, e.Name()))
		}
	}
	if r.ProcRoot != "" {
		ents, err := os.ReadDir(r.ProcRoot)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", r.ProcRoot, err)
		}
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				add(filepath.Join(r.ProcRoot, e.Name(), "ns", "net"))
			}
		}
	}
	for id, n := range r.known {
		if _, ok := paths[id]; !ok {
			n.release()
			delete(r.known, id)
		}
	}
	for id := range r.refused {
		if _, ok := paths[id]; !ok {
			delete(r.refused, id)
		}
	}
	var fresh []*Netns
	for id, p := range paths {
		if n, ok := r.known[id]; ok {
			n.Path = p // the first path may have gone while the namespace lives on
			continue
		}
		n, err := readNetns(p)
		if err != nil {
			if errors.Is(err, os.ErrPermission) && r.Refused != nil && !r.refused[id] {
				if r.refused == nil {
					r.refused = map[nsID]bool{}
				}
				r.refused[id] = true
				r.Refused(p, err)
			}
			continue // refused, gone meanwhile, or not a network namespace
		}
		r.known[id] = n
		fresh = append(fresh, n)
	}
	return fresh, nil
}

// ByIP indexes the known namespaces by address.
func (r *NetnsResolver) ByIP() map[string]*Netns {
	m := map[string]*Netns{}
	for _, n := range r.known {
		for _, ip := range n.IPs {
			m[ip] = n
		}
	}
	return m
}

// Cookies returns the cookies of every known namespace.
func (r *NetnsResolver) Cookies() map[uint64]bool {
	m := map[uint64]bool{}
	for _, n := range r.known {
		m[n.Cookie] = true
	}
	return m
}

func readNetns(path string) (*Netns, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	keep := false
	defer func() {
		if !keep {
			ns.Close()
		}
	}()
	cookie, err := NetnsCookie(ns)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses in %s: %w", path, err)
	}
	n := &Netns{Path: path, Cookie: cookie, handle: ns}
	for _, a := range addrs {
		if a.IP.IsLoopback() || a.IP.IsLinkLocalUnicast() {
			continue
		}
		n.IPs = append(n.IPs, a.IP.String())
	}
	keep = true
	return n, nil
}
