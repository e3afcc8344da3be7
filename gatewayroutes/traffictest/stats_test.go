package traffictest

import (
	"math"
	"testing"
	"time"
)

func TestShareConsistent(t *testing.T) {
	for _, tc := range []struct {
		name             string
		canary, n        int
		expected, confid float64
		want             bool
	}{
		{"10% observed for 10% expected at 1000 requests is consistent", 100, 1000, 0.10, 0.99, true},
		{"30% observed for 10% expected at 1000 requests is inconsistent", 300, 1000, 0.10, 0.99, false},
		{"8.5% observed for 10% expected is within sampling noise", 85, 1000, 0.10, 0.99, true},
		{"5% observed for 10% expected at 1000 requests is inconsistent", 50, 1000, 0.10, 0.99, false},
		{"50% observed for 50% expected is consistent", 493, 1000, 0.50, 0.99, true},
		{"all canary for 100% expected is consistent", 1000, 1000, 1, 0.99, true},
		{"no canary for 0% expected is consistent", 0, 1000, 0, 0.99, true},
		{"one canary answer for 0% expected is inconsistent", 1, 1000, 0, 0.99, false},
		{"ten canary answers for 0% expected is inconsistent", 10, 1000, 0, 0.99, false},
		{"one stable answer for 100% expected is inconsistent", 999, 1000, 1, 0.99, false},
		{"20 stable answers for 100% expected is inconsistent", 980, 1000, 1, 0.99, false},
		{"30% of only 10 requests is consistent with 10%: too few to tell", 3, 10, 0.10, 0.99, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ShareConsistent(tc.canary, tc.n, tc.expected, tc.confid); got != tc.want {
				lo, hi := WilsonInterval(tc.canary, tc.n, ZForConfidence(tc.confid))
				t.Errorf("got %v, want %v (interval %.4f-%.4f)", got, tc.want, lo, hi)
			}
		})
	}
}

func TestWilsonIntervalKnownValues(t *testing.T) {
	// Reference: 100 of 1000 at 95% (z=1.96) is 0.0829-0.1203.
	lo, hi := WilsonInterval(100, 1000, 1.959964)
	if math.Abs(lo-0.0829) > 5e-4 || math.Abs(hi-0.1203) > 5e-4 {
		t.Errorf("interval %.4f-%.4f, want 0.0829-0.1203", lo, hi)
	}
	if z := ZForConfidence(0.99); math.Abs(z-2.5758) > 1e-3 {
		t.Errorf("z for 99%% is %.4f, want 2.5758", z)
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := summarize(d)
	want := Latencies{P50: 50 * time.Millisecond, P90: 90 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
