package deploy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

const (
	fromRev   = "1-18-0"
	toRev     = "1-18-1"
	namespace = "ztcanary-system"
	account   = "ztcanary-orchestrator"
)

func newClient(t *testing.T, kubeconfig string) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, ztv1.AddToScheme, gatewayv1.Install} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// apply server-side applies objs (dry run off), CRDs first, waiting until they are
// Established, then namespaces, then the rest.
func apply(t *testing.T, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	rank := func(o *unstructured.Unstructured) int {
		switch o.GetKind() {
		case "CustomResourceDefinition":
			return 0
		case "Namespace":
			return 1
		}
		return 2
	}
	for r := 0; r <= 2; r++ {
		for _, o := range objs {
			if rank(o) != r {
				continue
			}
			if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o.DeepCopy()), client.FieldOwner("ztcanary-deploy-test"), client.ForceOwnership); err != nil {
				t.Fatalf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
		if r == 0 {
			for _, o := range objs {
				if o.GetKind() == "CustomResourceDefinition" {
					waitEstablished(t, c, o.GetName())
				}
			}
		}
	}
}

func waitEstablished(t *testing.T, c client.Client, name string) {
	t.Helper()
	poll(t, "CRD "+name+" to be Established", time.Minute, func(ctx context.Context) (bool, error) {
		crd := &unstructured.Unstructured{}
		crd.SetAPIVersion("apiextensions.k8s.io/v1")
		crd.SetKind("CustomResourceDefinition")
		if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
}

func poll(t *testing.T, what string, timeout time.Duration, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func readSamples(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, path := range samples(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(b, &u.Object); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, u)
	}
	return out
}

// TestSimApplyEverything applies the kustomize build of deploy/ and every sample
// upgrade to the simulated cluster (real API server, real CRDs and admission),
// server-side and for real, and checks each is stored and that the orchestrator
// Deployment and agent DaemonSet get their pods.
func TestSimApplyEverything(t *testing.T) {
	cl := simtest.Start(t, sim.Options{Nodes: 3})
	c := newClient(t, cl.Kubeconfig)
	ctx := context.Background()
	objs := build(t, ".")
	apply(t, c, objs)
	apply(t, c, readSamples(t))
	for _, o := range append(objs, readSamples(t)...) {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Errorf("%s %s/%s was not stored: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	// The samples are stored with the CRD's defaults.
	var list ztv1.RevisionUpgradeList
	if err := c.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(samples(t)) {
		t.Errorf("%d RevisionUpgrades stored, want %d", len(list.Items), len(samples(t)))
	}
	for _, u := range list.Items {
		if u.Spec.NodeLabel != "istio.io/rev" || u.Spec.Ztunnel.Namespace != "istio-system" || u.Spec.StepTimeout == nil {
			t.Errorf("%s stored without the CRD's defaults: %+v", u.Name, u.Spec)
		}
	}
	poll(t, "the orchestrator's two replicas and an agent on every node", 2*time.Minute, func(ctx context.Context) (bool, error) {
		var d appsv1.Deployment
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "ztcanary-orchestrator"}, &d); err != nil {
			return false, err
		}
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "ztcanary-agent"}, &ds); err != nil {
			return false, err
		}
		return d.Status.ReadyReplicas == 2 && ds.Status.DesiredNumberScheduled == 3 && ds.Status.NumberReady == 3, nil
	})
	// Applying again changes nothing: the manifests are stable under server-side apply.
	var before appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "ztcanary-orchestrator"}, &before); err != nil {
		t.Fatal(err)
	}
	apply(t, c, objs)
	var after appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "ztcanary-orchestrator"}, &after); err != nil {
		t.Fatal(err)
	}
	if after.Generation != before.Generation {
		t.Errorf("re-applying changed the Deployment's spec: generation %d → %d", before.Generation, after.Generation)
	}
}

