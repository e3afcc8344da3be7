package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
)

// ErrGateFailed is returned when the traffic test ran but did not pass its gate.
var ErrGateFailed = errors.New("traffic test failed")

type trafficTestOptions struct {
	url, host, header, versionHeader, versionRegex, canary string
	requests, concurrency                                  int
	rate, expectWeight, minSuccess, confidence             float64
	timeout                                                time.Duration
	jsonOut                                                bool
}

// NewTrafficTestCommand returns `ztcanary traffic-test`.
func NewTrafficTestCommand() *cobra.Command {
	o := &trafficTestOptions{}
	cmd := &cobra.Command{
		Use:   "traffic-test --url URL",
		Short: "Send test traffic and check which version answers, and in what share",
		Long: `Sends N GET requests at a given concurrency and rate, recognises the version that
answered by a response header or a body regex, and reports the success rate, the
count and latency percentiles per version, and whether the canary's share is
consistent with the expected weight (Wilson score interval). Exits non-zero when
the success rate is below --min-success-rate or the share is inconsistent.`,
		Example: `  ztcanary traffic-test --url http://127.0.0.1:8080/ --requests 1000 --concurrency 20 \
    --version-header x-version --canary-version v2 --expect-canary-weight 10
  ztcanary traffic-test --url http://gw/productpage --header traffic=test \
    --version-regex 'reviews-(v[0-9])' --canary-version v2 --expect-canary-weight 100`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "URL to send the requests to (required)")
	f.StringVar(&o.host, "host", "", "Host header to send (the route's hostname)")
	f.IntVarP(&o.requests, "requests", "n", 1000, "number of requests")
	f.IntVarP(&o.concurrency, "concurrency", "c", 10, "requests in flight at most")
	f.Float64Var(&o.rate, "rate", 0, "requests per second over all workers (0: as fast as possible)")
	f.StringVar(&o.header, "header", "", "test header to add, as name=value")
	f.StringVar(&o.versionHeader, "version-header", "", "response header that names the version")
	f.StringVar(&o.versionRegex, "version-regex", "", "regex finding the version in the body (first group, or the match)")
	f.StringVar(&o.canary, "canary-version", "", "version that counts as canary")
	f.Float64Var(&o.expectWeight, "expect-canary-weight", -1, "expected canary weight in percent (0-100); -1: do not check")
	f.Float64Var(&o.minSuccess, "min-success-rate", 0, "minimum share of successful requests (0-1)")
	f.Float64Var(&o.confidence, "confidence", 0.99, "confidence level of the share check")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of each request")
	f.BoolVar(&o.jsonOut, "json", false, "print the result as JSON")
	_ = cmd.MarkFlagRequired("url")
	return cmd
}

func (o *trafficTestOptions) config() (traffictest.Config, error) {
	cfg := traffictest.Config{
		URL: o.url, Host: o.host, Requests: o.requests, Concurrency: o.concurrency, Rate: o.rate,
		VersionHeader: o.versionHeader, CanaryVersion: o.canary, Confidence: o.confidence, Timeout: o.timeout,
	}
	if o.header != "" {
		name, value, ok := strings.Cut(o.header, "=")
		if !ok || name == "" {
			return cfg, fmt.Errorf("--header %q: want name=value", o.header)
		}
		cfg.HeaderName, cfg.HeaderValue = name, value
	}
	if o.versionRegex != "" {
		re, err := regexp.Compile(o.versionRegex)
		if err != nil {
			return cfg, fmt.Errorf("--version-regex: %w", err)
		}
		cfg.VersionRegex = re
	}
	if o.expectWeight >= 0 {
		if o.expectWeight > 100 {
			return cfg, fmt.Errorf("--expect-canary-weight %v is above 100", o.expectWeight)
		}
		if o.canary == "" {
			return cfg, errors.New("--expect-canary-weight needs --canary-version")
		}
		share := o.expectWeight / 100
		cfg.ExpectedCanaryShare = &share
	}
	if o.versionHeader == "" && o.versionRegex == "" && o.canary != "" {
		return cfg, errors.New("--canary-version needs --version-header or --version-regex")
	}
	return cfg, nil
}

func (o *trafficTestOptions) run(cmd *cobra.Command, out io.Writer) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	res, err := traffictest.Run(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	if o.jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		res.Report(out)
	}
	if res.SuccessRate < o.minSuccess {
		return fmt.Errorf("%w: success rate %.4f is below %.4f", ErrGateFailed, res.SuccessRate, o.minSuccess)
	}
	if res.Consistent != nil && !*res.Consistent {
		return fmt.Errorf("%w: canary share %.2f%% is not consistent with the expected %v%%", ErrGateFailed, 100*res.CanaryShare, o.expectWeight)
	}
	return nil
}
