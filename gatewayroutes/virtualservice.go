package gatewayroutes

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioapplyv1 "istio.io/client-go/pkg/applyconfiguration/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/ztcanary/ztcanary/internal/mesh"
)

// VirtualServiceRouter shifts traffic between two subsets of one host with an Istio
// VirtualService, the subsets defined by a DestinationRule: application canaries
// done with Istio's own API. Like HTTPRouteRouter it applies only spec.http (an
// atomic list in the schema) with field manager "ztcanary", pinned to the read
// resourceVersion, and skips writes that change nothing.
type VirtualServiceRouter struct {
	Istio istioclient.Interface
	Log   *zap.Logger
	// Namespace and Name identify the VirtualService; DestinationRule, in the same
	// namespace, must define both subsets.
	Namespace, Name, DestinationRule string
	// Host is the destination host the routes send to (as written in the routes).
	Host string
	// StableSubset and CanarySubset are the subset names.
	StableSubset, CanarySubset string
	// Kube and Service, when set, let SetRoutes refuse a share for a subset without
	// a ready endpoint: Service is the Service behind Host, and a subset's
	// endpoints are its pods that also carry the subset's labels.
	Kube    kubernetes.Interface
	Service Backend
}

var _ Router = (*VirtualServiceRouter)(nil)

func (r *VirtualServiceRouter) get(ctx context.Context) (*istionetworkingv1.VirtualService, error) {
	vs, err := r.Istio.NetworkingV1().VirtualServices(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: virtualservice %s/%s not found", ErrRouteNotFound, r.Namespace, r.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("get virtualservice %s/%s: %w", r.Namespace, r.Name, err)
	}
	return vs, nil
}

// Snapshot captures spec.http exactly as stored.
func (r *VirtualServiceRouter) Snapshot(ctx context.Context) (Snapshot, error) {
	vs, err := r.get(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	b, err := marshalHTTP(vs.Spec.Http)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot virtualservice %s/%s: %w", r.Namespace, r.Name, err)
	}
	return Snapshot{Kind: "VirtualService", Namespace: r.Namespace, Name: r.Name, Field: "spec.http", Value: b}, nil
}

// SetRoutes checks the input and the DestinationRule's subsets, then makes the
// VirtualService carry split.
func (r *VirtualServiceRouter) SetRoutes(ctx context.Context, split Split) error {
	if err := split.Validate(); err != nil {
		return err
	}
	if err := r.checkCanary(ctx, split); err != nil {
		return err
	}
	return r.update(ctx, func(vs *istionetworkingv1.VirtualService) ([]*networkingv1alpha3.HTTPRoute, error) {
		return r.render(vs.Spec.Http, split)
	})
}

// Check reports, without writing, what keeps the route from being shifted at all:
// a missing Service, a missing DestinationRule, or a subset it does not define.
func (r *VirtualServiceRouter) Check(ctx context.Context) error {
	if r.Kube != nil && r.Service.Name != "" {
		if err := checkService(ctx, r.Kube, "stable and canary", r.Service); err != nil {
			return err
		}
	}
	_, err := r.checkSubsets(ctx)
	return err
}

// Promote leaves a clean VirtualService once the upgrade completed: the routes that
// sent to the stable subset send to the canary subset alone, and the test routes
// are gone.
func (r *VirtualServiceRouter) Promote(ctx context.Context) error {
	if err := r.checkCanary(ctx, Split{CanaryWeight: 100}); err != nil {
		return err
	}
	return r.update(ctx, func(vs *istionetworkingv1.VirtualService) ([]*networkingv1alpha3.HTTPRoute, error) {
		routes, err := r.render(vs.Spec.Http, Split{CanaryWeight: 100})
		if err != nil {
			return nil, err
		}
		for _, hr := range routes {
			var kept []*networkingv1alpha3.HTTPRouteDestination
			touched := false
			for _, d := range hr.Route {
				switch {
				case r.isStable(d):
					touched = true
				case r.isCanary(d):
					touched = true
					d.Weight = 0 // a route's only destination gets all its traffic
					kept = append(kept, d)
				default:
					kept = append(kept, d)
				}
			}
			if touched {
				hr.Route = kept
			}
		}
		return routes, nil
	})
}

