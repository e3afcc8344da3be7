package ambient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// RouterFactory builds the Router of an upgrade's route.
type RouterFactory func(u *ztv1.RevisionUpgrade) (gatewayroutes.Router, error)

// Routers returns a RouterFactory for Gateway API HTTPRoutes and, with an Istio
// client, Istio VirtualServices (weights between two DestinationRule subsets).
func Routers(kube kubernetes.Interface, gw gatewayclient.Interface, istio istioclient.Interface) RouterFactory {
	return func(u *ztv1.RevisionUpgrade) (gatewayroutes.Router, error) {
		rs := u.Spec.Route
		switch {
		case rs.HTTPRoute != nil:
			return &gatewayroutes.HTTPRouteRouter{
				Kube: kube, Gateway: gw,
				Namespace: rs.HTTPRoute.Namespace, Name: rs.HTTPRoute.Name,
				Stable: backend(rs.Stable), Canary: backend(rs.Canary),
			}, nil
		case rs.VirtualService != nil && istio != nil:
			vs := rs.VirtualService
			host := vs.Host
			if host == "" {
				host = rs.Stable.Name
			}
			return &gatewayroutes.VirtualServiceRouter{
				Istio: istio, Kube: kube, Service: backend(rs.Stable),
				Namespace: vs.Namespace, Name: vs.Name, DestinationRule: vs.DestinationRule, Host: host,
				StableSubset: rs.Stable.Subset, CanarySubset: rs.Canary.Subset,
			}, nil
		case rs.VirtualService != nil:
			return nil, plan.Refused("RouteUnsupported", "spec.route.virtualService: this orchestrator was started without an Istio client; use spec.route.httpRoute")
		}
		return nil, plan.Refused(ztv1.ReasonInvalidSpec, "spec.route: set httpRoute or virtualService")
	}
}

func backend(b ztv1.BackendRef) gatewayroutes.Backend {
	return gatewayroutes.Backend{Namespace: b.Namespace, Name: b.Name, Port: b.Port}
}

// preflightRoute checks the route and both backend Services exist, that the
// router can use them (ReferenceGrant; DestinationRule and subsets), and snapshots
// what the router may change, for an exact restore.
func (d *Driver) preflightRoute(ctx context.Context, u *ztv1.RevisionUpgrade) (*runtime.RawExtension, error) {
	if u.Spec.Route == nil {
		return nil, nil
	}
	if d.Routes == nil {
		return nil, plan.Refused("RouteUnsupported", "spec.route: this orchestrator was started without route support")
	}
	router, err := d.Routes(u)
	if err != nil {
		return nil, err
	}
	// In a fixed order, so that the same input always gets the same message.
	for _, rb := range []struct {
		role string
		ref  ztv1.BackendRef
	}{{"stable", u.Spec.Route.Stable}, {"canary", u.Spec.Route.Canary}} {
		role, b := rb.role, rb.ref
		var svc corev1.Service
		if err := d.Client.Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: b.Name}, &svc); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, plan.Refused("BackendMissing", "spec.route.%s: Service %s/%s does not exist", role, b.Namespace, b.Name)
			}
			return nil, err
		}
	}
	snap, err := router.Snapshot(ctx)
	if err != nil {
		if errors.Is(err, gatewayroutes.ErrRoute) {
			return nil, plan.Refused("RouteMissing", "%s: %v; create it, or name the route to shift", routeField(u.Spec.Route), err)
		}
		return nil, err
	}
	if err := router.Check(ctx); err != nil {
		switch {
		case errors.Is(err, gatewayroutes.ErrReferenceNotPermitted):
			return nil, plan.Refused("ReferenceNotPermitted", "spec.route: %v", err)
		case errors.Is(err, gatewayroutes.ErrBackend):
			return nil, plan.Refused("BackendUnusable", "spec.route: %v", err)
		}
		return nil, err
	}
	if _, err := router.GetRoutes(ctx); err != nil {
		return nil, plan.Refused("RouteUnusable", "spec.route: %v", err)
	}
	b, err := json.Marshal(snap)
	if err != nil {
		return nil, err
	}
	return &runtime.RawExtension{Raw: b}, nil
}

// routeField is the field that names the route: spec.route.httpRoute or
// spec.route.virtualService.
func routeField(rs *ztv1.RouteSpec) string {
	if rs.VirtualService != nil {
		return "spec.route.virtualService"
	}
	return "spec.route.httpRoute"
}

