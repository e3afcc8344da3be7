package gatewayroutes

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
)

func TestHTTPRoutePreview(t *testing.T) {
	ctx := context.Background()
	route := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "reviews"},
		Spec:       gatewayv1.HTTPRouteSpec{Rules: parseRules(t, userRules)},
	}
	gw := gatewayfake.NewSimpleClientset(route)
	r := &HTTPRouteRouter{Gateway: gw, Namespace: "bookinfo", Name: "reviews", Stable: stable, Canary: canary}
	splits := []Split{{Header: test}, {Header: test, CanaryWeight: 50}, {CanaryWeight: 100}}

	t.Run("each split is rendered from the one before, as SetRoutes would write it", func(t *testing.T) {
		p, err := r.Preview(ctx, splits)
		if err != nil {
			t.Fatal(err)
		}
		if p.Kind != "HTTPRoute" || p.Field != "spec.rules" || len(p.After) != len(splits) {
			t.Fatalf("preview = %s %s with %d states, want HTTPRoute spec.rules with %d", p.Kind, p.Field, len(p.After), len(splits))
		}
		before, _ := json.Marshal(route.Spec.Rules)
		if string(p.Before) != string(before) {
			t.Errorf("before = %s, want the stored rules %s", p.Before, before)
		}
		rules := route.Spec.Rules
		for i, s := range splits {
			if rules, err = renderRules("bookinfo", rules, stable, canary, s); err != nil {
				t.Fatal(err)
			}
			want, _ := json.Marshal(rules)
			if string(p.After[i]) != string(want) {
				t.Errorf("after split %d (%s) = %s, want %s", i, s, p.After[i], want)
			}
		}
		stored, err := gw.GatewayV1().HTTPRoutes("bookinfo").Get(ctx, "reviews", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := json.Marshal(stored.Spec.Rules); string(got) != string(before) {
			t.Errorf("preview changed the stored route: %s", got)
		}
	})
	t.Run("a weight outside 0-100 is refused", func(t *testing.T) {
		if _, err := r.Preview(ctx, []Split{{CanaryWeight: 120}}); !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v, want ErrInvalid", err)
		}
	})
	t.Run("a missing route is named", func(t *testing.T) {
		missing := &HTTPRouteRouter{Gateway: gw, Namespace: "bookinfo", Name: "nope", Stable: stable, Canary: canary}
		_, err := missing.Preview(ctx, splits)
		if !errors.Is(err, ErrRoute) || err.Error() != "route not usable: httproute bookinfo/nope not found" {
			t.Errorf("err = %v", err)
		}
	})
}
