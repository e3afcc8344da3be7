package seed_test

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// cluster is shared by the tests that need one: a control plane and three workers.
var cluster *sim.Cluster

const nodes = 4

func TestMain(m *testing.M) { simtest.Main(m, sim.Options{Nodes: nodes, SkipCRDs: true}, &cluster) }

func workers() []string {
	var out []string
	for i := 1; i < nodes; i++ {
		out = append(out, sim.NodeName(i))
	}
	return out
}

func newClient(t *testing.T) client.Client {
	t.Helper()
	simtest.SkipShort(t, "needs the shared simulated cluster")
	c, err := client.New(cluster.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// TestChartsRenderTheRevisionedObjects checks what the seed gets from Istio's charts,
// without a cluster: the names, selectors and trust that ztcanary relies on come from
// the charts themselves.
func TestChartsRenderTheRevisionedObjects(t *testing.T) {
	simtest.SkipShort(t, "renders with istio-render, a built binary")
	ctx := context.Background()
	const rev = "1-18-1"
	zt, err := seed.Render(ctx, seed.ZtunnelRelease(rev))
	if err != nil {
		t.Fatal(err)
	}
	ds := seed.Find(zt, "DaemonSet", "ztunnel-"+rev)
	if ds == nil {
		t.Fatalf("ztunnel chart: no DaemonSet ztunnel-%s among %s", rev, kinds(zt))
	}
	if got := ds.GetAnnotations()[seed.RevisionKey]; got != rev {
		t.Errorf("ztunnel DaemonSet annotation istio.io/rev = %q, want %q", got, rev)
	}
	sel, _, _ := unstructured.NestedStringMap(ds.Object, "spec", "template", "spec", "nodeSelector")
	if sel[seed.RevisionKey] != rev || sel["kubernetes.io/os"] != "linux" {
		t.Errorf("ztunnel nodeSelector = %v, want istio.io/rev=%s and kubernetes.io/os=linux", sel, rev)
	}
	if sa, _, _ := unstructured.NestedString(ds.Object, "spec", "template", "spec", "serviceAccountName"); sa != "ztunnel-"+rev || seed.Find(zt, "ServiceAccount", sa) == nil {
		t.Errorf("ztunnel runs as %q, want its own rendered ServiceAccount ztunnel-%s", sa, rev)
	}

	istiod, err := seed.Render(ctx, seed.IstiodRelease(rev))
	if err != nil {
		t.Fatal(err)
	}
	u := seed.Find(istiod, "Deployment", "istiod-"+rev)
	if u == nil {
		t.Fatalf("istiod chart: no Deployment istiod-%s among %s", rev, kinds(istiod))
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &d); err != nil {
		t.Fatal(err)
	}
	if v, _ := envValue(d.Spec.Template.Spec.Containers[0], "CA_TRUSTED_NODE_ACCOUNTS"); v != "istio-system/ztunnel-"+rev {
		t.Errorf("istiod CA_TRUSTED_NODE_ACCOUNTS = %q, want istio-system/ztunnel-%s", v, rev)
	}
	// The injector is rendered, and deliberately not installed.
	mwc := seed.Find(istiod, "MutatingWebhookConfiguration", "istio-sidecar-injector-"+rev)
	if mwc == nil {
		t.Fatalf("istiod chart: no injector webhook among %s", kinds(istiod))
	}
	if seed.Installed(mwc) || !seed.Installed(u) {
		t.Errorf("Installed(webhook) = %v, Installed(istiod) = %v; want false, true", seed.Installed(mwc), seed.Installed(u))
	}

	cni, err := seed.Render(ctx, seed.CNIRelease())
	if err != nil {
		t.Fatal(err)
	}
	if seed.Find(cni, "DaemonSet", "istio-cni-node") == nil {
		t.Errorf("cni chart: no DaemonSet istio-cni-node among %s", kinds(cni))
	}

	// Renders are cached per process and handed out as copies.
	again, err := seed.Render(ctx, seed.ZtunnelRelease(rev))
	if err != nil {
		t.Fatal(err)
	}
	again[0].SetName("changed")
	if zt[0].GetName() == "changed" {
		t.Error("Render handed out the cached objects themselves")
	}
}

func TestRenderRefusesBadValuesClearly(t *testing.T) {
	simtest.SkipShort(t, "renders with istio-render, a built binary")
	for _, tc := range []struct {
		name string
		r    seed.Release
		want string
	}{
		{"an unknown chart", seed.Release{Chart: "istio-ingress"}, `-chart "istio-ingress": want one of base, cni, gateway, istiod, ztunnel`},
		{"a malformed --set", seed.Release{Chart: seed.ChartZtunnel, Set: []string{"a[=b"}}, `-set "a[=b"`},
		{"an unknown profile", seed.Release{Chart: seed.ChartZtunnel, Set: []string{"profile=nope"}}, "unknown profile nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := seed.Render(context.Background(), tc.r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}

// TestInstallAppliesIstioChartsToTheCluster installs the seed topology from the
// rendered charts and checks the API server took them as an operator's `helm
// install` leaves them, and that they run where they should.
func TestInstallAppliesIstioChartsToTheCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newClient(t)
	const stable, canary = "1-18-0", "1-18-1"
	if err := seed.Install(ctx, c, workers(), stable, canary); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []string{stable, canary} {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: seed.IstioNamespace, Name: seed.ZtunnelName(rev)}, &ds); err != nil {
			t.Fatal(err)
		}
		if ds.Annotations[seed.RevisionKey] != rev || ds.Spec.Template.Labels["app"] != "ztunnel" || ds.Spec.Template.Spec.NodeSelector[seed.RevisionKey] != rev {
			t.Errorf("DaemonSet %s: annotation %v, pod labels %v, nodeSelector %v", ds.Name, ds.Annotations, ds.Spec.Template.Labels, ds.Spec.Template.Spec.NodeSelector)
		}
		if !managedBy(ds.ManagedFields, seed.FieldManager) {
			t.Errorf("DaemonSet %s is not server-side applied by %s: %v", ds.Name, seed.FieldManager, ds.ManagedFields)
		}
		var sa corev1.ServiceAccount
		if err := c.Get(ctx, client.ObjectKey{Namespace: seed.IstioNamespace, Name: ds.Spec.Template.Spec.ServiceAccountName}, &sa); err != nil {
			t.Errorf("ztunnel %s ServiceAccount: %v", rev, err)
		}
		var d appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: seed.IstioNamespace, Name: seed.IstiodName(rev)}, &d); err != nil {
			t.Fatal(err)
		}
		if v, _ := envValue(d.Spec.Template.Spec.Containers[0], "CA_TRUSTED_NODE_ACCOUNTS"); v != seed.IstioNamespace+"/"+seed.ZtunnelName(rev) {
			t.Errorf("istiod %s trusts %q", d.Name, v)
		}
		var mwc unstructured.Unstructured
		mwc.SetAPIVersion("admissionregistration.k8s.io/v1")
		mwc.SetKind("MutatingWebhookConfiguration")
		if err := c.Get(ctx, client.ObjectKey{Name: "istio-sidecar-injector-" + rev}, &mwc); !apierrors.IsNotFound(err) {
			t.Errorf("injector webhook of %s: err = %v, want NotFound (not installed)", rev, err)
		}
	}
	// Every worker runs the stable ztunnel and nothing of the canary; istio-cni runs
	// on every node, the tainted control plane included (it tolerates everything).
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(seed.IstioNamespace)); err != nil {
		t.Fatal(err)
	}
	ztunnels, cni := map[string]string{}, map[string]bool{}
	for _, p := range pods.Items {
		switch {
		case p.Labels["app"] == "ztunnel":
			ztunnels[p.Spec.NodeName] += p.Annotations[seed.RevisionKey]
		case p.Labels["k8s-app"] == "istio-cni-node":
			cni[p.Spec.NodeName] = true
		}
	}
	for _, w := range workers() {
		if ztunnels[w] != stable {
			t.Errorf("node %s runs ztunnel %q, want %s alone", w, ztunnels[w], stable)
		}
	}
	if len(ztunnels) != len(workers()) {
		t.Errorf("ztunnel pods on %v, want the workers only", ztunnels)
	}
	if len(cni) != nodes {
		t.Errorf("istio-cni pods on %d nodes, want %d", len(cni), nodes)
	}
}

