package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
)

// RouterFactory builds the Router of an upgrade's route.
type RouterFactory func(u *ztv1.RevisionUpgrade) (gatewayroutes.Router, error)

// HTTPRouteRouters returns a RouterFactory for Gateway API HTTPRoutes.
func HTTPRouteRouters(kube kubernetes.Interface, gw gatewayclient.Interface) RouterFactory {
	return func(u *ztv1.RevisionUpgrade) (gatewayroutes.Router, error) {
		rs := u.Spec.Route
		if rs.HTTPRoute == nil {
			return nil, refused("RouteUnsupported", "spec.route.virtualService: the orchestrator shifts HTTPRoutes only for now; use spec.route.httpRoute")
		}
		return &gatewayroutes.HTTPRouteRouter{
			Kube: kube, Gateway: gw,
			Namespace: rs.HTTPRoute.Namespace, Name: rs.HTTPRoute.Name,
			Stable: backend(rs.Stable), Canary: backend(rs.Canary),
		}, nil
	}
}

func backend(b ztv1.BackendRef) gatewayroutes.Backend {
	return gatewayroutes.Backend{Namespace: b.Namespace, Name: b.Name, Port: b.Port}
}

// desiredSplit is the route the steps up to and including step i ask for: the test
// header rule once its step is reached (kept for testers until the end), and the
// last weight set.
func desiredSplit(u *ztv1.RevisionUpgrade, i int) gatewayroutes.Split {
	var s gatewayroutes.Split
	for j := 0; j <= i && j < len(u.Spec.Steps); j++ {
		t := u.Spec.Steps[j].Traffic
		switch {
		case t == nil:
		case t.Header != nil:
			s.Header = &gatewayroutes.Header{Name: t.Header.Name, Value: t.Header.Value}
		case t.Weight != nil:
			s.CanaryWeight = *t.Weight
		}
	}
	return s
}

// preflightRoute checks the route and both backend Services exist and snapshots
// what the router may change, for an exact restore.
func (r *Reconciler) preflightRoute(ctx context.Context, u *ztv1.RevisionUpgrade) (*runtime.RawExtension, error) {
	if u.Spec.Route == nil {
		return nil, nil
	}
	if r.Routes == nil {
		return nil, refused("RouteUnsupported", "spec.route: this orchestrator was started without route support")
	}
	router, err := r.Routes(u)
	if err != nil {
		return nil, err
	}
	for role, b := range map[string]ztv1.BackendRef{"stable": u.Spec.Route.Stable, "canary": u.Spec.Route.Canary} {
		var svc corev1.Service
		if err := r.Client.Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: b.Name}, &svc); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, refused("BackendMissing", "spec.route.%s: Service %s/%s does not exist", role, b.Namespace, b.Name)
			}
			return nil, err
		}
	}
	snap, err := router.Snapshot(ctx)
	if err != nil {
		if errors.Is(err, gatewayroutes.ErrRoute) {
			return nil, refused("RouteMissing", "spec.route: %v", err)
		}
		return nil, err
	}
	if _, err := router.GetRoutes(ctx); err != nil {
		return nil, refused("RouteUnusable", "spec.route: %v", err)
	}
	b, err := json.Marshal(snap)
	if err != nil {
		return nil, err
	}
	return &runtime.RawExtension{Raw: b}, nil
}

// routeDrift reports how the route differs from what ztcanary last set, if it does.
func (r *Reconciler) routeDrift(ctx context.Context, u *ztv1.RevisionUpgrade) ([]string, error) {
	if u.Spec.Route == nil || r.Routes == nil || u.Status.TrafficStep == nil {
		return nil, nil
	}
	router, err := r.Routes(u)
	if err != nil {
		return nil, err
	}
	got, err := router.GetRoutes(ctx)
	if err != nil {
		return []string{err.Error()}, nil
	}
	return gatewayroutes.DetectDrift(desiredSplit(u, int(*u.Status.TrafficStep)), got), nil
}