// impersonating writes a kubeconfig that acts as the orchestrator's ServiceAccount
// (as a pod using its token would), through the admin's right to impersonate.
func impersonating(t *testing.T, admin string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = "system:serviceaccount:" + namespace + ":" + account
		ai.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
	}
	path := filepath.Join(t.TempDir(), "orchestrator.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// routeWorld adds what the upgrade's route needs: namespace bookinfo with the
// HTTPRoute to the stable productpage, the productpage Services with ready
// endpoints, and ReferenceGrants for the cross-namespace backends.
func routeWorld(t *testing.T, c client.Client) {
	t.Helper()
	ctx := context.Background()
	create := func(o client.Object) {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookinfo"}})
	for i, rev := range []string{fromRev, toRev} {
		ns := seed.AppNamespace(rev)
		create(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "productpage"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, Protocol: corev1.ProtocolTCP}}}})
		create(&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: "productpage", Labels: map[string]string{discoveryv1.LabelServiceName: "productpage"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{fmt.Sprintf("10.244.%d.10", i+1)}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](9080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		})
		create(&gatewayv1.ReferenceGrant{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bookinfo-routes"},
			Spec: gatewayv1.ReferenceGrantSpec{
				From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: "bookinfo"}},
				To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
			},
		})
	}
	create(&gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "bookinfo"},
		Spec: gatewayv1.HTTPRouteSpec{Rules: []gatewayv1.HTTPRouteRule{{
			Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/productpage")}}},
			BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
				Namespace: ptr.To(gatewayv1.Namespace(seed.AppNamespace(fromRev))), Name: "productpage", Port: ptr.To(gatewayv1.PortNumber(9080)),
			}}}},
		}}},
	})
}

// shopRoute adds an application canary done with Istio's API (namespace shop: the
// reviews Service, its v1 and v2 Deployments, a DestinationRule with both subsets
// and a VirtualService to v1) and returns the route shifting it.
func shopRoute(t *testing.T, c client.Client) *ztv1.RouteSpec {
	t.Helper()
	ctx := context.Background()
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"}, Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}}},
	}
	for _, v := range []string{"v1", "v2"} {
		d := seed.Deployment("shop", "reviews-"+v, 1)
		l := map[string]string{"app": "reviews", "version": v}
		d.Spec.Selector.MatchLabels, d.Spec.Template.Labels = l, l
		objs = append(objs, d)
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
	for _, doc := range []string{`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: reviews
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
`} {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, u); err != nil {
			t.Fatalf("create %s: %v", u.GetKind(), err)
		}
	}
	return &ztv1.RouteSpec{
		VirtualService: &ztv1.VirtualServiceRef{Namespace: "shop", Name: "reviews", DestinationRule: "reviews"},
		Stable:         ztv1.BackendRef{Namespace: "shop", Name: "reviews", Port: 9080, Subset: "v1"},
		Canary:         ztv1.BackendRef{Namespace: "shop", Name: "reviews", Port: 9080, Subset: "v2"},
	}
}

// sidecarWorld adds what a Sidecar upgrade's preflight needs: an injector per
// revision (MutatingWebhookConfigurations shaped like Istio's chart renders them,
// pointing at no server and ignoring failures) and a namespace the from injector
// serves, with one Deployment.
func sidecarWorld(t *testing.T, c client.Client) {
	t.Helper()
	ctx := context.Background()
	for _, rev := range []string{fromRev, toRev} {
		hook := &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-" + rev, Labels: map[string]string{"istio.io/rev": rev}},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name: "rev.namespace.sidecar-injector.istio.io",
				ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
					Namespace: seed.IstioNamespace, Name: "istiod-" + rev, Path: ptr.To("/inject")}},
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "istio.io/rev", Operator: metav1.LabelSelectorOpIn, Values: []string{rev}},
					{Key: "istio-injection", Operator: metav1.LabelSelectorOpDoesNotExist},
				}},
				FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
				SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
				AdmissionReviewVersions: []string{"v1"},
				TimeoutSeconds:          ptr.To[int32](1),
			}},
		}
		if err := c.Create(ctx, hook); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sidecars", Labels: map[string]string{"istio.io/rev": fromRev}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, seed.Deployment("sidecars", "app", 1)); err != nil {
		t.Fatal(err)
	}
}

