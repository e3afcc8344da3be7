package faultproxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

var cluster *sim.Cluster

func TestMain(m *testing.M) { simtest.Main(m, sim.Options{Nodes: 1, SkipCRDs: true}, &cluster) }

func clientVia(t *testing.T, p *Proxy) kubernetes.Interface {
	t.Helper()
	cfg := p.Config(cluster.Config)
	cfg.QPS, cfg.Burst = 1000, 1000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func start(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	simtest.SkipShort(t, "needs the shared simulated cluster")
	p, err := Start(cluster.Config, cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestWithoutFaultsTheProxyIsTransparent(t *testing.T) {
	p := start(t, Config{})
	c := clientVia(t, p)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "faultproxy-clean"}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}) })
	got, err := c.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
	if err != nil || got.Name != ns.Name {
		t.Fatalf("get through the proxy: %v, %v", got, err)
	}
	s := p.Stats()
	if s.Requests != 2 || s.ByVerb["POST namespaces"] != 1 || s.ByVerb["GET namespaces"] != 1 || len(s.Faults) != 0 {
		t.Fatalf("stats %+v, want one POST and one GET, no fault", s)
	}
}

func TestEachFaultReachesTheClientAsTheAPIWouldSayIt(t *testing.T) {
	ctx := context.Background()
	p := start(t, Config{})
	c := clientVia(t, p)
	node := sim.NodeName(0)
	patch := []byte(`{"metadata":{"labels":{"faultproxy":"x"}}}`)

	if err := p.SetConfig(Config{ErrorRate: 1, Faults: []Fault{Conflict}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{})
	if !apierrors.IsConflict(err) {
		t.Errorf("a write with an injected conflict: %v, want a Conflict", err)
	}
	_, err = c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if !apierrors.IsInternalError(err) {
		t.Errorf("a read cannot conflict, the proxy answers 500 instead: got %v", err)
	}

	// 429 is retried by client-go itself (Retry-After), so read the raw answer.
	if err := p.SetConfig(Config{ErrorRate: 1, Faults: []Fault{TooMany}}); err != nil {
		t.Fatal(err)
	}
	raw := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.CertPool()}}}
	req, _ := http.NewRequest(http.MethodGet, p.URL+"/api/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer "+cluster.Config.BearerToken)
	resp, err := raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var st metav1.Status
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" || json.Unmarshal(body, &st) != nil || st.Reason != metav1.StatusReasonTooManyRequests {
		t.Errorf("429: status %d, Retry-After %q, body %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}

	if err := p.SetConfig(Config{ErrorRate: 1, Faults: []Fault{Drop}}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Do(req.Clone(ctx)); err == nil {
		t.Error("a dropped connection answered")
	}

	if err := p.SetConfig(Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err != nil {
		t.Errorf("faults switched off, still: %v", err)
	}
	s := p.Stats()
	// Go's transport retries an idempotent request once when the connection closes
	// before any answer, so a drop can be drawn twice.
	if s.Faults[Conflict] != 1 || s.Faults[Internal] != 1 || s.Faults[TooMany] != 1 || s.Faults[Drop] < 1 {
		t.Errorf("fault counts %v, want one of each", s.Faults)
	}
}

func TestWatchesAreCutAndClientsSeeTheEnd(t *testing.T) {
	p := start(t, Config{WatchCutAfter: 300 * time.Millisecond})
	c := clientVia(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w, err := c.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for {
		select {
		case _, ok := <-w.ResultChan():
			if !ok {
				if got := p.Stats().Faults[CutWatch]; got != 1 {
					t.Errorf("cut watches %d, want 1", got)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("the watch was never cut")
		}
	}
}

func TestTheSameSeedInjectsTheSameFaults(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	draw := func() []Fault {
		p, err := Start(cluster.Config, Config{ErrorRate: 0.5}, 42)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var out []Fault
		for range 50 {
			out = append(out, p.decide(httptest.NewRequest(http.MethodPatch, "/api/v1/nodes/x", nil), false).fault)
		}
		return out
	}
	a, b := draw(), draw()
	faults := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("draw %d: %q then %q with the same seed", i, a[i], b[i])
		}
		if a[i] != noFaultName {
			faults++
		}
	}
	if faults < 10 || faults > 40 {
		t.Errorf("%d faults in 50 draws at rate 0.5", faults)
	}
}

func TestBadConfigIsRefused(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	for name, cfg := range map[string]Config{
		"error rate above 1":    {ErrorRate: 1.5},
		"negative delay rate":   {DelayRate: -0.1},
		"delay without a bound": {DelayRate: 0.5},
		"unknown fault":         {ErrorRate: 0.1, Faults: []Fault{"418"}},
	} {
		t.Run(name, func(t *testing.T) {
			if p, err := Start(cluster.Config, cfg, 1); err == nil {
				_ = p.Close()
				t.Fatal("accepted")
			}
		})
	}
}

func TestVerbKeyNamesResourceAndSubresource(t *testing.T) {
	for path, want := range map[string]string{
		"/api/v1/nodes":                                        "GET nodes",
		"/api/v1/nodes/n1":                                     "GET nodes",
		"/api/v1/namespaces/a/pods/p/eviction":                 "GET pods/eviction",
		"/apis/ztcanary.io/v1alpha1/revisionupgrades/u/status": "GET revisionupgrades/status",
		"/apis/apps/v1/namespaces/istio-system/daemonsets":     "GET daemonsets",
		"/api":     "GET /api",
		"/healthz": "GET /healthz",
	} {
		if got := verbKey(httptest.NewRequest(http.MethodGet, path, nil), false); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}

func TestKubeconfigCarriesTheCallersToken(t *testing.T) {
	p := start(t, Config{})
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := p.WriteKubeconfig(path, cluster.Config); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatalf("list nodes with the written kubeconfig: %v", err)
	}
}
