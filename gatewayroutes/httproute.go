package gatewayroutes

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// HTTPRouteRouter shifts traffic with a Gateway API HTTPRoute.
//
// HTTPRoute's spec.rules is an atomic list in the schema, so server-side apply can
// only own it whole: each write reads the route, changes only what ztcanary owns (see
// renderRules), applies the complete list with field manager "ztcanary" and the
// read resourceVersion (a concurrent writer makes the write fail and it is redone on
// the fresh object, never overwriting the other change), and skips the write when
// nothing changes. Everything outside spec.rules stays with its owners.
type HTTPRouteRouter struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	Log     *zap.Logger
	// Namespace and Name identify the HTTPRoute.
	Namespace, Name string
	// Stable and Canary are the two backends.
	Stable, Canary Backend
}

var _ Router = (*HTTPRouteRouter)(nil)

func (r *HTTPRouteRouter) logger() *zap.Logger {
	if r.Log == nil {
		return zap.NewNop()
	}
	return r.Log.Named("httproute").With(zap.String("route", r.Namespace+"/"+r.Name))
}

func (r *HTTPRouteRouter) get(ctx context.Context) (*gatewayv1.HTTPRoute, error) {
	route, err := r.Gateway.GatewayV1().HTTPRoutes(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: httproute %s/%s not found", ErrRouteNotFound, r.Namespace, r.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("get httproute %s/%s: %w", r.Namespace, r.Name, err)
	}
	return route, nil
}

// Snapshot captures spec.rules exactly as stored.
func (r *HTTPRouteRouter) Snapshot(ctx context.Context) (Snapshot, error) {
	route, err := r.get(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	b, err := json.Marshal(route.Spec.Rules)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot httproute %s/%s: %w", r.Namespace, r.Name, err)
	}
	return Snapshot{Kind: "HTTPRoute", Namespace: r.Namespace, Name: r.Name, Field: "spec.rules", Value: b}, nil
}

// SetRoutes checks the input and the backends, then makes the route carry split.
func (r *HTTPRouteRouter) SetRoutes(ctx context.Context, split Split) error {
	if err := split.Validate(); err != nil {
		return err
	}
	if err := r.checkBackends(ctx, split.CanaryWeight > 0 || split.Header != nil); err != nil {
		return err
	}
	return r.update(ctx, func(route *gatewayv1.HTTPRoute) ([]gatewayv1.HTTPRouteRule, error) {
		return renderRules(r.Namespace, route.Spec.Rules, r.Stable, r.Canary, split)
	})
}

// Check reports, without writing, a backend Service that is missing or lacks the
// port, and a cross-namespace backend that no ReferenceGrant permits.
func (r *HTTPRouteRouter) Check(ctx context.Context) error {
	return r.checkBackends(ctx, false)
}

// GetRoutes reads the split the route carries.
func (r *HTTPRouteRouter) GetRoutes(ctx context.Context) (Split, error) {
	route, err := r.get(ctx)
	if err != nil {
		return Split{}, err
	}
	return parseSplit(r.Namespace, route.Spec.Rules, r.Stable, r.Canary)
}

// Ready reports whether every gateway controller that reports status on the route
// has Accepted it at its current generation. A route without any parent status (no
// controller reports one, as in the simulated cluster) counts as ready, and the
// message says so.
func (r *HTTPRouteRouter) Ready(ctx context.Context) (bool, string, error) {
	route, err := r.get(ctx)
	if err != nil {
		return false, "", err
	}
	ok, msg := RouteAccepted(route.Generation, route.Status.Parents)
	return ok, msg, nil
}

// RouteAccepted is the readiness rule: every parent status has Accepted=True with an
// observedGeneration at least generation.
func RouteAccepted(generation int64, parents []gatewayv1.RouteParentStatus) (bool, string) {
	if len(parents) == 0 {
		return true, "no gateway controller reports status on the route"
	}
	for _, p := range parents {
		cond := metav1.Condition{}
		found := false
		for _, c := range p.Conditions {
			if c.Type == string(gatewayv1.RouteConditionAccepted) {
				cond, found = c, true
			}
		}
		parent := string(p.ParentRef.Name)
		switch {
		case !found:
			return false, fmt.Sprintf("parent %s has not reported Accepted yet", parent)
		case cond.ObservedGeneration < generation:
			return false, fmt.Sprintf("parent %s has seen generation %d, route is at %d", parent, cond.ObservedGeneration, generation)
		case cond.Status != metav1.ConditionTrue:
			return false, fmt.Sprintf("parent %s does not accept the route: %s: %s", parent, cond.Reason, cond.Message)
		}
	}
	return true, "accepted by every parent at the current generation"
}