// GetRoutes reads the split the VirtualService carries.
func (r *VirtualServiceRouter) GetRoutes(ctx context.Context) (Split, error) {
	vs, err := r.get(ctx)
	if err != nil {
		return Split{}, err
	}
	return r.parse(vs.Spec.Http)
}

// Ready is true once the VirtualService exists: Istio reports no per-generation
// acceptance on it by default.
func (r *VirtualServiceRouter) Ready(ctx context.Context) (bool, string, error) {
	if _, err := r.get(ctx); err != nil {
		return false, "", err
	}
	return true, "virtualservice has no acceptance status to wait for", nil
}

// Restore writes spec.http back exactly as snap holds it.
func (r *VirtualServiceRouter) Restore(ctx context.Context, snap Snapshot) error {
	if snap.Kind != "VirtualService" || snap.Namespace != r.Namespace || snap.Name != r.Name || snap.Field != "spec.http" {
		return fmt.Errorf("%w: snapshot of %s %s/%s %s cannot restore virtualservice %s/%s", ErrInvalid, snap.Kind, snap.Namespace, snap.Name, snap.Field, r.Namespace, r.Name)
	}
	routes, err := unmarshalHTTP(snap.Value)
	if err != nil {
		return fmt.Errorf("read snapshot of virtualservice %s/%s: %w", r.Namespace, r.Name, err)
	}
	return r.update(ctx, func(*istionetworkingv1.VirtualService) ([]*networkingv1alpha3.HTTPRoute, error) { return routes, nil })
}

func (r *VirtualServiceRouter) isStable(d *networkingv1alpha3.HTTPRouteDestination) bool {
	return d.GetDestination().GetHost() == r.Host && d.GetDestination().GetSubset() == r.StableSubset
}

func (r *VirtualServiceRouter) isCanary(d *networkingv1alpha3.HTTPRouteDestination) bool {
	return d.GetDestination().GetHost() == r.Host && d.GetDestination().GetSubset() == r.CanarySubset
}

// render mirrors renderRules: weights on the routes that send to the stable subset,
// and a header-matched route per such route, named HeaderRulePrefix+N and placed
// just before it (a VirtualService takes the first matching route).
func (r *VirtualServiceRouter) render(current []*networkingv1alpha3.HTTPRoute, split Split) ([]*networkingv1alpha3.HTTPRoute, error) {
	var out []*networkingv1alpha3.HTTPRoute
	n := 0
	for _, hr := range current {
		if strings.HasPrefix(hr.GetName(), HeaderRulePrefix) {
			continue
		}
		hr = proto.Clone(hr).(*networkingv1alpha3.HTTPRoute)
		toStable, hasCanary := false, false
		for _, d := range hr.Route {
			switch {
			case r.isStable(d):
				toStable = true
			case r.isCanary(d):
				hasCanary = true
			}
		}
		if !toStable {
			out = append(out, hr)
			continue
		}
		for _, d := range hr.Route {
			if !r.isStable(d) && !r.isCanary(d) {
				return nil, fmt.Errorf("%w: route %q sends to %s besides the stable and canary subsets: weights would not sum to 100", ErrRoute, hr.GetName(), d.GetDestination().GetHost())
			}
		}
		var stableDest *networkingv1alpha3.Destination
		for _, d := range hr.Route {
			switch {
			case r.isStable(d):
				d.Weight = 100 - split.CanaryWeight
				stableDest = d.Destination
			case r.isCanary(d):
				d.Weight = split.CanaryWeight
			}
		}
		if !hasCanary {
			dest := proto.Clone(stableDest).(*networkingv1alpha3.Destination)
			dest.Subset = r.CanarySubset
			hr.Route = append(hr.Route, &networkingv1alpha3.HTTPRouteDestination{Destination: dest, Weight: split.CanaryWeight})
		}
		if split.Header != nil {
			out = append(out, r.headerRoute(n, hr, stableDest, *split.Header))
			n++
		}
		out = append(out, hr)
	}
	// parse refuses a result without a route to the stable subset.
	if _, err := r.parse(out); err != nil {
		return nil, err
	}
	return out, nil
}

