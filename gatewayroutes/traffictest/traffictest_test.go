package traffictest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/ptr"
)

// splitServer answers as "v2" every tenth request (by arrival order) and "v1"
// otherwise, and with 503 every fiftieth; the test header forces v2.
func splitServer(t *testing.T) *httptest.Server {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		v := "v1"
		if i%10 == 0 || r.Header.Get("traffic") == "test" {
			v = "v2"
		}
		if i%50 == 25 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("x-version", v)
		fmt.Fprintf(w, "<html>reviews version %s</html>", v)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestRun(t *testing.T) {
	srv := splitServer(t)
	for _, tc := range []struct {
		name           string
		cfg            Config
		wantSucceeded  int
		wantCanary     int
		wantConsistent bool
	}{
		{"version from a response header", Config{VersionHeader: "x-version", ExpectedCanaryShare: ptr.To(0.10)}, 980, 100, true},
		{"version from a body regex", Config{VersionRegex: regexp.MustCompile(`version (v\d)`), ExpectedCanaryShare: ptr.To(0.10)}, 980, 100, true},
		{"canary recognised by a body regex", Config{CanaryRegex: regexp.MustCompile(`version v2<`), ExpectedCanaryShare: ptr.To(0.10)}, 980, 100, true},
		{"a body regex that matches no answer finds no canary", Config{CanaryRegex: regexp.MustCompile(`version v3`), ExpectedCanaryShare: ptr.To(0.10)}, 980, 0, false},
		{"30% expected is refused by the same traffic", Config{VersionHeader: "x-version", ExpectedCanaryShare: ptr.To(0.30)}, 980, 100, false},
		{"test header sends everything to the canary", Config{VersionHeader: "x-version", HeaderName: "traffic", HeaderValue: "test", ExpectedCanaryShare: ptr.To(1.0)}, 980, 980, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.URL, cfg.Requests, cfg.Concurrency, cfg.CanaryVersion = srv.URL, 1000, 8, "v2"
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, err := Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.Requests != 1000 || r.Succeeded != tc.wantSucceeded || r.Errors["HTTP 503 Service Unavailable"] != 20 {
				t.Errorf("requests %d succeeded %d errors %v", r.Requests, r.Succeeded, r.Errors)
			}
			// Arrival order decides the version: every tenth request is v2, and no
			// 503 (25 mod 50) falls on a tenth request, so exactly 100 are v2.
			got := 0
			if v, ok := r.Versions["v2"]; ok {
				got = v.Count
			}
			if got != tc.wantCanary {
				t.Errorf("canary count %d, want %d", got, tc.wantCanary)
			}
			if r.Consistent == nil || *r.Consistent != tc.wantConsistent {
				t.Errorf("consistent %v, want %v (share %.3f, interval %v)", r.Consistent, tc.wantConsistent, r.CanaryShare, r.ShareInterval)
			}
			if v, ok := r.Versions["v2"]; ok && v.Latencies.P50 <= 0 {
				t.Errorf("no latency recorded")
			}
		})
	}
}

func TestRunRespectsRate(t *testing.T) {
	srv := splitServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// 20 requests at 100/s cannot finish before the 20th slot, 190 ms after start.
	r, err := Run(ctx, Config{URL: srv.URL, Requests: 20, Concurrency: 4, Rate: 100})
	if err != nil {
		t.Fatal(err)
	}
	if r.Duration < 190*time.Millisecond {
		t.Errorf("20 requests at 100/s took %s", r.Duration)
	}
}

func TestRunCountsTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens any more
	r, err := Run(context.Background(), Config{URL: url, Requests: 5, Concurrency: 2, ExpectedCanaryShare: ptr.To(0.0)})
	if err != nil {
		t.Fatal(err)
	}
	if r.Succeeded != 0 || r.SuccessRate != 0 || len(r.Errors) == 0 || r.Consistent == nil || *r.Consistent {
		t.Errorf("result %+v", r)
	}
}