// Restore writes spec.rules back exactly as snap holds them.
func (r *HTTPRouteRouter) Restore(ctx context.Context, snap Snapshot) error {
	if snap.Kind != "HTTPRoute" || snap.Namespace != r.Namespace || snap.Name != r.Name || snap.Field != "spec.rules" {
		return fmt.Errorf("%w: snapshot of %s %s/%s %s cannot restore httproute %s/%s", ErrInvalid, snap.Kind, snap.Namespace, snap.Name, snap.Field, r.Namespace, r.Name)
	}
	var rules []gatewayv1.HTTPRouteRule
	if err := json.Unmarshal(snap.Value, &rules); err != nil {
		return fmt.Errorf("read snapshot of httproute %s/%s: %w", r.Namespace, r.Name, err)
	}
	return r.update(ctx, func(route *gatewayv1.HTTPRoute) ([]gatewayv1.HTTPRouteRule, error) {
		out, exact := restoreRules(r.Namespace, route.Spec.Rules, rules, r.Stable, r.Canary)
		if !exact {
			r.logger().Info("route changed by others since the snapshot: undoing only ztcanary's fields")
		}
		return out, nil
	})
}

// Promote leaves a clean route once the upgrade completed: the rules that send to the
// stable backend send to the canary alone (weight 1, as the schema defaults it), and
// the test rules are gone.
func (r *HTTPRouteRouter) Promote(ctx context.Context) error {
	if err := r.checkBackends(ctx, true); err != nil {
		return err
	}
	return r.update(ctx, func(route *gatewayv1.HTTPRoute) ([]gatewayv1.HTTPRouteRule, error) {
		rules, err := renderRules(r.Namespace, route.Spec.Rules, r.Stable, r.Canary, Split{CanaryWeight: 100})
		if err != nil {
			return nil, err
		}
		for i := range rules {
			var kept []gatewayv1.HTTPBackendRef
			touched := false
			for _, ref := range rules[i].BackendRefs {
				switch {
				case refersTo(ref.BackendObjectReference, r.Namespace, r.Stable):
					touched = true
				case refersTo(ref.BackendObjectReference, r.Namespace, r.Canary):
					touched = true
					w := int32(1)
					ref.Weight = &w
					kept = append(kept, ref)
				default:
					kept = append(kept, ref)
				}
			}
			if touched {
				rules[i].BackendRefs = kept
			}
		}
		return rules, nil
	})
}

// Drift compares the split ztcanary last set (want) with the route and, when they
// differ, names the field managers other than ztcanary that own spec.rules ("changed
// by kustomize-controller (Apply)"), so the person reading the upgrade's condition
// knows whom to ask.
func (r *HTTPRouteRouter) Drift(ctx context.Context, want Split) ([]string, error) {
	route, err := r.get(ctx)
	if err != nil {
		return nil, err
	}
	got, err := parseSplit(r.Namespace, route.Spec.Rules, r.Stable, r.Canary)
	if err != nil {
		return []string{err.Error()}, nil
	}
	d := DetectDrift(want, got)
	if len(d) > 0 {
		if w := lastWriters(route.ManagedFields); len(w) > 0 {
			d = append(d, "changed by "+strings.Join(w, ", "))
		}
	}
	return d, nil
}

// lastWriters lists the managers, other than ztcanary, that own spec.rules or wrote
// it after ztcanary's last apply.
func lastWriters(mf []metav1.ManagedFieldsEntry) []string {
	var out []string
	for _, e := range mf {
		if e.Manager == FieldManager || e.FieldsV1 == nil {
			continue
		}
		var f map[string]any
		if json.Unmarshal(e.FieldsV1.Raw, &f) != nil {
			continue
		}
		if spec, ok := f["f:spec"].(map[string]any); ok {
			if _, ok := spec["f:rules"]; ok {
				out = append(out, fmt.Sprintf("%s (%s)", e.Manager, e.Operation))
			}
		}
	}
	return out
}

