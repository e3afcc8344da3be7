package gatewayroutes

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	istioapplyv1 "istio.io/client-go/pkg/applyconfiguration/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const seedVirtualService = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - name: reviews
    match:
    - uri: {prefix: /reviews}
    retries: {attempts: 3, perTryTimeout: 2s}
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
  - name: ratings
    route:
    - destination: {host: ratings}
`

const seedDestinationRule = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

func newVSFixture(t *testing.T) (*VirtualServiceRouter, istioclient.Interface, string) {
	c := simClients(t)
	ic, err := istioclient.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, c, "vs")
	var vs istioapplyv1.VirtualServiceApplyConfiguration
	if err := yaml.Unmarshal([]byte(seedVirtualService), &vs); err != nil {
		t.Fatal(err)
	}
	vs.WithNamespace(ns)
	if _, err := ic.NetworkingV1().VirtualServices(ns).Apply(context.Background(), &vs, metav1.ApplyOptions{FieldManager: "gitops"}); err != nil {
		t.Fatal(err)
	}
	var dr istioapplyv1.DestinationRuleApplyConfiguration
	if err := yaml.Unmarshal([]byte(seedDestinationRule), &dr); err != nil {
		t.Fatal(err)
	}
	dr.WithNamespace(ns)
	if _, err := ic.NetworkingV1().DestinationRules(ns).Apply(context.Background(), &dr, metav1.ApplyOptions{FieldManager: "gitops"}); err != nil {
		t.Fatal(err)
	}
	return &VirtualServiceRouter{
		Istio: ic, Log: zaptest.NewLogger(t), Namespace: ns, Name: "reviews", DestinationRule: "reviews",
		Host: "reviews", StableSubset: "v1", CanarySubset: "v2",
	}, ic, ns
}

func vsJSON(t *testing.T, ic istioclient.Interface, ns string) (spec, http string) {
	t.Helper()
	vs, err := ic.NetworkingV1().VirtualServices(ns).Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := vs.Spec.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	h, err := marshalHTTP(vs.Spec.Http)
	if err != nil {
		t.Fatal(err)
	}
	return string(s), string(h)
}

func TestVirtualServiceStepsAndRestore(t *testing.T) {
	r, ic, ns := newVSFixture(t)
	ctx := testContext(t)
	before, _ := vsJSON(t, ic, ns)
	snap, err := r.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, split := range []Split{
		{Header: &Header{Name: "traffic", Value: "test"}},
		{Header: &Header{Name: "traffic", Value: "test"}, CanaryWeight: 10},
		{CanaryWeight: 50},
		{CanaryWeight: 100},
	} {
		if err := r.SetRoutes(ctx, split); err != nil {
			t.Fatalf("set %v: %v", split, err)
		}
		got, err := r.GetRoutes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := DetectDrift(split, got); len(d) > 0 {
			t.Errorf("%v reads back differently: %v", split, d)
		}
		_, http := vsJSON(t, ic, ns)
		golden(t, "virtualservice/"+strings.NewReplacer(" ", "_", "%", "", ",", "", "=", "-").Replace(split.String())+".json", []byte(http+"\n"))
		if !strings.Contains(http, `"retries":{"attempts":3,"perTryTimeout":"2s"}`) || !strings.Contains(http, `{"name":"ratings","route":[{"destination":{"host":"ratings"}}]}`) {
			t.Errorf("%v: fields of others changed: %s", split, http)
		}
	}
	if err := r.Restore(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if after, _ := vsJSON(t, ic, ns); after != before {
		t.Errorf("restore is not exact:\n%s\nwant\n%s", after, before)
	}
}

func TestVirtualServiceRefusesBadInputWithoutWrite(t *testing.T) {
	r, ic, ns := newVSFixture(t)
	for _, tc := range []struct {
		name   string
		mutate func(*VirtualServiceRouter)
		split  Split
		want   error
		msg    string
	}{
		{"weight above 100", func(*VirtualServiceRouter) {}, Split{CanaryWeight: 120}, ErrInvalid, "outside 0-100"},
		{"canary subset missing from the DestinationRule", func(r *VirtualServiceRouter) { r.CanarySubset = "v3" }, Split{CanaryWeight: 10}, ErrBackend, `defines no subset "v3"`},
		{"missing DestinationRule", func(r *VirtualServiceRouter) { r.DestinationRule = "nope" }, Split{CanaryWeight: 10}, ErrBackend, "not found"},
		{"no route to the stable subset", func(r *VirtualServiceRouter) { r.StableSubset = "v2"; r.CanarySubset = "v1"; r.Host = "details" }, Split{CanaryWeight: 10}, ErrRoute, "no route sends to subset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			rr := *r
			tc.mutate(&rr)
			vs, _ := ic.NetworkingV1().VirtualServices(ns).Get(ctx, "reviews", metav1.GetOptions{})
			err := rr.SetRoutes(ctx, tc.split)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.msg)
			}
			after, _ := ic.NetworkingV1().VirtualServices(ns).Get(ctx, "reviews", metav1.GetOptions{})
			if after.ResourceVersion != vs.ResourceVersion {
				t.Errorf("virtualservice written")
			}
		})
	}
}
