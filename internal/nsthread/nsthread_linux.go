// Package nsthread runs code inside another Linux network namespace. A namespace
// belongs to an OS thread, not a goroutine: Run locks a fresh goroutine to its
// thread, switches that thread, runs the code and switches back. A thread that
// cannot switch back stays locked and ends with its goroutine, so no other goroutine
// ever runs in the wrong namespace.
package nsthread

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Run runs fn on a thread that enter has moved into another network namespace
// (Into for an existing one, Unshare for a new one), then moves the thread back to
// the namespace it was in. It returns fn's error, joined with the failure to move
// back if any.
func Run(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to the original network namespace: %w", err))
			return // the thread stays locked and exits with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Into is the enter function of Run moving the thread into the network namespace
// that file descriptor fd refers to.
func Into(fd int) func() error {
	return func() error {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter network namespace: %w", err)
		}
		return nil
	}
}

// Unshare is the enter function of Run moving the thread into a new, empty network
// namespace.
func Unshare() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("create a network namespace: %w", err)
	}
	return nil
}
