package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/utils/ptr"

	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
)

// requestsPerSample is how many requests each table line rests on: at 99%
// confidence, a share is known to about ±6 points.
const requestsPerSample = 400

// sample is what the traffic tester saw through Traefik at one moment.
type sample struct {
	// plain is traffic without the test header; header, traffic with it (nil when
	// the route has no test rule).
	plain, header *traffictest.Result
}

// measure sends requestsPerSample requests through Traefik, expecting the canary
// revision to answer the split's weight of them, and as many again with the test
// header when withHeader is set (all canary if the split has the test rule, else the
// weight). It first waits, at most 10 s, until a small sample agrees: Traefik
// applies a route some milliseconds after the API write.
func (d *demo) measure(ctx context.Context, canaryRev string, split gatewayroutes.Split, withHeader bool) (*sample, error) {
	return d.sample(ctx, canaryRev, split, withHeader, settleAndRun)
}

// measureNow is measure without waiting for the route to settle: for a route that
// sends requests to a failing backend, which never agrees.
func (d *demo) measureNow(ctx context.Context, canaryRev string, split gatewayroutes.Split, withHeader bool) (*sample, error) {
	return d.sample(ctx, canaryRev, split, withHeader, traffictest.Run)
}

func (d *demo) sample(ctx context.Context, canaryRev string, split gatewayroutes.Split, withHeader bool,
	run func(context.Context, traffictest.Config) (*traffictest.Result, error)) (*sample, error) {
	if d.net == nil {
		return nil, nil
	}
	share := float64(split.CanaryWeight) / 100
	cfg := traffictest.Config{
		URL: d.net.traefik.URL + "/", Requests: requestsPerSample, Concurrency: 8,
		VersionHeader: versionHeader, CanaryVersion: canaryRev,
		ExpectedCanaryShare: ptr.To(share),
	}
	s := &sample{}
	var err error
	if s.plain, err = run(ctx, cfg); err != nil {
		return nil, err
	}
	if withHeader {
		if split.Header != nil {
			share = 1
		}
		cfg.HeaderName, cfg.HeaderValue, cfg.ExpectedCanaryShare = testHeader, testValue, ptr.To(share)
		if s.header, err = run(ctx, cfg); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func settleAndRun(ctx context.Context, cfg traffictest.Config) (*traffictest.Result, error) {
	small := cfg
	small.Requests = 50
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		res, err := traffictest.Run(ctx, small)
		if err != nil {
			return nil, err
		}
		if res.Consistent != nil && *res.Consistent && res.SuccessRate == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return traffictest.Run(ctx, cfg)
}

// tableHeader names the columns of the lines row prints.
func tableHeader(from, to string) string {
	return fmt.Sprintf("    %-7s %-20s %-20s %-29s %-17s %s\n    %s",
		"step", fmt.Sprintf("nodes %s/%s", from, to), "route (canary)", "observed canary share [99%]", "test header", "success",
		strings.Repeat("-", 110))
}

// row is one table line: the step, how many workers each revision has, what the route
// carries, and what the traffic tester observed.
func row(step string, fromNodes, toNodes int, split gatewayroutes.Split, s *sample) string {
	route := fmt.Sprintf("weight %3d%%", split.CanaryWeight)
	if split.Header != nil {
		route += " + header"
	}
	nodes := fmt.Sprintf("%d/%d", fromNodes, toNodes)
	if s == nil {
		return fmt.Sprintf("    %-7s %-20s %-20s %s", step, nodes, route, "(no real traffic in this run)")
	}
	share := fmt.Sprintf("%5.1f%% [%4.1f-%5.1f]%s", 100*s.plain.CanaryShare, 100*s.plain.ShareInterval[0], 100*s.plain.ShareInterval[1], mark(s.plain))
	hdr := "-"
	success := s.plain.SuccessRate
	if s.header != nil {
		hdr = fmt.Sprintf("%5.1f%% canary%s", 100*s.header.CanaryShare, mark(s.header))
		if failed := s.header.Requests - s.header.Succeeded; failed > 0 {
			hdr = fmt.Sprintf("%d/%d failed", failed, s.header.Requests)
		}
		success = float64(s.plain.Succeeded+s.header.Succeeded) / float64(s.plain.Requests+s.header.Requests)
	}
	return fmt.Sprintf("    %-7s %-20s %-20s %-29s %-17s %5.1f%% of %d", step, nodes, route, share, hdr, 100*success, s.requests())
}

func (s *sample) requests() int {
	n := s.plain.Requests
	if s.header != nil {
		n += s.header.Requests
	}
	return n
}

// mark says whether the observed share is consistent with the route's weight.
func mark(r *traffictest.Result) string {
	if r.Consistent != nil && *r.Consistent {
		return " ok"
	}
	return " !!"
}
