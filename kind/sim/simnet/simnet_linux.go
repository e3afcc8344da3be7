//go:build linux

package simnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/ztcanary/ztcanary/internal/nsthread"
)

// Start creates network namespace number index (1-250) of this test process, with
// address 10.X.index.2 (X derived from the PID, so concurrent test processes do not
// collide) behind a veth pair whose host side is 10.X.index.1, and serves handler on
// port inside it. Everything is removed by t.Cleanup. Without root the test is
// skipped, unless CI=true, where it fails; under -short (make test-unit) it is
// skipped even as root.
func Start(t testing.TB, index, port int, handler http.Handler) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: simnet needs root to create network namespaces")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("simnet needs root to create network namespaces")
		}
		t.Skip("simnet needs root to create network namespaces")
	}
	s, err := Serve(index, port, handler)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Serve is Start for programs (the demo): it returns an error instead of ending a
// test (ErrNeedsRoot without root), and the caller calls Close.
func Serve(index, port int, handler http.Handler) (*Server, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNeedsRoot
	}
	if index < 1 || index > 250 {
		return nil, fmt.Errorf("simnet: index %d outside 1-250", index)
	}
	pid := os.Getpid() % 100000
	name := fmt.Sprintf("ztcanary-%d-%d", pid, index)
	short := fmt.Sprintf("zc%05d%03d", pid, index) // interface names: at most 15 bytes
	host, peer := short+"h", short+"n"
	subnet := fmt.Sprintf("10.%d.%d", 100+pid%100, index)
	s := &Server{NetNS: name, IP: subnet + ".2", Port: port, hostLink: host}
	for _, args := range [][]string{
		{"netns", "add", name},
		{"link", "add", host, "type", "veth", "peer", "name", peer, "netns", name},
		{"addr", "add", subnet + ".1/30", "dev", host},
		{"link", "set", host, "up"},
		{"-n", name, "addr", "add", subnet + ".2/30", "dev", peer},
		{"-n", name, "link", "set", peer, "up"},
		{"-n", name, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("simnet: %w", err)
		}
	}
	l, err := listenIn(name, net.JoinHostPort(s.IP, strconv.Itoa(port)))
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("simnet: %w", err)
	}
	s.srv = &http.Server{Handler: handler}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// Close stops the server and removes its namespace and veth pair. Safe to call twice.
func (s *Server) Close() error {
	if s.srv != nil {
		_ = s.srv.Close()
		s.srv = nil
	}
	// Deleting the namespace deletes the veth end inside it, and with it the pair.
	var errs []error
	if _, err := os.Stat("/var/run/netns/" + s.NetNS); err == nil {
		errs = append(errs, ip("netns", "del", s.NetNS))
	}
	_ = ip("link", "del", s.hostLink) // gone with the namespace, normally
	return errors.Join(errs...)
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// listenIn opens a TCP listener inside network namespace name. Only the calling
// thread enters the namespace, and only while it creates the socket: a socket stays
// in the namespace it was created in, so the server can run on any thread.
func listenIn(name, addr string) (net.Listener, error) {
	target, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	var l net.Listener
	err = nsthread.Run(nsthread.Into(int(target.Fd())), func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		if l != nil {
			l.Close()
		}
		return nil, fmt.Errorf("listen in netns %s: %w", name, err)
	}
	return l, nil
}
