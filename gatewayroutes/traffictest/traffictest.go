// Package traffictest sends test traffic through a route and judges the split it
// observes: success rate, which version answered (a response header or a body
// regex), latency percentiles per version, and whether the canary's share is
// consistent with the weight that was set (Wilson score interval). It is the
// analysis gate the orchestrator runs after each traffic step, and the engine of
// `ztcanary traffic-test`.
package traffictest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Unknown is the version of a response that names none.
const Unknown = "unknown"

// Config describes one traffic test.
type Config struct {
	// URL receives every request (GET).
	URL string
	// Host, when set, is sent as the Host header (a route's hostname).
	Host string
	// Requests is how many requests to send (default 100).
	Requests int
	// Concurrency is how many requests are in flight at most (default 10).
	Concurrency int
	// Rate caps the requests per second over all workers; 0 sends as fast as possible.
	Rate float64
	// Header, when Name is set, is added to every request (the test header).
	HeaderName, HeaderValue string
	// VersionHeader names the response header that carries the version.
	VersionHeader string
	// VersionRegex recognises the version in the body: its first group, or the whole
	// match. Used when VersionHeader is empty or absent from a response.
	VersionRegex *regexp.Regexp
	// CanaryRegex, when set, recognises the canary by its body: a response whose
	// body matches is counted as CanaryVersion; the others get their version from
	// VersionHeader or VersionRegex, else Unknown.
	CanaryRegex *regexp.Regexp
	// CanaryVersion is the version that counts as canary.
	CanaryVersion string
	// ExpectedCanaryShare, when set, is the canary share (0-1) the route should give.
	ExpectedCanaryShare *float64
	// Confidence for the share check (default 0.99).
	Confidence float64
	// Timeout bounds each request (default 10s).
	Timeout time.Duration
	// Client sends the requests; default: a keep-alive client sized to Concurrency.
	Client *http.Client
}

// VersionStats is what one version's responses looked like.
type VersionStats struct {
	Count     int       `json:"count"`
	Latencies Latencies `json:"latencies"`
}

// Result is a traffic test's outcome.
type Result struct {
	Requests  int `json:"requests"`
	Succeeded int `json:"succeeded"`
	// SuccessRate is Succeeded/Requests: a 2xx or 3xx answer counts as success.
	SuccessRate float64 `json:"successRate"`
	// Errors counts failures by cause (transport error text or HTTP status).
	Errors map[string]int `json:"errors,omitempty"`
	// Versions holds the successful responses by version.
	Versions map[string]*VersionStats `json:"versions"`
	// CanaryShare is the canary's share of the successful responses, with its
	// Wilson interval at the configured confidence.
	CanaryShare   float64    `json:"canaryShare"`
	ShareInterval [2]float64 `json:"shareInterval"`
	// Consistent is set when an expected share was given: whether the observation
	// is consistent with it.
	Consistent *bool         `json:"consistent,omitempty"`
	Duration   time.Duration `json:"duration"`
	// RequestsPerSecond is Requests over Duration.
	RequestsPerSecond float64 `json:"requestsPerSecond"`
}

func (c *Config) defaults() error {
	if c.URL == "" {
		return errors.New("traffic test: no URL")
	}
	if c.Requests <= 0 {
		c.Requests = 100
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 10
	}
	if c.Concurrency > c.Requests {
		c.Concurrency = c.Requests
	}
	if c.Confidence <= 0 || c.Confidence >= 1 {
		c.Confidence = 0.99
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.ExpectedCanaryShare != nil && (*c.ExpectedCanaryShare < 0 || *c.ExpectedCanaryShare > 1) {
		return fmt.Errorf("traffic test: expected canary share %v is outside 0-1", *c.ExpectedCanaryShare)
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        c.Concurrency,
			MaxIdleConnsPerHost: c.Concurrency,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		}}
	}
	return nil
}

type sample struct {
	version string // "" on failure
	failure string
	latency time.Duration
}

// Run sends the requests and returns what it observed. It fails only when the test
// cannot run (bad config, cancelled context); failed requests are counted, not
// returned.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	req0, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("traffic test: %w", err)
	}
	if cfg.Host != "" {
		req0.Host = cfg.Host
	}
	if cfg.HeaderName != "" {
		req0.Header.Set(cfg.HeaderName, cfg.HeaderValue)
	}
	var next atomic.Int64
	start := time.Now()
	perWorker := make([][]sample, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := &bytes.Buffer{}
			out := make([]sample, 0, cfg.Requests/cfg.Concurrency+1)
			for {
				i := next.Add(1) - 1
				if i >= int64(cfg.Requests) || ctx.Err() != nil {
					break
				}
				if cfg.Rate > 0 {
					due := start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						select {
						case <-time.After(d):
						case <-ctx.Done():
						}
					}
				}
				out = append(out, cfg.one(req0, buf))
			}
			perWorker[w] = out
		}(w)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("traffic test interrupted: %w", err)
	}
	return cfg.result(perWorker, time.Since(start)), nil
}

