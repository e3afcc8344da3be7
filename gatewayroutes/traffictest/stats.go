package traffictest

import (
	"math"
	"sort"
	"time"
)

// WilsonInterval is the Wilson score interval for a binomial proportion: the range
// of true shares that would make observing successes out of n unsurprising at the
// confidence z stands for (z = 2.576 for 99%). Unlike the normal approximation it
// stays inside [0, 1] and behaves at 0 and n successes.
func WilsonInterval(successes, n int, z float64) (lo, hi float64) {
	if n <= 0 {
		return 0, 1
	}
	p := float64(successes) / float64(n)
	nf := float64(n)
	z2 := z * z
	center := (p + z2/(2*nf)) / (1 + z2/nf)
	half := z / (1 + z2/nf) * math.Sqrt(p*(1-p)/nf+z2/(4*nf*nf))
	return math.Max(0, center-half), math.Min(1, center+half)
}

// ZForConfidence returns the two-sided normal quantile for a confidence level in
// (0, 1), e.g. 0.99 → 2.576.
func ZForConfidence(confidence float64) float64 {
	// Inverse of the standard normal CDF at 1-(1-c)/2 by bisection: no table, no
	// dependency, and precision far beyond what the decision needs.
	target := 1 - (1-confidence)/2
	lo, hi := 0.0, 10.0
	for i := 0; i < 100; i++ {
		mid := (lo + hi) / 2
		if 0.5*math.Erfc(-mid/math.Sqrt2) < target {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// ShareConsistent reports whether observing canary hits out of n is consistent with
// an expected canary share (0-1) at the given confidence: the expected share lies
// inside the Wilson interval of the observation.
func ShareConsistent(canary, n int, expected, confidence float64) bool {
	lo, hi := WilsonInterval(canary, n, ZForConfidence(confidence))
	return expected >= lo-1e-12 && expected <= hi+1e-12
}

// Latencies summarises a set of request durations.
type Latencies struct {
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}

// summarize sorts d in place and takes nearest-rank percentiles.
func summarize(d []time.Duration) Latencies {
	if len(d) == 0 {
		return Latencies{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(d)))) - 1
		if i < 0 {
			i = 0
		}
		return d[i]
	}
	return Latencies{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: d[len(d)-1]}
}
