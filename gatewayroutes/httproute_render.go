package gatewayroutes

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// HeaderRulePrefix starts the name of every HTTPRoute rule ztcanary adds. Rules are
// recognised by this name only, never by their backends, so a restart or a quick
// succession of steps can neither lose nor duplicate them.
const HeaderRulePrefix = "ztcanary-header-"

// Limits of the HTTPRoute schema (gateway-api v1.6).
const (
	maxRules   = 16
	maxMatches = 64
)

func isZtcanaryRule(r gatewayv1.HTTPRouteRule) bool {
	return r.Name != nil && strings.HasPrefix(string(*r.Name), HeaderRulePrefix)
}

// refersTo reports whether ref points at backend b, applying the schema's defaults
// (group "", kind Service, the route's namespace).
func refersTo(ref gatewayv1.BackendObjectReference, routeNS string, b Backend) bool {
	if ref.Group != nil && *ref.Group != "" {
		return false
	}
	if ref.Kind != nil && *ref.Kind != "Service" {
		return false
	}
	ns := routeNS
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	if ns != b.Namespace || string(ref.Name) != b.Name {
		return false
	}
	return ref.Port == nil || int32(*ref.Port) == b.Port
}

// backendRef renders b fully defaulted (group, kind, weight written out), so that the
// stored object equals what ztcanary sent and GitOps tools see no false drift.
func backendRef(routeNS string, b Backend, weight int32) gatewayv1.HTTPBackendRef {
	ref := gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{
			Group: ptr.To(gatewayv1.Group("")),
			Kind:  ptr.To(gatewayv1.Kind("Service")),
			Name:  gatewayv1.ObjectName(b.Name),
			Port:  ptr.To(gatewayv1.PortNumber(b.Port)),
		},
		Weight: ptr.To(weight),
	}}
	if b.Namespace != routeNS {
		ref.Namespace = ptr.To(gatewayv1.Namespace(b.Namespace))
	}
	return ref
}

// renderRules returns the rules of a route that carries split, starting from the
// route's current rules. Rules that do not send to the stable backend, and every
// field ztcanary does not own (matches, filters, timeouts, other backends, names),
// are copied unchanged. ztcanary owns: the weights of the stable and canary
// backendRefs in the rules that send to stable, the canary backendRef it adds there,
// and the rules named HeaderRulePrefix+N.
func renderRules(routeNS string, current []gatewayv1.HTTPRouteRule, stable, canary Backend, split Split) ([]gatewayv1.HTTPRouteRule, error) {
	if err := split.Validate(); err != nil {
		return nil, err
	}
	var out []gatewayv1.HTTPRouteRule
	var stableRules []int // indexes in out
	for _, r := range current {
		if isZtcanaryRule(r) {
			continue
		}
		r = *r.DeepCopy()
		sendsToStable := false
		for _, ref := range r.BackendRefs {
			if refersTo(ref.BackendObjectReference, routeNS, stable) {
				sendsToStable = true
			}
		}
		if sendsToStable {
			hasCanary := false
			for i := range r.BackendRefs {
				ref := &r.BackendRefs[i]
				switch {
				case refersTo(ref.BackendObjectReference, routeNS, stable):
					ref.Weight = ptr.To(100 - split.CanaryWeight)
				case refersTo(ref.BackendObjectReference, routeNS, canary):
					ref.Weight = ptr.To(split.CanaryWeight)
					hasCanary = true
				}
			}
			if !hasCanary {
				r.BackendRefs = append(r.BackendRefs, backendRef(routeNS, canary, split.CanaryWeight))
			}
			stableRules = append(stableRules, len(out))
		}
		out = append(out, r)
	}
	if len(stableRules) == 0 {
		return nil, fmt.Errorf("%w: no rule sends to the stable backend %s", ErrRoute, stable)
	}
	if split.Header == nil {
		return out, nil
	}
	var tests []gatewayv1.HTTPRouteRule
	for n, i := range stableRules {
		tests = append(tests, headerRule(n, out[i], routeNS, canary, *split.Header))
	}
	if len(out)+len(tests) > maxRules {
		return nil, fmt.Errorf("%w: adding %d test rule(s) to %d rules exceeds the HTTPRoute limit of %d rules", ErrRoute, len(tests), len(out), maxRules)
	}
	for _, t := range tests {
		if len(t.Matches) > maxMatches {
			return nil, fmt.Errorf("%w: test rule %s needs %d matches, above the limit of %d", ErrRoute, *t.Name, len(t.Matches), maxMatches)
		}
	}
	return append(out, tests...), nil
}

// headerRule is the test rule for stable rule src: the same matches, each also
// requiring the test header (so it is more specific than src and wins, whatever the
// path precedence), the same filters, and the canary as its only backend.
func headerRule(n int, src gatewayv1.HTTPRouteRule, routeNS string, canary Backend, h Header) gatewayv1.HTTPRouteRule {
	matches := src.DeepCopy().Matches
	if len(matches) == 0 {
		matches = []gatewayv1.HTTPRouteMatch{{}}
	}
	for i := range matches {
		m := &matches[i]
		if m.Path == nil {
			m.Path = &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/")}
		}
		hm := gatewayv1.HTTPHeaderMatch{Type: ptr.To(gatewayv1.HeaderMatchExact), Name: gatewayv1.HTTPHeaderName(h.Name), Value: h.Value}
		replaced := false
		for j := range m.Headers {
			if strings.EqualFold(string(m.Headers[j].Name), h.Name) {
				m.Headers[j] = hm
				replaced = true
			}
		}
		if !replaced {
			m.Headers = append(m.Headers, hm)
		}
	}
	return gatewayv1.HTTPRouteRule{
		Name:        ptr.To(gatewayv1.SectionName(HeaderRulePrefix + strconv.Itoa(n))),
		Matches:     matches,
		Filters:     src.DeepCopy().Filters,
		BackendRefs: []gatewayv1.HTTPBackendRef{backendRef(routeNS, canary, 1)},
	}
}