// one sends one request and classifies its answer.
func (cfg *Config) one(req0 *http.Request, buf *bytes.Buffer) sample {
	ctx, cancel := context.WithTimeout(req0.Context(), cfg.Timeout)
	defer cancel()
	req := req0.WithContext(ctx)
	began := time.Now()
	resp, err := cfg.Client.Do(req)
	if err != nil {
		return sample{failure: transportError(err), latency: time.Since(began)}
	}
	defer resp.Body.Close()
	buf.Reset()
	if cfg.VersionRegex != nil || cfg.CanaryRegex != nil {
		_, err = buf.ReadFrom(resp.Body)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	latency := time.Since(began)
	if err != nil {
		return sample{failure: transportError(err), latency: latency}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return sample{failure: "HTTP " + resp.Status, latency: latency}
	}
	return sample{version: cfg.version(resp.Header, buf.Bytes()), latency: latency}
}

func (cfg *Config) version(h http.Header, body []byte) string {
	if cfg.CanaryRegex != nil && cfg.CanaryRegex.Match(body) {
		return cfg.CanaryVersion
	}
	if cfg.VersionHeader != "" {
		if v := h.Get(cfg.VersionHeader); v != "" {
			return v
		}
	}
	if cfg.VersionRegex != nil {
		if m := cfg.VersionRegex.FindSubmatch(body); m != nil {
			if len(m) > 1 {
				return string(m[1])
			}
			return string(m[0])
		}
	}
	return Unknown
}

func transportError(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	// Keep the cause, drop the URL, so failures of one kind count together.
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

func (cfg *Config) result(perWorker [][]sample, took time.Duration) *Result {
	r := &Result{Versions: map[string]*VersionStats{}, Duration: took}
	lat := map[string][]time.Duration{}
	for _, ss := range perWorker {
		for _, s := range ss {
			r.Requests++
			if s.failure != "" {
				if r.Errors == nil {
					r.Errors = map[string]int{}
				}
				r.Errors[s.failure]++
				continue
			}
			r.Succeeded++
			lat[s.version] = append(lat[s.version], s.latency)
		}
	}
	for v, d := range lat {
		r.Versions[v] = &VersionStats{Count: len(d), Latencies: summarize(d)}
	}
	if r.Requests > 0 {
		r.SuccessRate = float64(r.Succeeded) / float64(r.Requests)
	}
	if took > 0 {
		r.RequestsPerSecond = float64(r.Requests) / took.Seconds()
	}
	canary := 0
	if v, ok := r.Versions[cfg.CanaryVersion]; ok && cfg.CanaryVersion != "" {
		canary = v.Count
	}
	if r.Succeeded > 0 {
		r.CanaryShare = float64(canary) / float64(r.Succeeded)
	}
	lo, hi := WilsonInterval(canary, r.Succeeded, ZForConfidence(cfg.Confidence))
	r.ShareInterval = [2]float64{lo, hi}
	if cfg.ExpectedCanaryShare != nil {
		ok := r.Succeeded > 0 && ShareConsistent(canary, r.Succeeded, *cfg.ExpectedCanaryShare, cfg.Confidence)
		r.Consistent = &ok
	}
	return r
}

// Report writes a short human-readable summary of r.
func (r *Result) Report(w io.Writer) {
	fmt.Fprintf(w, "requests %d, succeeded %d (%.2f%%), %.0f req/s over %s\n", r.Requests, r.Succeeded, 100*r.SuccessRate, r.RequestsPerSecond, r.Duration.Round(time.Millisecond))
	versions := make([]string, 0, len(r.Versions))
	for v := range r.Versions {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	for _, v := range versions {
		s := r.Versions[v]
		fmt.Fprintf(w, "  %-12s %6d  p50 %s  p90 %s  p99 %s  max %s\n", v, s.Count, s.Latencies.P50, s.Latencies.P90, s.Latencies.P99, s.Latencies.Max)
	}
	errs := make([]string, 0, len(r.Errors))
	for e := range r.Errors {
		errs = append(errs, e)
	}
	sort.Strings(errs)
	for _, e := range errs {
		fmt.Fprintf(w, "  error %q: %d\n", e, r.Errors[e])
	}
	fmt.Fprintf(w, "canary share %.2f%% (interval %.2f%%-%.2f%%)", 100*r.CanaryShare, 100*r.ShareInterval[0], 100*r.ShareInterval[1])
	if r.Consistent != nil {
		if *r.Consistent {
			fmt.Fprint(w, ": consistent with the expected weight")
		} else {
			fmt.Fprint(w, ": NOT consistent with the expected weight")
		}
	}
	fmt.Fprintln(w)
}
