package cli

import (
	"bytes"
	"context"
	"flag"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"

	goldenfile "github.com/ztcanary/ztcanary/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got string) {
	t.Helper()
	goldenfile.Check(t, filepath.Join("testdata", name), got, *update, "the test")
}

// The fixed clock of the unit tests.
var testNow = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

const (
	fromRev = "1-18-0"
	toRev   = "1-18-1"
	istioNS = "istio-system"
)

// fakeCluster is the seed topology in fake clients: a control plane and four
// workers on fromRev (worker3 cordoned), istiod and ztunnel per revision, the
// workload namespaces, and the reviews route with its backends.
type fakeCluster struct {
	objs   []client.Object
	routes []runtime.Object
}

func seedWorld() *fakeCluster {
	f := &fakeCluster{}
	f.objs = append(f.objs, testNode("ambient-control-plane", "", false))
	for _, n := range []string{"ambient-worker", "ambient-worker2", "ambient-worker3", "ambient-worker4"} {
		f.objs = append(f.objs, testNode(n, fromRev, n == "ambient-worker3"))
	}
	f.objs = append(f.objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: istioNS}})
	trusted := istioNS + "/ztunnel," + istioNS + "/ztunnel-" + toRev
	for i, rev := range []string{fromRev, toRev} {
		sa := "ztunnel"
		if i > 0 {
			sa = "ztunnel-" + rev
		}
		f.objs = append(f.objs,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: istioNS, Name: sa}},
			testIstiod(rev, trusted), testZtunnel(rev, sa),
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookinfo-" + rev, Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}},
		)
	}
	for _, ns := range []string{"bookinfo-" + fromRev, "bookinfo-" + toRev} {
		f.objs = append(f.objs,
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reviews"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, Protocol: corev1.ProtocolTCP}}}},
			&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reviews", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.10"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}}},
		)
	}
	f.routes = append(f.routes, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo-" + fromRev, Name: "reviews"},
		Spec: gatewayv1.HTTPRouteSpec{Rules: []gatewayv1.HTTPRouteRule{{
			Matches:     []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/reviews")}}},
			BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews", Port: ptr.To(gatewayv1.PortNumber(9080))}}}},
		}}},
	})
	// The canary Service is in another namespace: a ReferenceGrant allows it.
	f.routes = append(f.routes, &gatewayv1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo-" + toRev, Name: "reviews"},
		Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: gatewayv1.Namespace("bookinfo-" + fromRev)}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
		},
	})
	return f
}

func testNode(name, rev string, cordoned bool) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		Spec:   corev1.NodeSpec{Unschedulable: cordoned},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	if rev != "" {
		n.Labels[mesh.RevisionKey] = rev
	}
	return n
}

func testIstiod(rev, trusted string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: istioNS, Name: "istiod-" + rev, Labels: map[string]string{"app": "istiod", mesh.RevisionKey: rev}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "discovery", Env: []corev1.EnvVar{{Name: "CA_TRUSTED_NODE_ACCOUNTS", Value: trusted}},
		}}}}},
		Status: appsv1.DeploymentStatus{AvailableReplicas: 1, Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue}}},
	}
}

func testZtunnel(rev, sa string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: istioNS, Name: "ztunnel-" + rev, Annotations: map[string]string{mesh.RevisionKey: rev}},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "ztunnel"}, Annotations: map[string]string{mesh.RevisionKey: rev}},
			Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeSelector: map[string]string{mesh.RevisionKey: rev}},
		}},
		Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, NumberReady: 2},
	}
}

// env builds the fake clients over the world; the controller-runtime client holds
// every Kubernetes object, the clientsets the ones the routers read.
func (f *fakeCluster) env(t *testing.T) (*Env, client.Client) {
	t.Helper()
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(f.objs...).WithStatusSubresource(&ztv1.RevisionUpgrade{}).Build()
	var core []runtime.Object
	for _, o := range f.objs {
		switch o.(type) {
		case *corev1.Service, *discoveryv1.EndpointSlice:
			core = append(core, o)
		}
	}
	cl := &Clients{Client: c, Kube: kubefake.NewClientset(core...), Gateway: gatewayfake.NewSimpleClientset(f.routes...)}
	return &Env{
		NewClients: func() (*Clients, error) { return cl, nil },
		Now:        func() time.Time { return testNow },
		Terminal:   func(io.Writer) bool { return false },
	}, c
}

// run executes the command line with args and returns what it printed.
func run(t *testing.T, env *Env, args ...string) (string, error) {
	t.Helper()
	cmd := NewRootCommandWith(env)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(""))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// seedFlags are the flags of the seed flow's upgrade.
var seedFlags = []string{
	"--from", fromRev, "--to", toRev,
	"--workload", "bookinfo-" + fromRev + "=" + fromRev, "--workload", "bookinfo-" + toRev + "=" + toRev,
	"--httproute", "bookinfo-" + fromRev + "/reviews",
	"--stable", "bookinfo-" + fromRev + "/reviews:9080", "--canary", "bookinfo-" + toRev + "/reviews:9080",
}

func upgradeObj(name string, phase ztv1.Phase, step int32, annotations map[string]string) *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations, CreationTimestamp: metav1.NewTime(testNow.Add(-10 * time.Minute))},
		Spec: ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Steps: []ztv1.Step{
			{Nodes: intOrStr("1"), Pause: &ztv1.Pause{}},
			{Nodes: intOrStr("50%"), Pause: &ztv1.Pause{Duration: &metav1.Duration{Duration: 30 * time.Second}}},
			{Nodes: intOrStr("100%")},
		}},
		Status: ztv1.RevisionUpgradeStatus{Phase: phase, CurrentStep: step},
	}
}