// routeDrift reports how the route differs from what ztcanary last set, if it does.
func (d *Driver) routeDrift(ctx context.Context, u *ztv1.RevisionUpgrade) ([]string, error) {
	if u.Spec.Route == nil || d.Routes == nil || u.Status.TrafficStep == nil {
		return nil, nil
	}
	router, err := d.Routes(u)
	if err != nil {
		return nil, err
	}
	want := plan.DesiredSplit(&u.Spec, int(*u.Status.TrafficStep))
	if dr, ok := router.(drifter); ok {
		d, err := dr.Drift(ctx, want)
		if err != nil {
			return []string{err.Error()}, nil
		}
		return d, nil
	}
	got, err := router.GetRoutes(ctx)
	if err != nil {
		return []string{err.Error()}, nil
	}
	return gatewayroutes.DetectDrift(want, got), nil
}

// drifter is a Router that can also name who changed the route (HTTPRouteRouter:
// the field managers of spec.rules).
type drifter interface {
	Drift(ctx context.Context, want gatewayroutes.Split) ([]string, error)
}

// applyTraffic sets the route to what the steps up to step i ask for and records
// it. The router refuses a canary share for a backend without a ready endpoint.
func (d *Driver) applyTraffic(ctx context.Context, u *ztv1.RevisionUpgrade, i int) error {
	if u.Spec.Route == nil || d.Routes == nil || u.Spec.Steps[i].Traffic == nil {
		return nil
	}
	router, err := d.Routes(u)
	if err != nil {
		return err
	}
	split := plan.DesiredSplit(&u.Spec, i)
	if err := router.SetRoutes(ctx, split); err != nil {
		return err
	}
	drive.CountWrite("route")
	step := int32(i)
	u.Status.TrafficStep = &step
	u.Status.TrafficWeight = split.CanaryWeight
	d.Recorder.Eventf(u, drive.EventNormal, "TrafficShifted", "step %d: route set to %s", i, split)
	return nil
}

// routeReady reports whether the gateway accepted the route's current spec.
func (d *Driver) routeReady(ctx context.Context, u *ztv1.RevisionUpgrade) (bool, string, error) {
	if u.Spec.Route == nil || d.Routes == nil {
		return true, "", nil
	}
	router, err := d.Routes(u)
	if err != nil {
		return false, "", err
	}
	return router.Ready(ctx)
}

// restoreRoute writes back the snapshot taken before the upgrade.
func (d *Driver) restoreRoute(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	if u.Spec.Route == nil || d.Routes == nil || u.Status.OriginalRoute == nil {
		return nil
	}
	router, err := d.Routes(u)
	if err != nil {
		return err
	}
	var snap gatewayroutes.Snapshot
	if err := json.Unmarshal(u.Status.OriginalRoute.Raw, &snap); err != nil {
		return fmt.Errorf("recorded route snapshot: %w", err)
	}
	drive.CountWrite("route")
	return router.Restore(ctx, snap)
}

// promoteRoute leaves only the canary backend and no test rule, when asked.
func (d *Driver) promoteRoute(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	if u.Spec.Route == nil || !u.Spec.Route.CleanUpOnSuccess || d.Routes == nil {
		return nil
	}
	router, err := d.Routes(u)
	if err != nil {
		return err
	}
	p, ok := router.(interface{ Promote(context.Context) error })
	if !ok {
		return fmt.Errorf("the %T router cannot clean up a route", router)
	}
	drive.CountWrite("route")
	return p.Promote(ctx)
}

// TrafficGate is the analysis gate: after a traffic step it sends the configured
// requests and fails when the success rate is too low or the observed canary share
// is inconsistent (binomial Wilson interval) with what the step set.
//
// A gateway applies a route a moment after it reports the route accepted (Traefik
// writes the status first), so a test that fails within Settle of the start of the
// step's analysis is repeated rather than failed: a canary that stays broken still
// fails once the settle time has passed.
type TrafficGate struct {
	// Recorder, when set, records the figures of each passed test as an Event.
	Recorder record.EventRecorder
	// Clock tells the time (default: the real clock).
	Clock clock.PassiveClock
	// Settle is how long a failing test is retried after the analysis started
	// (default DefaultTrafficSettle).
	Settle time.Duration
}

// DefaultTrafficSettle is the time a gateway gets to apply an accepted route.
const DefaultTrafficSettle = 10 * time.Second