func (r *VirtualServiceRouter) headerRoute(n int, src *networkingv1alpha3.HTTPRoute, stableDest *networkingv1alpha3.Destination, h Header) *networkingv1alpha3.HTTPRoute {
	t := proto.Clone(src).(*networkingv1alpha3.HTTPRoute)
	t.Name = HeaderRulePrefix + strconv.Itoa(n)
	if len(t.Match) == 0 {
		t.Match = []*networkingv1alpha3.HTTPMatchRequest{{}}
	}
	for _, m := range t.Match {
		if m.Headers == nil {
			m.Headers = map[string]*networkingv1alpha3.StringMatch{}
		}
		m.Headers[strings.ToLower(h.Name)] = &networkingv1alpha3.StringMatch{MatchType: &networkingv1alpha3.StringMatch_Exact{Exact: h.Value}}
	}
	dest := proto.Clone(stableDest).(*networkingv1alpha3.Destination)
	dest.Subset = r.CanarySubset
	t.Route = []*networkingv1alpha3.HTTPRouteDestination{{Destination: dest, Weight: 100}}
	return t
}

func (r *VirtualServiceRouter) parse(routes []*networkingv1alpha3.HTTPRoute) (Split, error) {
	var s Split
	found := false
	weights := map[int32]bool{}
	for _, hr := range routes {
		if strings.HasPrefix(hr.GetName(), HeaderRulePrefix) {
			if hr.GetName() == HeaderRulePrefix+"0" && len(hr.Match) > 0 {
				for name, m := range hr.Match[0].Headers {
					if s.Header == nil || name < s.Header.Name {
						s.Header = &Header{Name: name, Value: m.GetExact()}
					}
				}
			}
			continue
		}
		toStable, w := false, int32(0)
		for _, d := range hr.Route {
			if r.isStable(d) {
				toStable = true
			}
			if r.isCanary(d) {
				w = d.Weight
			}
		}
		if toStable {
			found = true
			weights[w] = true
			s.CanaryWeight = w
		}
	}
	if !found {
		return Split{}, fmt.Errorf("%w: no route sends to subset %s of %s", ErrRoute, r.StableSubset, r.Host)
	}
	if len(weights) > 1 {
		return Split{}, fmt.Errorf("%w: the routes to the stable subset give the canary different weights", ErrRoute)
	}
	return s, nil
}

// checkCanary refuses a split the subsets cannot carry: a missing DestinationRule
// or subset, or a share for a canary subset without a ready endpoint.
func (r *VirtualServiceRouter) checkCanary(ctx context.Context, split Split) error {
	subsets, err := r.checkSubsets(ctx)
	if err != nil {
		return err
	}
	if split.CanaryWeight > 0 || split.Header != nil {
		return r.checkSubsetReady(ctx, "canary", subsets[r.CanarySubset])
	}
	return nil
}

// checkSubsets refuses a DestinationRule that is missing or lacks a subset, and
// returns the two subsets by name.
func (r *VirtualServiceRouter) checkSubsets(ctx context.Context) (map[string]*networkingv1alpha3.Subset, error) {
	dr, err := r.Istio.NetworkingV1().DestinationRules(r.Namespace).Get(ctx, r.DestinationRule, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: destinationrule %s/%s not found", ErrBackend, r.Namespace, r.DestinationRule)
	}
	if err != nil {
		return nil, fmt.Errorf("get destinationrule %s/%s: %w", r.Namespace, r.DestinationRule, err)
	}
	out := map[string]*networkingv1alpha3.Subset{}
	var names []string
	for _, s := range dr.Spec.Subsets {
		names = append(names, s.Name)
		if s.Name == r.StableSubset || s.Name == r.CanarySubset {
			out[s.Name] = s
		}
	}
	for _, want := range []string{r.StableSubset, r.CanarySubset} {
		if out[want] == nil {
			return nil, fmt.Errorf("%w: destinationrule %s/%s defines no subset %q (it defines %s)", ErrBackend, r.Namespace, r.DestinationRule, want, quoteAll(names))
		}
	}
	return out, nil
}

