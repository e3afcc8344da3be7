package nsthread

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestRunSwitchesOnlyTheThreadAndComesBack creates a namespace with Unshare, enters it
// again with Into, and checks that fn ran in it while the caller's namespace never
// changed. Needs root (CAP_SYS_ADMIN), as in CI.
func TestRunSwitchesOnlyTheThreadAndComesBack(t *testing.T) {
	// make test-unit (-short) runs no test that needs root, even as root.
	if testing.Short() {
		t.Skip("-short: needs root and network namespaces")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: network namespaces are required")
		}
		t.Skip("needs root")
	}
	host := netnsInode(t, "/proc/self/ns/net")
	var fd int
	var inside uint64
	if err := Run(Unshare, func() error {
		inside = netnsInode(t, "/proc/thread-self/ns/net")
		var err error
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if inside == host {
		t.Fatal("fn ran in the host's namespace after Unshare")
	}
	if got := netnsInode(t, "/proc/thread-self/ns/net"); got != host {
		t.Fatalf("the caller's thread is in namespace %d, want the host's %d", got, host)
	}
	var again uint64
	if err := Run(Into(fd), func() error {
		again = netnsInode(t, "/proc/thread-self/ns/net")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if again != inside {
		t.Errorf("Into entered namespace %d, want %d", again, inside)
	}
	// fn's error comes back; a failed enter never runs fn.
	boom := errors.New("boom")
	if err := Run(Into(fd), func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Run returned %v, want fn's error", err)
	}
	ran := false
	if err := Run(Into(-1), func() error { ran = true; return nil }); err == nil || ran {
		t.Errorf("entering a bad descriptor: err %v, fn ran %v; want an error and fn not run", err, ran)
	}
	if got := netnsInode(t, "/proc/self/ns/net"); got != host {
		t.Errorf("the process's namespace changed to %d", got)
	}
}
