package gatewayroutes

import (
	"errors"
	"flag"
	"path/filepath"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	goldenfile "github.com/ztcanary/ztcanary/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldenfile.Check(t, filepath.Join("testdata", name), string(got), *update, "the test")
}

var (
	stable = Backend{Namespace: "bookinfo", Name: "reviews-v1", Port: 9080}
	canary = Backend{Namespace: "bookinfo", Name: "reviews-v2", Port: 9080}
	remote = Backend{Namespace: "bookinfo-canary", Name: "reviews", Port: 9080}
	test   = &Header{Name: "traffic", Value: "test"}
)

// userRules is a route as someone else wrote it: a rule to stable with a path match
// and a filter, a rule to another service, and a redirect rule.
const userRules = `
- name: reviews
  matches:
  - path: {type: PathPrefix, value: /reviews}
    headers:
    - {type: Exact, name: x-env, value: prod}
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{name: x-from, value: gitops}]
  backendRefs:
  - {group: "", kind: Service, name: reviews-v1, port: 9080, weight: 1}
- matches:
  - path: {type: PathPrefix, value: /ratings}
  backendRefs:
  - {group: "", kind: Service, name: ratings, port: 9080, weight: 1}
- matches:
  - path: {type: Exact, value: /old}
  filters:
  - type: RequestRedirect
    requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /reviews}, statusCode: 302}
`

func parseRules(t *testing.T, s string) []gatewayv1.HTTPRouteRule {
	t.Helper()
	var rules []gatewayv1.HTTPRouteRule
	if err := yaml.UnmarshalStrict([]byte(s), &rules); err != nil {
		t.Fatal(err)
	}
	return rules
}

func TestRenderRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		canary Backend
		steps  []Split
	}{
		{"header rule copies the stable rule's matches and filters", canary, []Split{{Header: test}}},
		{"weight 10 keeps the test rule and other rules", canary, []Split{{Header: test}, {Header: test, CanaryWeight: 10}}},
		{"weight 50 without header removes the test rule", canary, []Split{{Header: test, CanaryWeight: 10}, {CanaryWeight: 50}}},
		{"weight 100", canary, []Split{{CanaryWeight: 100}}},
		{"cross-namespace canary names its namespace", remote, []Split{{Header: test, CanaryWeight: 10}}},
		{"repeating a step adds no duplicate test rule", canary, []Split{{Header: test}, {Header: test}, {Header: test, CanaryWeight: 10}, {Header: test, CanaryWeight: 10}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := parseRules(t, userRules)
			var err error
			for _, s := range tc.steps {
				if rules, err = renderRules("bookinfo", rules, stable, tc.canary, s); err != nil {
					t.Fatal(err)
				}
				got, err := parseSplit("bookinfo", rules, stable, tc.canary)
				if err != nil {
					t.Fatal(err)
				}
				if d := DetectDrift(s, got); len(d) > 0 {
					t.Errorf("the rendered rules do not read back as %v: %v", s, d)
				}
			}
			out, err := yaml.Marshal(rules)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("render", filepath.Base(t.Name())+".yaml"), out)
		})
	}
}

func TestRenderRulesRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules string
		split Split
		want  error
	}{
		{"weight above 100 is refused", userRules, Split{CanaryWeight: 101}, ErrInvalid},
		{"negative weight is refused", userRules, Split{CanaryWeight: -1}, ErrInvalid},
		{"header without a name is refused", userRules, Split{Header: &Header{Value: "x"}}, ErrInvalid},
		{"route without a rule to stable is refused", "- backendRefs: [{name: other, port: 80}]\n", Split{CanaryWeight: 10}, ErrRoute},
		{"stable on another port is not the stable backend", "- backendRefs: [{name: reviews-v1, port: 80}]\n", Split{CanaryWeight: 10}, ErrRoute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderRules("bookinfo", parseRules(t, tc.rules), stable, canary, tc.split)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDetectDrift(t *testing.T) {
	for _, tc := range []struct {
		name      string
		want, got Split
		drifts    int
	}{
		{"same split is no drift", Split{Header: test, CanaryWeight: 10}, Split{Header: &Header{"traffic", "test"}, CanaryWeight: 10}, 0},
		{"reverted weight is drift", Split{CanaryWeight: 50}, Split{CanaryWeight: 0}, 1},
		{"removed test rule is drift", Split{Header: test}, Split{}, 1},
		{"test rule left behind is drift", Split{}, Split{Header: test}, 1},
		{"changed header value is drift", Split{Header: test}, Split{Header: &Header{"traffic", "other"}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := DetectDrift(tc.want, tc.got); len(d) != tc.drifts {
				t.Errorf("got %d drifts %v, want %d", len(d), d, tc.drifts)
			}
		})
	}
}