// Check runs the traffic test of step i, if the step changed traffic.
func (g TrafficGate) Check(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (bool, string, error) {
	tt := u.Spec.Analysis.TrafficTest
	t := u.Spec.Steps[i].Traffic
	if tt == nil || t == nil {
		return true, "", nil
	}
	cfg, err := trafficConfig(tt)
	if err != nil {
		return false, "", err
	}
	want := float64(plan.DesiredSplit(&u.Spec, i).CanaryWeight) / 100
	if t.Header != nil {
		cfg.HeaderName, cfg.HeaderValue, want = t.Header.Name, t.Header.Value, 1
	}
	cfg.ExpectedCanaryShare = &want
	res, err := traffictest.Run(ctx, cfg)
	if err != nil {
		return false, "", fmt.Errorf("traffic test: %w", err)
	}
	if failure := judgeTraffic(res, tt.MinSuccessRate, want); failure != "" {
		if g.settling(u) {
			return false, failure + "; repeating while the gateway applies the route", nil
		}
		return false, "", errors.New(failure)
	}
	if g.Recorder != nil {
		g.Recorder.Eventf(u, drive.EventNormal, "TrafficTestPassed", "step %d: %d requests%s, %.1f%% succeeded, canary share %.1f%% (interval %.1f-%.1f%%) consistent with %.0f%%",
			i, res.Requests, withHeader(cfg), 100*res.SuccessRate, 100*res.CanaryShare, 100*res.ShareInterval[0], 100*res.ShareInterval[1], 100*want)
	}
	return true, "", nil
}

// canaryLabel is the version the gate gives answers recognised by the body regex.
const canaryLabel = "canary"

// trafficConfig is the tester's configuration for spec.analysis.trafficTest. It
// refuses a test that cannot tell the canary (the schema already requires exactly
// one of canaryHeader and canaryBodyRegex) or whose regex does not compile, naming
// the field; preflight calls it so that the mistake is found before anything moves.
func trafficConfig(tt *ztv1.TrafficTest) (traffictest.Config, error) {
	cfg := traffictest.Config{URL: tt.URL, Requests: int(tt.Requests), Concurrency: int(tt.Concurrency)}
	switch {
	case tt.CanaryHeader != nil && tt.CanaryBodyRegex != "":
		return cfg, plan.Refused(ztv1.ReasonInvalidSpec, "spec.analysis.trafficTest: set only one of canaryHeader and canaryBodyRegex")
	case tt.CanaryHeader != nil:
		cfg.VersionHeader, cfg.CanaryVersion = tt.CanaryHeader.Name, tt.CanaryHeader.Value
	case tt.CanaryBodyRegex != "":
		re, err := regexp.Compile(tt.CanaryBodyRegex)
		if err != nil {
			return cfg, plan.Refused(ztv1.ReasonInvalidSpec, "spec.analysis.trafficTest.canaryBodyRegex: %q is not a valid regular expression (Go RE2 syntax): %v", tt.CanaryBodyRegex, err)
		}
		cfg.CanaryRegex, cfg.CanaryVersion = re, canaryLabel
	default:
		return cfg, plan.Refused(ztv1.ReasonInvalidSpec, "spec.analysis.trafficTest: set canaryHeader (the response header a canary answer carries) or canaryBodyRegex (a regular expression its body matches)")
	}
	return cfg, nil
}

// judgeTraffic says why a test result fails the gate, or "" when it passes.
func judgeTraffic(res *traffictest.Result, minSuccessRate int32, want float64) string {
	if min := float64(minSuccessRate) / 100; res.SuccessRate < min {
		return fmt.Sprintf("traffic test: %.1f%% of %d requests succeeded, below %d%% (%s)", 100*res.SuccessRate, res.Requests, minSuccessRate, errorsSummary(res.Errors))
	}
	if res.Consistent != nil && !*res.Consistent {
		return fmt.Sprintf("traffic test: canary share %.1f%% (interval %.1f-%.1f%%) is inconsistent with the %.0f%% set", 100*res.CanaryShare, 100*res.ShareInterval[0], 100*res.ShareInterval[1], 100*want)
	}
	return ""
}

func withHeader(cfg traffictest.Config) string {
	if cfg.HeaderName == "" {
		return ""
	}
	return fmt.Sprintf(" with header %s=%s", cfg.HeaderName, cfg.HeaderValue)
}

// settling reports whether the step's analysis began less than Settle ago.
func (g TrafficGate) settling(u *ztv1.RevisionUpgrade) bool {
	since := u.Status.StageStart()
	if since == nil {
		return false
	}
	c, settle := g.Clock, g.Settle
	if c == nil {
		c = clock.RealClock{}
	}
	if settle == 0 {
		settle = DefaultTrafficSettle
	}
	return c.Since(since.Time) < settle
}

func errorsSummary(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%d× %s", v, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