func routeUpgrade(name, from, to string, steps ...ztv1.Step) *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: ztv1.RevisionUpgradeSpec{
			From: from, To: to, NodeStrategy: ztv1.NodeStrategyDrain,
			Workloads: []ztv1.WorkloadPin{{Namespace: seed.AppNamespace(from), Revision: from}, {Namespace: seed.AppNamespace(to), Revision: to}},
			Route: &ztv1.RouteSpec{
				HTTPRoute: &ztv1.ObjectRef{Namespace: "bookinfo", Name: "bookinfo"},
				Stable:    ztv1.BackendRef{Namespace: seed.AppNamespace(from), Name: "productpage", Port: 9080},
				Canary:    ztv1.BackendRef{Namespace: seed.AppNamespace(to), Name: "productpage", Port: 9080},
			},
			Steps:       steps,
			StepTimeout: &metav1.Duration{Duration: 3 * time.Minute},
		},
	}
}

func waitPhase(t *testing.T, c client.Client, name string, timeout time.Duration, done func(*ztv1.RevisionUpgrade) bool) {
	t.Helper()
	u := &ztv1.RevisionUpgrade{}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
			return false, err
		}
		return done(u), nil
	})
	if err != nil {
		t.Fatalf("upgrade %s: %v; phase %s, stage %s: %s", name, err, u.Status.Phase, u.Status.StepStage, u.Status.Message)
	}
}

// TestSimOrchestratorRunsWithItsRBAC runs the real orchestrator as its
// ServiceAccount, bound only by deploy/'s roles, with the Deployment's own
// arguments: leader election through the Lease, probes and metrics answer, an
// upgrade with a route and Drain succeeds, a second one is aborted and rolls back,
// and nothing in its logs is forbidden. It is the proof that the roles are enough.
func TestSimOrchestratorRunsWithItsRBAC(t *testing.T) {
	cl := simtest.Start(t, sim.Options{Nodes: 5})
	admin := newClient(t, cl.Kubeconfig)
	ctx := context.Background()
	objs := build(t, ".")
	apply(t, admin, objs)
	var workers []string
	for i := 1; i < 5; i++ {
		workers = append(workers, sim.NodeName(i))
	}
	if err := seed.Install(ctx, admin, workers, fromRev, toRev); err != nil {
		t.Fatal(err)
	}
	routeWorld(t, admin)

	kubeconfig := impersonating(t, cl.Kubeconfig)
	as := newClient(t, kubeconfig)
	err := as.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookinfo"}})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("the orchestrator's account may delete a namespace (err %v): impersonation is not in effect", err)
	}

	logs, metricsPort, healthPort := startOrchestratorAsDeployed(t, objs, kubeconfig)

	for _, path := range []string{"/healthz", "/readyz"} {
		url := fmt.Sprintf("http://127.0.0.1:%d%s", healthPort, path)
		poll(t, url+" to answer 200", time.Minute, func(context.Context) (bool, error) { return httpOK(url), nil })
	}
	poll(t, "a leader in Lease "+namespace+"/ztcanary-orchestrator", time.Minute, func(ctx context.Context) (bool, error) {
		var l coordinationv1.Lease
		err := admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "ztcanary-orchestrator"}, &l)
		return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "", client.IgnoreNotFound(err)
	})

	header := &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}
	weight := func(w int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(w)} }
	forward := routeUpgrade("forward", fromRev, toRev,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: header},
		ztv1.Step{Nodes: intstr.FromString("50%"), Traffic: weight(50)},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100)})
	if err := admin.Create(ctx, forward); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, admin, "forward", 4*time.Minute, func(u *ztv1.RevisionUpgrade) bool { return u.Status.Phase == ztv1.PhaseSucceeded })

	// The way back, with a VirtualService route, aborted after its first wave:
	// restores the route, nodes and pins, and evicts the canary pods from the
	// restored node.
	back := routeUpgrade("back", toRev, fromRev,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: weight(10), Pause: &ztv1.Pause{}},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100)})
	back.Spec.Route = shopRoute(t, admin)
	if err := admin.Create(ctx, back); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, admin, "back", 3*time.Minute, func(u *ztv1.RevisionUpgrade) bool {
		return u.Status.Phase == ztv1.PhasePaused && u.Status.StepStage == "Pausing"
	})
	patch := []byte(`{"metadata":{"annotations":{"` + ztv1.AnnotationAbort + `":"true"}}}`)
	if err := admin.Patch(ctx, &ztv1.RevisionUpgrade{ObjectMeta: metav1.ObjectMeta{Name: "back"}}, client.RawPatch("application/merge-patch+json", patch)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, admin, "back", 3*time.Minute, func(u *ztv1.RevisionUpgrade) bool { return u.Status.Phase == ztv1.PhaseRolledBack })

	// Sidecar mode: relabel a namespace and restart its workload; the new pod gets
	// no proxy (no injector runs here), which fails the gate and rolls back.
	sidecarWorld(t, admin)
	ns := intstr.FromString("100%")
	sidecar := &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "sidecars"},
		Spec: ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Mode: ztv1.ModeSidecar,
			Steps: []ztv1.Step{{Namespaces: &ns}}, StepTimeout: &metav1.Duration{Duration: time.Minute}},
	}
	if err := admin.Create(ctx, sidecar); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, admin, "sidecars", 3*time.Minute, func(u *ztv1.RevisionUpgrade) bool {
		return u.Status.Phase == ztv1.PhaseRolledBack && len(u.Status.Namespaces) == 1 && len(u.Status.Namespaces[0].Workloads) == 1
	})

	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	if body := httpGet(t, metrics); !strings.Contains(body, "ztcanary_rollbacks_total") {
		t.Errorf("%s lacks ztcanary_rollbacks_total", metrics)
	}
	var events corev1.EventList
	if err := admin.List(ctx, &events); err != nil {
		t.Fatal(err)
	}
	recorded := 0
	for _, e := range events.Items {
		if e.InvolvedObject.Kind == "RevisionUpgrade" {
			recorded++
		}
	}
	if recorded == 0 {
		t.Error("no Event recorded on the upgrades")
	}
	var forbidden []string
	for _, line := range strings.Split(logs(), "\n") {
		if strings.Contains(strings.ToLower(line), "forbidden") {
			forbidden = append(forbidden, line)
		}
	}
	if len(forbidden) > 0 {
		t.Errorf("the orchestrator was refused by RBAC %d times; first: %s", len(forbidden), forbidden[0])
	}
}