func quoteAll(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// checkSubsetReady holds invariant 3 for subsets: the subset must have a ready
// endpoint, a ready pod selected by the Service that carries the subset's labels.
// A Service without selector has no pods to tell subsets apart: any ready endpoint
// of it counts.
func (r *VirtualServiceRouter) checkSubsetReady(ctx context.Context, role string, subset *networkingv1alpha3.Subset) error {
	if r.Kube == nil || r.Service.Name == "" {
		return nil
	}
	svc, err := r.Kube.CoreV1().Services(r.Service.Namespace).Get(ctx, r.Service.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: service %s/%s not found", ErrBackend, r.Service.Namespace, r.Service.Name)
	}
	if err != nil {
		return fmt.Errorf("get service %s/%s: %w", r.Service.Namespace, r.Service.Name, err)
	}
	if len(svc.Spec.Selector) == 0 {
		return checkReadyEndpoints(ctx, r.Kube, role, r.Service)
	}
	sel := labels.Merge(svc.Spec.Selector, subset.GetLabels()).String()
	pods, err := r.Kube.CoreV1().Pods(r.Service.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("list pods of subset %s: %w", subset.GetName(), err)
	}
	for i := range pods.Items {
		if mesh.Serving(&pods.Items[i]) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s subset %q of service %s/%s has no ready endpoint (no ready pod labelled %s)", ErrBackend, role, subset.GetName(), r.Service.Namespace, r.Service.Name, sel)
}

func (r *VirtualServiceRouter) update(ctx context.Context, routes func(*istionetworkingv1.VirtualService) ([]*networkingv1alpha3.HTTPRoute, error)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		vs, err := r.get(ctx)
		if err != nil {
			return err
		}
		want, err := routes(vs)
		if err != nil {
			return err
		}
		if equalHTTP(want, vs.Spec.Http) {
			return nil
		}
		cfg := istioapplyv1.VirtualService(r.Name, r.Namespace).
			WithResourceVersion(vs.ResourceVersion).
			WithSpec(networkingv1alpha3.VirtualService{Http: want})
		if _, err := r.Istio.NetworkingV1().VirtualServices(r.Namespace).Apply(ctx, cfg, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			if apierrors.IsConflict(err) {
				return err
			}
			return fmt.Errorf("apply virtualservice %s/%s: %w", r.Namespace, r.Name, err)
		}
		if r.Log != nil {
			r.Log.Named("virtualservice").Info("routes applied", zap.String("route", r.Namespace+"/"+r.Name), zap.Int("routes", len(want)))
		}
		return nil
	})
}

func equalHTTP(a, b []*networkingv1alpha3.HTTPRoute) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func marshalHTTP(routes []*networkingv1alpha3.HTTPRoute) ([]byte, error) {
	raw := make([]json.RawMessage, 0, len(routes))
	for _, hr := range routes {
		b, err := hr.MarshalJSON()
		if err != nil {
			return nil, err
		}
		raw = append(raw, b)
	}
	return json.Marshal(raw)
}

func unmarshalHTTP(b []byte) ([]*networkingv1alpha3.HTTPRoute, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	out := make([]*networkingv1alpha3.HTTPRoute, 0, len(raw))
	for _, m := range raw {
		hr := &networkingv1alpha3.HTTPRoute{}
		if err := hr.UnmarshalJSON(m); err != nil {
			return nil, err
		}
		out = append(out, hr)
	}
	return out, nil
}