// parseSplit reads the split a route's rules carry.
func parseSplit(routeNS string, rules []gatewayv1.HTTPRouteRule, stable, canary Backend) (Split, error) {
	var s Split
	weights := map[int32]bool{}
	var firstStable *gatewayv1.HTTPRouteRule
	for i, r := range rules {
		if isZtcanaryRule(r) {
			continue
		}
		sendsToStable, w := false, int32(0)
		for _, ref := range r.BackendRefs {
			switch {
			case refersTo(ref.BackendObjectReference, routeNS, stable):
				sendsToStable = true
			case refersTo(ref.BackendObjectReference, routeNS, canary):
				w = ptr.Deref(ref.Weight, 1)
			}
		}
		if sendsToStable {
			weights[w] = true
			s.CanaryWeight = w
			if firstStable == nil {
				firstStable = &rules[i]
			}
		}
	}
	if firstStable == nil {
		return Split{}, fmt.Errorf("%w: no rule sends to the stable backend %s", ErrRoute, stable)
	}
	if len(weights) > 1 {
		return Split{}, fmt.Errorf("%w: the rules to the stable backend give the canary different weights", ErrRoute)
	}
	for _, r := range rules {
		if !isZtcanaryRule(r) || string(*r.Name) != HeaderRulePrefix+"0" || len(r.Matches) == 0 {
			continue
		}
		var base []gatewayv1.HTTPHeaderMatch
		if len(firstStable.Matches) > 0 {
			base = firstStable.Matches[0].Headers
		}
		for _, h := range r.Matches[0].Headers {
			if !containsHeader(base, h) {
				s.Header = &Header{Name: string(h.Name), Value: h.Value}
			}
		}
	}
	return s, nil
}

func containsHeader(hs []gatewayv1.HTTPHeaderMatch, h gatewayv1.HTTPHeaderMatch) bool {
	for _, x := range hs {
		if strings.EqualFold(string(x.Name), string(h.Name)) && x.Value == h.Value {
			return true
		}
	}
	return false
}

// restoreRules returns the rules that undo ztcanary's changes. When nobody else
// changed the route since the snapshot (the rules equal once ztcanary's fields are
// stripped from both), that is the snapshot itself, exactly. Otherwise the others'
// changes are kept and only ztcanary's fields are put back: its rules removed, the
// stable and canary backendRefs of the stable rules as the snapshot had them.
func restoreRules(routeNS string, current, snap []gatewayv1.HTTPRouteRule, stable, canary Backend) ([]gatewayv1.HTTPRouteRule, bool) {
	if equality.Semantic.DeepEqual(stripOwned(routeNS, current, stable, canary), stripOwned(routeNS, snap, stable, canary)) {
		return snap, true
	}
	// The snapshot's stable and canary refs, from its first rule to stable.
	var stableW *int32
	var canaryRef *gatewayv1.HTTPBackendRef
	for _, r := range snap {
		found := false
		for _, ref := range r.BackendRefs {
			if refersTo(ref.BackendObjectReference, routeNS, stable) {
				stableW, found = ref.Weight, true
			}
		}
		if !found {
			continue
		}
		for _, ref := range r.BackendRefs {
			if refersTo(ref.BackendObjectReference, routeNS, canary) {
				canaryRef = ref.DeepCopy()
			}
		}
		break
	}
	var out []gatewayv1.HTTPRouteRule
	for _, r := range current {
		if isZtcanaryRule(r) {
			continue
		}
		r = *r.DeepCopy()
		var refs []gatewayv1.HTTPBackendRef
		toStable := false
		for _, ref := range r.BackendRefs {
			switch {
			case refersTo(ref.BackendObjectReference, routeNS, stable):
				ref.Weight = stableW
				toStable = true
				refs = append(refs, ref)
			case refersTo(ref.BackendObjectReference, routeNS, canary):
			default:
				refs = append(refs, ref)
			}
		}
		if toStable {
			if canaryRef != nil {
				refs = append(refs, *canaryRef)
			}
			r.BackendRefs = refs
		}
		out = append(out, r)
	}
	return out, false
}

// stripOwned removes what ztcanary owns from rules: its test rules, the canary refs
// of the stable rules and the stable refs' weights.
func stripOwned(routeNS string, rules []gatewayv1.HTTPRouteRule, stable, canary Backend) []gatewayv1.HTTPRouteRule {
	var out []gatewayv1.HTTPRouteRule
	for _, r := range rules {
		if isZtcanaryRule(r) {
			continue
		}
		r = *r.DeepCopy()
		var refs []gatewayv1.HTTPBackendRef
		toStable := false
		for _, ref := range r.BackendRefs {
			if refersTo(ref.BackendObjectReference, routeNS, stable) {
				toStable = true
				ref.Weight = nil
			}
			refs = append(refs, ref)
		}
		if toStable {
			var kept []gatewayv1.HTTPBackendRef
			for _, ref := range refs {
				if !refersTo(ref.BackendObjectReference, routeNS, canary) {
					kept = append(kept, ref)
				}
			}
			refs = kept
		}
		r.BackendRefs = refs
		out = append(out, r)
	}
	return out
}