func httpOK(url string) bool {
	resp, err := http.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startOrchestratorAsDeployed runs the orchestrator with the arguments of deploy/'s
// Deployment, its addresses moved to free loopback ports, as the account of
// kubeconfig. It returns its logs so far and its metrics and health ports.
func startOrchestratorAsDeployed(t *testing.T, objs []*unstructured.Unstructured, kubeconfig string) (logs func() string, metricsPort, healthPort int) {
	t.Helper()
	var d appsv1.Deployment
	typed(t, find(t, objs, "Deployment", "ztcanary-orchestrator"), &d)
	metricsPort, healthPort = freePort(t), freePort(t)
	var args []string
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		switch {
		case strings.HasPrefix(a, "--metrics-bind-address="):
			a = fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort)
		case strings.HasPrefix(a, "--health-probe-bind-address="):
			a = fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", healthPort)
		}
		args = append(args, a)
	}
	// In a pod the namespace comes from the ServiceAccount's mount.
	args = append(args, "--kubeconfig="+kubeconfig, "--leader-election-namespace="+namespace)
	return startOrchestrator(t, args...), metricsPort, healthPort
}

// startOrchestrator builds and runs the orchestrator; it is killed by PID when the
// test ends. It returns a function reading its logs so far.
func startOrchestrator(t *testing.T, args ...string) func() string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ztcanary-orchestrator")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ztcanary/ztcanary/cmd/ztcanary-orchestrator").CombinedOutput(); err != nil {
		t.Fatalf("build orchestrator: %v\n%s", err, out)
	}
	var mu sync.Mutex
	var buf bytes.Buffer
	cmd := exec.Command(bin, args...)
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := func() string { mu.Lock(); defer mu.Unlock(); return buf.String() }
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(logs()), "\n")
			t.Logf("orchestrator (pid %d) logs, last lines:\n%s", cmd.Process.Pid, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return logs
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
