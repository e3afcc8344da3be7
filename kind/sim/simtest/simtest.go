// Package simtest ties a simulated cluster (package sim) to a test: it starts one,
// and stops it, by PID, when the test ends, passed or failed.
//
// Under go test -short (make test-unit) it starts no cluster: Start skips its test,
// Main runs the package's tests without the shared cluster, and SkipShort skips the
// tests that read that cluster or need root or a built binary.
package simtest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/ztcanary/ztcanary/kind/sim"
)

// StartTimeout bounds building (when the cache is cold) and starting a cluster.
const StartTimeout = 20 * time.Minute

// SkipShort skips t under go test -short: make test-unit runs only the tests that
// need no simulated cluster, no root and no built binary, and must not build the
// cluster's binaries. why says what t needs. Call it before any root check that
// fails under CI=true, so that short mode skips there too.
func SkipShort(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: " + why)
	}
}

// Start starts a simulated cluster for t and registers its Stop with t.Cleanup.
// Under -short it skips t instead.
func Start(t testing.TB, opts sim.Options) *sim.Cluster {
	t.Helper()
	SkipShort(t, "starts a simulated cluster")
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
//
// Under -short it starts none and *c stays nil: the package's helpers that hand
// out the cluster call SkipShort, so only its tests without a cluster run.
//
// go test -fuzz runs the fuzz target in worker processes (one per -parallel, each
// running TestMain again): they use the cluster of the process that started them.
func Main(m *testing.M, opts sim.Options, c **sim.Cluster) {
	os.Exit(runMain(m, opts, c))
}

// sharedEnv passes the shared cluster's folder to the fuzz workers, which inherit
// the environment. A cluster per worker put three control planes on two cores,
// and the API server's answers then timed out.
const sharedEnv = "ZTCANARY_SIMTEST_SHARED_CLUSTER"

func runMain(m *testing.M, opts sim.Options, c **sim.Cluster) int {
	// testing.Short reads the flags, which m.Run parses only later.
	if !flag.Parsed() {
		flag.Parse()
	}
	if testing.Short() {
		return m.Run()
	}
	if dir := os.Getenv(sharedEnv); dir != "" && fuzzWorker() {
		return runAttached(m, dir, c)
	}
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
	if err := os.Setenv(sharedEnv, cluster.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "share simulated cluster: %v\n", err)
	}
	code := m.Run()
	if err := cluster.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop simulated cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// fuzzWorker reports whether this process is a fuzz worker started by go test -fuzz.
func fuzzWorker() bool {
	f := flag.Lookup("test.fuzzworker")
	return f != nil && f.Value.String() == "true"
}

// runAttached runs a fuzz worker's tests against the cluster in dir, which the
// process that started the worker owns and stops.
func runAttached(m *testing.M, dir string, c **sim.Cluster) int {
	cluster, err := sim.Attach(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "attach the shared simulated cluster: %v\n", err)
		return 1
	}
	// As sim.Start sets them: the default 5 requests a second would throttle fuzzing.
	cluster.Config.QPS, cluster.Config.Burst = 200, 400
	if cluster.Client, err = kubernetes.NewForConfig(cluster.Config); err != nil {
		fmt.Fprintf(os.Stderr, "attach the shared simulated cluster: %v\n", err)
		return 1
	}
	*c = cluster
	return m.Run()
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}
