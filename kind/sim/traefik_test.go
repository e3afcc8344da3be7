package sim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

func TestOptionalVersionsMatchTheToolModules(t *testing.T) {
	root, err := sim.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{"kind/tools/traefik/go.mod", "github.com/traefik/traefik/v3 " + sim.TraefikVersion},
		{"kind/tools/hey/go.mod", "github.com/rakyll/hey " + sim.HeyVersion},
		{"kind/tools/istiod/go.mod", "istio.io/istio " + sim.IstioVersion},
		{"kind/tools/istiocharts/go.mod", "istio.io/istio " + sim.IstioVersion},
	} {
		b, err := os.ReadFile(filepath.Join(root, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), tc.want) {
			t.Errorf("%s does not require %q: keep the sim constants and the module pins in step", tc.file, tc.want)
		}
	}
}

// TestTraefikStartsAndStopsByPID starts Traefik against the shared cluster, checks it
// serves its entryPoint on loopback, and that Stop ends the process.
func TestTraefikStartsAndStopsByPID(t *testing.T) {
	simtest.SkipShort(t, "builds Traefik and runs it against the shared simulated cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin, err := sim.EnsureTraefik(ctx, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cluster.StartTraefik(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(tr.PID, 0); err != nil {
		t.Fatalf("traefik (pid %d) not running: %v", tr.PID, err)
	}
	if !strings.HasPrefix(tr.URL, "http://127.0.0.1:") || tr.Port == 0 {
		t.Errorf("entryPoint %s is not on loopback", tr.URL)
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	// Stop also reaped it, so the PID is gone (ESRCH).
	if err := syscall.Kill(tr.PID, 0); err == nil {
		t.Errorf("traefik (pid %d) still runs after Stop", tr.PID)
	}
	if err := tr.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}
