package gatewayroutes

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simnet"
)

// TestSeedUpgradeThroughTraefik drives the seed's traffic steps through a real data
// plane: Traefik serves the HTTPRoute, v1 and v2 answer from network namespaces
// behind Services with hand-made EndpointSlices, and the traffic tester checks that
// the split users get is the split the router set, then that rollback sends
// everything back to stable.
func TestSeedUpgradeThroughTraefik(t *testing.T) {
	c := simClients(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin, err := sim.EnsureTraefik(ctx, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	traefik, err := cluster.StartTraefik(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := traefik.Stop(); err != nil {
			t.Errorf("stop traefik: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(traefik.Log)
			t.Logf("traefik log:\n%s", b)
		}
	})

	ns := newNamespace(t, c, "e2e")
	for i, v := range []string{"v1", "v2"} {
		v := v
		srv := simnet.Start(t, 10+i, 8080, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("x-version", v)
			fmt.Fprintf(w, "reviews %s\n", v)
		}))
		backendService(t, c, ns, "reviews-"+v, srv.IP)
	}
	gcName := "traefik-" + ns
	_, err = c.gw.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: gcName},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: sim.TraefikControllerName},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.gw.GatewayV1().GatewayClasses().Delete(context.Background(), gcName, metav1.DeleteOptions{})
	})
	_, err = c.gw.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "gw"},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: gatewayv1.ObjectName(gcName),
			Listeners:        []gatewayv1.Listener{{Name: "web", Port: gatewayv1.PortNumber(traefik.Port), Protocol: gatewayv1.HTTPProtocolType}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	applyAs(t, c, "gitops", ns, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - name: gw
  rules:
  - name: reviews
    matches:
    - path: {type: PathPrefix, value: /}
    backendRefs:
    - {name: reviews-v1, port: 9080}
`)
	router := &HTTPRouteRouter{
		Kube: c.kube, Gateway: c.gw, Log: zaptest.NewLogger(t), Namespace: ns, Name: "reviews",
		Stable: Backend{Namespace: ns, Name: "reviews-v1", Port: 9080},
		Canary: Backend{Namespace: ns, Name: "reviews-v2", Port: 9080},
	}
	waitReady(ctx, t, router, true)
	snap, err := router.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := mustJSON(t, mustRoute(ctx, t, c, ns).Spec)

	header := &Header{Name: "traffic", Value: "test"}
	type check struct {
		header bool
		weight float64 // expected canary share in percent
	}
	for _, step := range []struct {
		name   string
		apply  func() error
		checks []check
	}{
		{"header rule", func() error { return router.SetRoutes(ctx, Split{Header: header}) }, []check{{true, 100}, {false, 0}}},
		{"weight 10", func() error { return router.SetRoutes(ctx, Split{Header: header, CanaryWeight: 10}) }, []check{{true, 100}, {false, 10}}},
		{"weight 50", func() error { return router.SetRoutes(ctx, Split{Header: header, CanaryWeight: 50}) }, []check{{false, 50}}},
		{"weight 100", func() error { return router.SetRoutes(ctx, Split{CanaryWeight: 100}) }, []check{{false, 100}}},
		{"rollback", func() error { return router.Restore(ctx, snap) }, []check{{false, 0}, {true, 0}}},
	} {
		if err := step.apply(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		waitReady(ctx, t, router, false)
		for _, ch := range step.checks {
			cfg := traffictest.Config{
				URL: traefik.URL + "/", Requests: 1000, Concurrency: 8,
				VersionHeader: "x-version", CanaryVersion: "v2",
				ExpectedCanaryShare: ptr.To(ch.weight / 100),
			}
			if ch.header {
				cfg.HeaderName, cfg.HeaderValue = header.Name, header.Value
			}
			// Traefik applies a route change some milliseconds after it reports
			// status: wait (bounded) until a small sample agrees, then judge a
			// fresh sample of 1000.
			settle(ctx, t, cfg)
			res, err := traffictest.Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s, header %v: v1 %d, v2 %d, success %.3f, canary %.1f%% [%.1f%%, %.1f%%], %.0f req/s",
				step.name, ch.header, count(res, "v1"), count(res, "v2"), res.SuccessRate, 100*res.CanaryShare, 100*res.ShareInterval[0], 100*res.ShareInterval[1], res.RequestsPerSecond)
			if res.SuccessRate != 1 || !*res.Consistent {
				t.Errorf("%s, header %v: success %.3f, canary share %.1f%%, expected %v%% (errors %v)", step.name, ch.header, res.SuccessRate, 100*res.CanaryShare, ch.weight, res.Errors)
			}
		}
	}
	if got := mustJSON(t, mustRoute(ctx, t, c, ns).Spec); got != before {
		t.Errorf("route after rollback:\n%s\nwant\n%s", got, before)
	}
}

func count(r *traffictest.Result, v string) int {
	if s, ok := r.Versions[v]; ok {
		return s.Count
	}
	return 0
}

// settle samples 100 requests until they agree with cfg's expectation, for at most
// 15 seconds.
func settle(ctx context.Context, t *testing.T, cfg traffictest.Config) {
	t.Helper()
	cfg.Requests = 100
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := traffictest.Run(ctx, cfg)
		if err == nil && res.SuccessRate == 1 && *res.Consistent {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("route did not settle in 15s (last sample: %+v, %v)", res, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReady waits until Traefik reports the route Accepted at its generation.
// requireStatus also waits for the first status to appear.
func waitReady(ctx context.Context, t *testing.T, r *HTTPRouteRouter, requireStatus bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		ok, msg, err := r.Ready(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok && (!requireStatus || msg != "no gateway controller reports status on the route") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("route not ready: %s", msg)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func mustRoute(ctx context.Context, t *testing.T, c clients, ns string) *gatewayv1.HTTPRoute {
	t.Helper()
	r, err := c.gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// backendService creates a Service without selector on port 9080 and an
// EndpointSlice pointing at ip:8080, ready, with the Service's port name.
func backendService(t *testing.T, c clients, ns, name, ip string) {
	t.Helper()
	ctx := context.Background()
	_, err := c.kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}
