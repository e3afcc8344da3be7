package agent

import (
	"fmt"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ztcanary/ztcanary/internal/nsthread"
)

// InNetns runs fn on a thread switched into the network namespace ns, then switches
// back (nsthread.Run: a thread that cannot switch back dies with its goroutine).
func InNetns(ns netns.NsHandle, fn func() error) error {
	return nsthread.Run(nsthread.Into(int(ns)), fn)
}

// NetnsCookie returns the cookie of network namespace ns, the value the BPF programs key
// their maps with.
func NetnsCookie(ns netns.NsHandle) (uint64, error) {
	var cookie uint64
	err := InNetns(ns, func() error {
		var err error
		cookie, err = currentNetnsCookie()
		return err
	})
	return cookie, err
}

// currentNetnsCookie returns the cookie of the calling thread's network namespace.
func currentNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	var cookie uint64
	size := uint32(unsafe.Sizeof(cookie))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE,
		uintptr(unsafe.Pointer(&cookie)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", errno)
	}
	return cookie, nil
}
