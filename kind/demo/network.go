package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simnet"
)

// The route every upgrade shifts, in a namespace of its own beside its Gateway.
const (
	routeNamespace = "bookinfo"
	routeName      = "reviews"
	gatewayName    = "bookinfo-gateway"
	gatewayClass   = "traefik"
	backendName    = "reviews" // the reviews Service of each revision's namespace
	backendPort    = 9080
	versionHeader  = "x-version"
	testHeader     = "traffic"
	testValue      = "test"
)

// network is Traefik plus one reviews backend per revision, each an HTTP server in a
// network namespace of its own that names its revision in the x-version header.
type network struct {
	traefik  *sim.Traefik
	backends map[string]*simnet.Server
	// failing makes a revision's backend answer 503 (the broken release).
	failing map[string]*atomic.Bool
}

func startNetwork(ctx context.Context, cl *sim.Cluster, traefikBin string) (n *network, err error) {
	n = &network{backends: map[string]*simnet.Server{}, failing: map[string]*atomic.Bool{}}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if n.traefik, err = cl.StartTraefik(ctx, traefikBin); err != nil {
		return nil, err
	}
	for i, rev := range []string{stable, canary, broken} {
		rev := rev
		fail := &atomic.Bool{}
		n.failing[rev] = fail
		srv, err := simnet.Serve(i+1, 8080, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set(versionHeader, rev)
			if fail.Load() {
				http.Error(w, "reviews "+rev+": internal error", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "reviews %s\n", rev)
		}))
		if err != nil {
			return nil, err
		}
		n.backends[rev] = srv
		fmt.Printf("    reviews %s answers at %s:%d in network namespace %s\n", rev, srv.IP, srv.Port, srv.NetNS)
	}
	fmt.Printf("    Traefik (pid %d) serves the Gateway on %s, log %s\n", n.traefik.PID, n.traefik.URL, n.traefik.Log)
	return n, nil
}

// close stops Traefik (by PID) and removes the backends' namespaces.
func (n *network) close() {
	if n == nil {
		return
	}
	var errs []error
	for rev, s := range n.backends {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("remove backend %s: %w", rev, err))
		}
	}
	if n.traefik != nil {
		errs = append(errs, n.traefik.Stop())
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
	}
	say("stopped Traefik and removed the backends' network namespaces")
}

// installRoute creates the Gateway, the route to the stable reviews, and per revision
// the reviews Service (no selector: its EndpointSlice points at the revision's backend)
// with a ReferenceGrant letting the route reach it. Without a network the endpoints
// are addresses nothing answers on: the route moves, no traffic flows.
func (d *demo) installRoute(ctx context.Context) error {
	port := int32(8080)
	if d.net != nil {
		port = int32(d.net.traefik.Port)
	}
	if _, err := d.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: routeNamespace}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", routeNamespace, err)
	}
	if _, err := d.gw.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: gatewayClass},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: sim.TraefikControllerName},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create GatewayClass %s: %w", gatewayClass, err)
	}
	if _, err := d.gw.GatewayV1().Gateways(routeNamespace).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: gatewayName},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: gatewayClass,
			Listeners:        []gatewayv1.Listener{{Name: "web", Port: port, Protocol: gatewayv1.HTTPProtocolType}},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Gateway %s: %w", gatewayName, err)
	}
	for i, rev := range []string{stable, canary, broken} {
		ip := fmt.Sprintf("10.244.250.%d", i+1)
		if d.net != nil {
			ip = d.net.backends[rev].IP
		}
		if err := d.backend(ctx, seed.AppNamespace(rev), ip); err != nil {
			return err
		}
	}
	if _, err := d.gw.GatewayV1().HTTPRoutes(routeNamespace).Create(ctx, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: routeName},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Name: gatewayName}}},
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches:     []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/")}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef(seed.AppNamespace(stable))},
			}},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create HTTPRoute %s/%s: %w", routeNamespace, routeName, err)
	}
	say("Gateway %s/%s (class %s, port %d) and HTTPRoute %s/%s → %s/%s:%d", routeNamespace, gatewayName, gatewayClass, port, routeNamespace, routeName, seed.AppNamespace(stable), backendName, backendPort)
	if d.net == nil {
		return nil
	}
	// Traefik reports the route Accepted, then serves it some milliseconds later.
	if err := poll(ctx, "Traefik to accept the route", func() (bool, string, error) {
		route, err := d.gw.GatewayV1().HTTPRoutes(routeNamespace).Get(ctx, routeName, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		ok, msg := gatewayroutes.RouteAccepted(route.Generation, route.Status.Parents)
		return ok && len(route.Status.Parents) > 0, msg, nil
	}); err != nil {
		return err
	}
	say("Traefik accepted the route")
	return nil
}

func backendRef(ns string) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
		Namespace: ptr.To(gatewayv1.Namespace(ns)), Name: backendName, Port: ptr.To(gatewayv1.PortNumber(backendPort)),
	}}}
}

// backend is a revision's reviews Service, its EndpointSlice and the grant that lets
// the route in routeNamespace use it.
func (d *demo) backend(ctx context.Context, ns, ip string) error {
	if _, err := d.kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: backendName},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: backendPort, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
		}}},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s/%s: %w", ns, backendName, err)
	}
	if _, err := d.kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: backendName, Labels: map[string]string{discoveryv1.LabelServiceName: backendName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create EndpointSlice %s/%s: %w", ns, backendName, err)
	}
	_, err := d.gw.GatewayV1beta1().ReferenceGrants(ns).Create(ctx, &gatewayv1beta1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Name: "routes-from-" + routeNamespace},
		Spec: gatewayv1beta1.ReferenceGrantSpec{
			From: []gatewayv1beta1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: routeNamespace}},
			To:   []gatewayv1beta1.ReferenceGrantTo{{Kind: "Service"}},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ReferenceGrant in %s: %w", ns, err)
	}
	return nil
}

// router reads (never writes) the route as an upgrade from→to sees it.
func (d *demo) router(from, to string) *gatewayroutes.HTTPRouteRouter {
	return &gatewayroutes.HTTPRouteRouter{
		Kube: d.kube, Gateway: d.gw, Log: nop, Namespace: routeNamespace, Name: routeName,
		Stable: gatewayroutes.Backend{Namespace: seed.AppNamespace(from), Name: backendName, Port: backendPort},
		Canary: gatewayroutes.Backend{Namespace: seed.AppNamespace(to), Name: backendName, Port: backendPort},
	}
}
