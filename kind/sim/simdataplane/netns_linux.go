//go:build linux

package simdataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread switched into the network namespace nsFD, then
// switches the thread back. Setns from Go, not `ip netns exec`: that remounts /sys
// and hides the cgroup v2 mount. A thread that cannot switch back stays locked, so it
// dies with its goroutine and never runs another one in the wrong namespace.
func inNetns(nsFD int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to the original netns: %w", err))
			return // the thread stays locked and exits with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newNetns creates a network namespace and returns a file descriptor holding it. The
// namespace lives as long as a descriptor, a bind mount or a socket refers to it.
func newNetns() (int, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("unshare netns: %w", err)}
			return
		}
		fd, ferr := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			if ferr == nil {
				unix.Close(fd)
			}
			done <- result{err: fmt.Errorf("return to the original netns: %w", err)}
			return // the thread stays locked and exits with this goroutine
		}
		runtime.UnlockOSThread()
		if ferr != nil {
			done <- result{err: fmt.Errorf("open new netns: %w", ferr)}
			return
		}
		done <- result{fd: fd}
	}()
	r := <-done
	return r.fd, r.err
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
