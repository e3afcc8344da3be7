package traffictest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztcanary/ztcanary/kind/sim"
)

const (
	benchRequests    = 20000
	benchConcurrency = 50
)

var heyRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// BenchmarkVersusHey measures the traffic tester's requests per second and hey's
// (github.com/rakyll/hey, built from the module proxy through kind/tools/hey)
// against the same loopback server, at the same request count and concurrency, one
// after the other in each iteration, and prints both and their ratio. The server is
// a process of its own (this test binary re-executed), so neither client shares a
// process with it; both share the machine's cores with it, so the figures compare
// the two clients, they do not measure capacity.
func BenchmarkVersusHey(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	hey, err := sim.EnsureHey(ctx, os.Stderr)
	if err != nil {
		b.Fatal(err)
	}
	url := startServerProcess(ctx, b)
	var ours, theirs float64
	for i := 0; i < b.N; i++ {
		r, err := Run(ctx, Config{URL: url, Requests: benchRequests, Concurrency: benchConcurrency, VersionHeader: "x-version", CanaryVersion: "v2"})
		if err != nil {
			b.Fatal(err)
		}
		if r.Succeeded != benchRequests {
			b.Fatalf("traffic tester: %d of %d succeeded: %v", r.Succeeded, benchRequests, r.Errors)
		}
		out, err := exec.CommandContext(ctx, hey, "-n", strconv.Itoa(benchRequests), "-c", strconv.Itoa(benchConcurrency), url).CombinedOutput()
		if err != nil {
			b.Fatalf("hey: %v\n%s", err, out)
		}
		m := heyRate.FindSubmatch(out)
		if m == nil {
			b.Fatalf("hey printed no Requests/sec:\n%s", out)
		}
		h, _ := strconv.ParseFloat(string(m[1]), 64)
		fmt.Printf("iteration %d: traffic tester %.0f req/s, hey %.0f req/s (%d requests, concurrency %d)\n", i+1, r.RequestsPerSecond, h, benchRequests, benchConcurrency)
		ours += r.RequestsPerSecond
		theirs += h
	}
	ours /= float64(b.N)
	theirs /= float64(b.N)
	fmt.Printf("traffic tester %.0f req/s, hey %.0f req/s, ratio %.2f\n", ours, theirs, ours/theirs)
	b.ReportMetric(ours, "tester-req/s")
	b.ReportMetric(theirs, "hey-req/s")
	b.ReportMetric(ours/theirs, "ratio")
}

// serverEnv makes the test binary the benchmark's HTTP server (see TestMain).
const serverEnv = "ZTCANARY_BENCH_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(serverEnv) != "" {
		serve()
		return
	}
	os.Exit(m.Run())
}

// serve answers every request like a small backend and prints its URL on stdout.
func serve() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("http://%s\n", l.Addr())
	_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("x-version", "v1")
		_, _ = w.Write([]byte("reviews v1\n"))
	}))
}

// startServerProcess runs serve in a child process, stopped by PID when b ends.
func startServerProcess(ctx context.Context, b *testing.B) string {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serverEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("benchmark server: %v", err)
	}
	return strings.TrimSpace(line)
}
