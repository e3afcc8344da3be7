// Package simtest ties a simulated cluster (package sim) to a test: it starts one,
// and stops it, by PID, when the test ends, passed or failed.
package simtest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ztcanary/ztcanary/kind/sim"
)

// StartTimeout bounds building (when the cache is cold) and starting a cluster.
const StartTimeout = 20 * time.Minute

// Start starts a simulated cluster for t and registers its Stop with t.Cleanup.
func Start(t testing.TB, opts sim.Options) *sim.Cluster {
	t.Helper()
	if opts.Progress == nil {
		opts.Progress = logWriter{t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	c, err := sim.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start simulated cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop simulated cluster: %v", err)
		}
	})
	return c
}

// Main runs a test package's tests against one shared simulated cluster, started
// before and stopped after them. Use it from TestMain:
//
//	var cluster *sim.Cluster
//	func TestMain(m *testing.M) { simtest.Main(m, sim.Options{Nodes: 5}, &cluster) }
func Main(m *testing.M, opts sim.Options, c **sim.Cluster) {
	os.Exit(runMain(m, opts, c))
}

func runMain(m *testing.M, opts sim.Options, c **sim.Cluster) int {
	if opts.Progress == nil {
		opts.Progress = os.Stderr
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	cluster, err := sim.Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start simulated cluster: %v\n", err)
		return 1
	}
	*c = cluster
	code := m.Run()
	if err := cluster.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop simulated cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}