// update reads the route, computes new rules and applies them when they differ,
// redoing both on a conflict with another writer.
func (r *HTTPRouteRouter) update(ctx context.Context, rules func(*gatewayv1.HTTPRoute) ([]gatewayv1.HTTPRouteRule, error)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		route, err := r.get(ctx)
		if err != nil {
			return err
		}
		want, err := rules(route)
		if err != nil {
			return err
		}
		if equality.Semantic.DeepEqual(want, route.Spec.Rules) {
			return nil
		}
		cfg, err := applyConfig(route, want)
		if err != nil {
			return err
		}
		_, err = r.Gateway.GatewayV1().HTTPRoutes(r.Namespace).Apply(ctx, cfg, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil {
			if apierrors.IsConflict(err) {
				return err
			}
			return fmt.Errorf("apply httproute %s/%s: %w", r.Namespace, r.Name, err)
		}
		r.logger().Info("route rules applied", zap.Int("rules", len(want)))
		return nil
	})
}

// applyConfig is the apply configuration holding only spec.rules, pinned to the
// resourceVersion the rules were computed from.
func applyConfig(route *gatewayv1.HTTPRoute, rules []gatewayv1.HTTPRouteRule) (*gwapply.HTTPRouteApplyConfiguration, error) {
	b, err := json.Marshal(rules)
	if err != nil {
		return nil, fmt.Errorf("encode rules: %w", err)
	}
	var acs []*gwapply.HTTPRouteRuleApplyConfiguration
	if err := json.Unmarshal(b, &acs); err != nil {
		return nil, fmt.Errorf("encode rules: %w", err)
	}
	return gwapply.HTTPRoute(route.Name, route.Namespace).
		WithResourceVersion(route.ResourceVersion).
		WithSpec(gwapply.HTTPRouteSpec().WithRules(acs...)), nil
}

// checkBackends refuses backends the route could not send to: a missing Service, a
// Service without the port, a cross-namespace reference no ReferenceGrant permits,
// and (when the canary is to receive traffic) a canary without a ready endpoint.
func (r *HTTPRouteRouter) checkBackends(ctx context.Context, canaryGetsTraffic bool) error {
	for _, b := range []struct {
		role    string
		backend Backend
	}{{"stable", r.Stable}, {"canary", r.Canary}} {
		if err := checkService(ctx, r.Kube, b.role, b.backend); err != nil {
			return err
		}
		if b.backend.Namespace != r.Namespace {
			if err := checkReferenceGrant(ctx, r.Gateway, r.Namespace, b.backend); err != nil {
				return err
			}
		}
	}
	if canaryGetsTraffic {
		return checkReadyEndpoints(ctx, r.Kube, "canary", r.Canary)
	}
	return nil
}

func checkService(ctx context.Context, kube kubernetes.Interface, role string, b Backend) error {
	svc, err := kube.CoreV1().Services(b.Namespace).Get(ctx, b.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: %s backend service %s/%s not found", ErrBackend, role, b.Namespace, b.Name)
	}
	if err != nil {
		return fmt.Errorf("get %s backend service %s/%s: %w", role, b.Namespace, b.Name, err)
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == b.Port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s backend service %s/%s has no TCP port %d", ErrBackend, role, b.Namespace, b.Name, b.Port)
}

// checkReadyEndpoints holds invariant 3: no share of traffic goes to a backend that
// has no ready endpoint.
func checkReadyEndpoints(ctx context.Context, kube kubernetes.Interface, role string, b Backend) error {
	slices, err := kube.DiscoveryV1().EndpointSlices(b.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + b.Name})
	if err != nil {
		return fmt.Errorf("list endpoints of %s backend %s/%s: %w", role, b.Namespace, b.Name, err)
	}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: %s backend %s/%s has no ready endpoint", ErrBackend, role, b.Namespace, b.Name)
}

// checkReferenceGrant finds a ReferenceGrant in the backend's namespace that lets
// HTTPRoutes of routeNS refer to the backend Service.
func checkReferenceGrant(ctx context.Context, gw gatewayclient.Interface, routeNS string, b Backend) error {
	grants, err := gw.GatewayV1().ReferenceGrants(b.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list referencegrants in %s: %w", b.Namespace, err)
	}
	for _, g := range grants.Items {
		from, to := false, false
		for _, f := range g.Spec.From {
			if f.Group == gatewayv1.GroupName && f.Kind == "HTTPRoute" && string(f.Namespace) == routeNS {
				from = true
			}
		}
		for _, t := range g.Spec.To {
			if t.Group == "" && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == b.Name) {
				to = true
			}
		}
		if from && to {
			return nil
		}
	}
	return fmt.Errorf("%w: httproutes in namespace %s may not send to service %s/%s: create a ReferenceGrant in %s from group %s kind HTTPRoute namespace %s to kind Service",
		ErrReferenceNotPermitted, routeNS, b.Namespace, b.Name, b.Namespace, gatewayv1.GroupName, routeNS)
}
