package traffictest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
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
// after the other in each iteration, and prints both and their ratio. Both share the
// machine's cores with the server, so the figures compare, not measure capacity.
func BenchmarkVersusHey(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	hey, err := sim.EnsureHey(ctx, os.Stderr)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("x-version", "v1")
		_, _ = w.Write([]byte("reviews v1\n"))
	}))
	defer srv.Close()
	var ours, theirs float64
	for i := 0; i < b.N; i++ {
		r, err := Run(ctx, Config{URL: srv.URL, Requests: benchRequests, Concurrency: benchConcurrency, VersionHeader: "x-version", CanaryVersion: "v2"})
		if err != nil {
			b.Fatal(err)
		}
		if r.Succeeded != benchRequests {
			b.Fatalf("traffic tester: %d of %d succeeded: %v", r.Succeeded, benchRequests, r.Errors)
		}
		out, err := exec.CommandContext(ctx, hey, "-n", strconv.Itoa(benchRequests), "-c", strconv.Itoa(benchConcurrency), srv.URL).CombinedOutput()
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
