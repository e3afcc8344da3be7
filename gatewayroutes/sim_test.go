package gatewayroutes

import (
	"context"
	"flag"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	gwapply "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// cluster is the simulated cluster (real apiserver, real Gateway API and Istio CRDs)
// shared by this package's tests; nil under -short, where they are skipped.
var cluster *sim.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	// No cluster under -short, nor for benchmark-only runs (-run '^$').
	if testing.Short() || flag.Lookup("test.run").Value.String() == "^$" {
		os.Exit(m.Run())
	}
	simtest.Main(m, sim.Options{Nodes: 1}, &cluster)
}

type clients struct {
	kube kubernetes.Interface
	gw   gatewayclient.Interface
}

func simClients(t *testing.T) clients {
	t.Helper()
	if cluster == nil {
		t.Skip("needs the simulated cluster (not under -short)")
	}
	gw, err := gatewayclient.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	return clients{kube: cluster.Client, gw: gw}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newNamespace creates a namespace removed when the test ends.
func newNamespace(t *testing.T, c clients, name string) string {
	t.Helper()
	ns, err := c.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = c.kube.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// newBackend creates a Service without selector and, when ready is set, an
// EndpointSlice with one ready endpoint (an address nothing listens on: these tests
// send no traffic).
func newBackend(t *testing.T, c clients, b Backend, ready bool) {
	t.Helper()
	ctx := context.Background()
	_, err := c.kube.CoreV1().Services(b.Namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: b.Name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: b.Port, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", b, err)
	}
	if !ready {
		return
	}
	_, err = c.kube.DiscoveryV1().EndpointSlices(b.Namespace).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: b.Name, Labels: map[string]string{discoveryv1.LabelServiceName: b.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.7.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(b.Port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpointslice %s: %v", b, err)
	}
}

// applyAs writes a route from YAML with server-side apply as manager, the way a
// GitOps tool would.
func applyAs(t *testing.T, c clients, manager, ns, routeYAML string) {
	t.Helper()
	var ac gwapply.HTTPRouteApplyConfiguration
	if err := yaml.UnmarshalStrict([]byte(routeYAML), &ac); err != nil {
		t.Fatal(err)
	}
	ac.WithNamespace(ns)
	if _, err := c.gw.GatewayV1().HTTPRoutes(ns).Apply(context.Background(), &ac, metav1.ApplyOptions{FieldManager: manager, Force: true}); err != nil {
		t.Fatalf("apply route as %s: %v", manager, err)
	}
}
