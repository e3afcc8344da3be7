//go:build linux

package simdataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ztcanary/ztcanary/internal/nsthread"
)

// inNetns runs fn on an OS thread switched into the network namespace nsFD, then
// switches the thread back. Setns from Go, not `ip netns exec`: that remounts /sys
// and hides the cgroup v2 mount.
func inNetns(nsFD int, fn func() error) error {
	return nsthread.Run(nsthread.Into(nsFD), fn)
}

// newNetns creates a network namespace and returns a file descriptor holding it. The
// namespace lives as long as a descriptor, a bind mount or a socket refers to it.
func newNetns() (int, error) {
	fd := -1
	err := nsthread.Run(nsthread.Unshare, func() error {
		var err error
		if fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("open new netns: %w", err)
		}
		return nil
	})
	if err != nil && fd >= 0 {
		unix.Close(fd)
		fd = -1
	}
	return fd, err
}

// configureNetns brings the loopback interface of namespace fd up and gives it the
// pod's addresses (host routes: /32, /128), which is how the agent matches the
// namespace to the pod.
func configureNetns(fd int, ips []string) error {
	h, err := netlink.NewHandleAt(netns.NsHandle(fd))
	if err != nil {
		return fmt.Errorf("netlink in netns: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("pod IP %q is not an address", s)
		}
		bits := 128
		if ip.To4() != nil {
			ip, bits = ip.To4(), 32
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}}
		if err := h.AddrAdd(lo, addr); err != nil {
			return fmt.Errorf("add %s to lo: %w", s, err)
		}
	}
	return nil
}

// publish bind-mounts namespace fd at path, as a CRI does under /var/run/netns.
func publish(fd int, path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("create netns mount point: %w", err)
	}
	f.Close()
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(fd), path, "", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("bind-mount netns at %s: %w", path, err)
	}
	return nil
}

// unpublish removes a namespace's bind mount.
func unpublish(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns mount point %s: %w", path, err)
	}
	return nil
}

// dialIn makes n TCP connections to addr from inside namespace fd and closes each
// once established.
func dialIn(ctx context.Context, fd int, addr string, n int) error {
	return inNetns(fd, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false) // ztunnel listens with plain TCP
		for i := 0; i < n; i++ {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return fmt.Errorf("connection %d of %d to %s: %w", i+1, n, addr, err)
			}
			c.Close()
		}
		return nil
	})
}