func TestInstallRefusesBadInputAndChangesNothing(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	labels := func() string {
		var list corev1.NodeList
		if err := c.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range list.Items {
			out = append(out, n.Name+"="+n.Labels[seed.RevisionKey])
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name      string
		nodes     []string
		revisions []string
		want      string
	}{
		{"no revision", workers(), nil, "seed: no revision given"},
		{"a revision with dots", workers(), []string{"1.20.0"}, `revision 0 "1.20.0" is not a DNS label`},
		{"a revision given twice", workers(), []string{"1-20-0", "1-20-0"}, `revision "1-20-0" is given twice`},
		{"an unknown node", []string{"ambient-worker", "nowhere"}, []string{"1-20-0"}, "seed: node nowhere does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := labels()
			err := seed.Install(ctx, c, tc.nodes, tc.revisions...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
			if after := labels(); after != before {
				t.Errorf("node labels changed from %s to %s", before, after)
			}
			var d appsv1.Deployment
			if err := c.Get(ctx, client.ObjectKey{Namespace: seed.IstioNamespace, Name: seed.IstiodName("1-20-0")}, &d); !apierrors.IsNotFound(err) {
				t.Errorf("istiod-1-20-0: err = %v, want NotFound", err)
			}
		})
	}
}

func managedBy(fields []metav1.ManagedFieldsEntry, manager string) bool {
	for _, f := range fields {
		if f.Manager == manager && f.Operation == metav1.ManagedFieldsOperationApply {
			return true
		}
	}
	return false
}

func kinds(objs []*unstructured.Unstructured) string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetKind()+"/"+o.GetName())
	}
	return strings.Join(out, " ")
}