// applyTraffic sets the route to what the steps up to step i ask for and records
// it. The router refuses a canary share for a backend without a ready endpoint.
func (r *Reconciler) applyTraffic(ctx context.Context, u *ztv1.RevisionUpgrade, i int) error {
	if u.Spec.Route == nil || r.Routes == nil || u.Spec.Steps[i].Traffic == nil {
		return nil
	}
	router, err := r.Routes(u)
	if err != nil {
		return err
	}
	split := desiredSplit(u, i)
	if err := router.SetRoutes(ctx, split); err != nil {
		return err
	}
	countWrite("route")
	step := int32(i)
	u.Status.TrafficStep = &step
	u.Status.TrafficWeight = split.CanaryWeight
	r.Recorder.Eventf(u, eventNormal, "TrafficShifted", "step %d: route set to %s", i, split)
	return nil
}

// routeReady reports whether the gateway accepted the route's current spec.
func (r *Reconciler) routeReady(ctx context.Context, u *ztv1.RevisionUpgrade) (bool, string, error) {
	if u.Spec.Route == nil || r.Routes == nil {
		return true, "", nil
	}
	router, err := r.Routes(u)
	if err != nil {
		return false, "", err
	}
	return router.Ready(ctx)
}

// restoreRoute writes back the snapshot taken before the upgrade.
func (r *Reconciler) restoreRoute(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	if u.Spec.Route == nil || r.Routes == nil || u.Status.OriginalRoute == nil {
		return nil
	}
	router, err := r.Routes(u)
	if err != nil {
		return err
	}
	var snap gatewayroutes.Snapshot
	if err := json.Unmarshal(u.Status.OriginalRoute.Raw, &snap); err != nil {
		return fmt.Errorf("recorded route snapshot: %w", err)
	}
	countWrite("route")
	return router.Restore(ctx, snap)
}

// promoteRoute leaves only the canary backend and no test rule, when asked.
func (r *Reconciler) promoteRoute(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	if u.Spec.Route == nil || !u.Spec.Route.CleanUpOnSuccess || r.Routes == nil {
		return nil
	}
	router, err := r.Routes(u)
	if err != nil {
		return err
	}
	p, ok := router.(interface{ Promote(context.Context) error })
	if !ok {
		return fmt.Errorf("the %T router cannot clean up a route", router)
	}
	countWrite("route")
	return p.Promote(ctx)
}

// TrafficGate is the analysis gate: after a traffic step it sends the configured
// requests and fails when the success rate is too low or the observed canary share
// is inconsistent (binomial Wilson interval) with what the step set.
type TrafficGate struct{}

// Check runs the traffic test of step i, if the step changed traffic.
func (TrafficGate) Check(ctx context.Context, u *ztv1.RevisionUpgrade, i int) (bool, string, error) {
	tt := u.Spec.Analysis.TrafficTest
	t := u.Spec.Steps[i].Traffic
	if tt == nil || t == nil {
		return true, "", nil
	}
	if tt.CanaryHeader == nil {
		return false, "", fmt.Errorf("spec.analysis.trafficTest: set canaryHeader (name and value of the response header a canary answer carries)")
	}
	cfg := traffictest.Config{
		URL: tt.URL, Requests: int(tt.Requests), Concurrency: int(tt.Concurrency),
		VersionHeader: tt.CanaryHeader.Name, CanaryVersion: tt.CanaryHeader.Value,
	}
	want := float64(desiredSplit(u, i).CanaryWeight) / 100
	if t.Header != nil {
		cfg.HeaderName, cfg.HeaderValue, want = t.Header.Name, t.Header.Value, 1
	}
	cfg.ExpectedCanaryShare = &want
	res, err := traffictest.Run(ctx, cfg)
	if err != nil {
		return false, "", fmt.Errorf("traffic test: %w", err)
	}
	if min := float64(tt.MinSuccessRate) / 100; res.SuccessRate < min {
		return false, "", fmt.Errorf("traffic test: %.1f%% of %d requests succeeded, below %d%% (%s)", 100*res.SuccessRate, res.Requests, tt.MinSuccessRate, errorsSummary(res.Errors))
	}
	if res.Consistent != nil && !*res.Consistent {
		return false, "", fmt.Errorf("traffic test: canary share %.1f%% (interval %.1f-%.1f%%) is inconsistent with the %.0f%% set", 100*res.CanaryShare, 100*res.ShareInterval[0], 100*res.ShareInterval[1], 100*want)
	}
	return true, "", nil
}

func errorsSummary(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%d× %s", v, k))
	}
	return strings.Join(parts, ", ")
}
