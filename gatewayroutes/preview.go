package gatewayroutes

import (
	"context"
	"encoding/json"
	"fmt"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Preview is the field a Router changes, as the route carries it now and as it would
// after each of a series of splits, rendered exactly as SetRoutes would write it,
// with nothing written. The CLI's plan shows it as a diff.
type Preview struct {
	// Kind, Namespace and Name identify the route.
	Kind, Namespace, Name string
	// Field is the JSON path of the field (spec.rules, spec.http).
	Field string
	// Before is the field's JSON now; After[i] its JSON after splits[i].
	Before json.RawMessage
	After  []json.RawMessage
}

// Previewer is a Router that can render its changes without writing them.
type Previewer interface {
	// Preview renders the route after each split in turn, each from the one before,
	// as successive SetRoutes calls would leave it. Invalid input is an error.
	Preview(ctx context.Context, splits []Split) (Preview, error)
}

var (
	_ Previewer = (*HTTPRouteRouter)(nil)
	_ Previewer = (*VirtualServiceRouter)(nil)
)

// Preview renders spec.rules after each split.
func (r *HTTPRouteRouter) Preview(ctx context.Context, splits []Split) (Preview, error) {
	route, err := r.get(ctx)
	if err != nil {
		return Preview{}, err
	}
	p := Preview{Kind: "HTTPRoute", Namespace: r.Namespace, Name: r.Name, Field: "spec.rules"}
	enc := func(rules []gatewayv1.HTTPRouteRule) (json.RawMessage, error) {
		b, err := json.Marshal(rules)
		if err != nil {
			return nil, fmt.Errorf("encode rules of httproute %s/%s: %w", r.Namespace, r.Name, err)
		}
		return b, nil
	}
	if p.Before, err = enc(route.Spec.Rules); err != nil {
		return Preview{}, err
	}
	rules := route.Spec.Rules
	for _, s := range splits {
		if rules, err = renderRules(r.Namespace, rules, r.Stable, r.Canary, s); err != nil {
			return Preview{}, err
		}
		b, err := enc(rules)
		if err != nil {
			return Preview{}, err
		}
		p.After = append(p.After, b)
	}
	return p, nil
}

// Preview renders spec.http after each split.
func (r *VirtualServiceRouter) Preview(ctx context.Context, splits []Split) (Preview, error) {
	vs, err := r.get(ctx)
	if err != nil {
		return Preview{}, err
	}
	p := Preview{Kind: "VirtualService", Namespace: r.Namespace, Name: r.Name, Field: "spec.http"}
	if p.Before, err = marshalHTTP(vs.Spec.Http); err != nil {
		return Preview{}, fmt.Errorf("encode routes of virtualservice %s/%s: %w", r.Namespace, r.Name, err)
	}
	routes := vs.Spec.Http
	for _, s := range splits {
		if err := s.Validate(); err != nil {
			return Preview{}, err
		}
		var next []*networkingv1alpha3.HTTPRoute
		if next, err = r.render(routes, s); err != nil {
			return Preview{}, err
		}
		routes = next
		b, err := marshalHTTP(routes)
		if err != nil {
			return Preview{}, fmt.Errorf("encode routes of virtualservice %s/%s: %w", r.Namespace, r.Name, err)
		}
		p.After = append(p.After, b)
	}
	return p, nil
}
