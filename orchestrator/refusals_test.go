package orchestrator

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/ambient"
	"github.com/ztcanary/ztcanary/orchestrator/drive"

	"go.uber.org/zap/zaptest"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"

	"github.com/ztcanary/ztcanary/internal/golden"
)

var update = flag.Bool("update", false, "rewrite docs/refusals-preflight.md from what the orchestrator says")

// refusalsFile is the golden table of every input the orchestrator refuses after
// admission.
var refusalsFile = filepath.Join("..", "docs", "refusals-preflight.md")

const (
	worldFrom = "1-18-0"
	worldTo   = "1-18-1"
	worldNS   = "istio-system"
	appsFrom  = "bookinfo-" + worldFrom
	appsTo    = "bookinfo-" + worldTo
)

// fakeWorld is a cluster in fake clients: the seed topology (four workers on from,
// istiod and ztunnel per revision with the chart's ServiceAccounts, the workload
// namespaces, an HTTPRoute across namespaces with its ReferenceGrant), a
// VirtualService route in shop, and for Sidecar mode the injectors of both revisions
// and namespaces enrolled in from's.
type fakeWorld struct {
	objs     []client.Object  // the controller-runtime client's
	services []client.Object  // in both clients: the orchestrator and the routers read them
	routes   []runtime.Object // Gateway API
	istio    []runtime.Object // VirtualServices, DestinationRules
}

func refusalWorld() *fakeWorld {
	w := &fakeWorld{}
	node := func(name, rev string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
		if rev != "" {
			n.Labels[mesh.RevisionKey] = rev
		}
		return n
	}
	w.objs = append(w.objs, node("ambient-control-plane", ""))
	for _, n := range []string{"ambient-worker", "ambient-worker2", "ambient-worker3", "ambient-worker4"} {
		w.objs = append(w.objs, node(n, worldFrom))
	}
	w.objs = append(w.objs, namespace(worldNS, nil))
	for _, rev := range []string{worldFrom, worldTo} {
		istiod := availableIstiod(rev)
		istiod.Labels = map[string]string{"app": "istiod", mesh.RevisionKey: rev}
		istiod.Spec.Template.Spec.Containers = []corev1.Container{{Name: "discovery",
			Env: []corev1.EnvVar{{Name: mesh.TrustedNodeAccountsEnv, Value: worldNS + "/ztunnel-" + worldFrom + "," + worldNS + "/ztunnel-" + worldTo}}}}
		sa := "ztunnel-" + rev
		w.objs = append(w.objs, istiod,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: worldNS, Name: sa}},
			&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: worldNS, Name: "ztunnel-" + rev, Annotations: map[string]string{mesh.RevisionKey: rev}},
				Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "ztunnel"}, Annotations: map[string]string{mesh.RevisionKey: rev}},
					Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeSelector: map[string]string{mesh.RevisionKey: rev}},
				}}},
			namespace("bookinfo-"+rev, map[string]string{"istio.io/dataplane-mode": "ambient"}),
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo-" + rev, Name: "reviews"},
				Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Template: corev1.PodTemplateSpec{
					Spec: corev1.PodSpec{NodeSelector: map[string]string{mesh.RevisionKey: rev}}}}},
		)
		w.services = append(w.services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo-" + rev, Name: "reviews"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, Protocol: corev1.ProtocolTCP}}}})
	}
	w.routes = append(w.routes,
		&gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: appsFrom, Name: "reviews"},
			Spec: gatewayv1.HTTPRouteSpec{Rules: []gatewayv1.HTTPRouteRule{{
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews", Port: ptr.To(gatewayv1.PortNumber(9080))}}}},
			}}}},
		&gatewayv1.ReferenceGrant{ObjectMeta: metav1.ObjectMeta{Namespace: appsTo, Name: "reviews-from-stable"},
			Spec: gatewayv1.ReferenceGrantSpec{
				From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: appsFrom}},
				To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
			}},
	)
	w.services = append(w.services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, Protocol: corev1.ProtocolTCP}}}})
	w.istio = append(w.istio,
		&istionetworkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"}, Spec: networkingv1alpha3.VirtualService{
			Hosts: []string{"reviews"},
			Http:  []*networkingv1alpha3.HTTPRoute{{Name: "reviews", Route: []*networkingv1alpha3.HTTPRouteDestination{{Destination: &networkingv1alpha3.Destination{Host: "reviews", Subset: "v1"}}}}},
		}},
		&istionetworkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"}, Spec: networkingv1alpha3.DestinationRule{
			Host:    "reviews",
			Subsets: []*networkingv1alpha3.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}},
		}},
	)
	// Sidecar mode: the charts' injectors, and namespaces enrolled in from's.
	w.objs = append(w.objs,
		chartInjector(worldFrom, ""), chartInjector(worldFrom, "default"), chartInjector(worldTo, ""),
		namespace("shop", map[string]string{mesh.LabelInjection: "enabled"}),
		namespace("cart", map[string]string{mesh.RevisionKey: worldFrom}),
		namespace("off", map[string]string{mesh.LabelInjection: "disabled"}),
	)
	return w
}

// without drops the objects named namespace/name, or name (every kind).
func (w *fakeWorld) without(names ...string) *fakeWorld {
	keep := func(o client.Object) bool {
		for _, n := range names {
			if o.GetName() == n || o.GetNamespace()+"/"+o.GetName() == n {
				return false
			}
		}
		return true
	}
	w.objs = slices.DeleteFunc(w.objs, func(o client.Object) bool { return !keep(o) })
	w.services = slices.DeleteFunc(w.services, func(o client.Object) bool { return !keep(o) })
	for _, list := range []*[]runtime.Object{&w.routes, &w.istio} {
		*list = slices.DeleteFunc(*list, func(o runtime.Object) bool { return !keep(o.(client.Object)) })
	}
	return w
}

// edit changes the object named namespace/name of type T.
func edit[T client.Object](w *fakeWorld, key string, change func(T)) *fakeWorld {
	for _, o := range w.objs {
		if t, ok := o.(T); ok && o.GetNamespace()+"/"+o.GetName() == key {
			change(t)
			return w
		}
	}
	panic("edit: no " + key)
}

// writes records every write a refused upgrade makes besides its own status.
type writes struct{ list []string }

func (wr *writes) add(s string) { wr.list = append(wr.list, s) }

func (wr *writes) reactor(clientset string) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		switch a.GetVerb() {
		case "get", "list", "watch":
		default:
			wr.add(fmt.Sprintf("%s: %s %s %s", clientset, a.GetVerb(), a.GetResource().Resource, a.GetNamespace()))
		}
		return false, nil, nil
	}
}

// isUpgrade: the object is a RevisionUpgrade, whole or (as the orchestrator writes
// its status) by its metadata.
func isUpgrade(o client.Object) bool {
	if m, ok := o.(*metav1.PartialObjectMetadata); ok {
		return m.Kind == "RevisionUpgrade"
	}
	_, ok := o.(*ztv1.RevisionUpgrade)
	return ok
}

// refuser is the orchestrator over the world, with its writes recorded.
type refuser struct {
	r      *Reconciler
	c      client.Client
	gw     *gatewayfake.Clientset
	istio  *istiofake.Clientset
	writes *writes
}

// routes is every route object as JSON (resourceVersions included): HTTPRoutes,
// ReferenceGrants, VirtualServices, DestinationRules.
func (rf refuser) routes(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	var out []any
	hr, err := rf.gw.GatewayV1().HTTPRoutes("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rg, err := rf.gw.GatewayV1().ReferenceGrants("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vs, err := rf.istio.NetworkingV1().VirtualServices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dr, err := rf.istio.NetworkingV1().DestinationRules("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, hr.Items, rg.Items, vs.Items, dr.Items)
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (w *fakeWorld) refuser(t *testing.T, routes string) refuser {
	t.Helper()
	s, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	wr := &writes{}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(w.objs...).WithObjects(w.services...).WithStatusSubresource(&ztv1.RevisionUpgrade{}).
		WithIndex(&corev1.Pod{}, drive.PodNodeIndex, drive.IndexPodNode).WithIndex(&corev1.Pod{}, drive.ZtunnelNodeIndex, drive.IndexZtunnelNode).
		WithInterceptorFuncs(interceptor.Funcs{
			Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
				if _, ok := o.(*ztv1.RevisionUpgrade); !ok {
					wr.add(fmt.Sprintf("create %T %s", o, o.GetName()))
				}
				return c.Create(ctx, o, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
				wr.add(fmt.Sprintf("update %T %s", o, o.GetName()))
				return c.Update(ctx, o, opts...)
			},
			Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
				wr.add(fmt.Sprintf("patch %T %s", o, o.GetName()))
				return c.Patch(ctx, o, p, opts...)
			},
			Delete: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.DeleteOption) error {
				wr.add(fmt.Sprintf("delete %T %s", o, o.GetName()))
				return c.Delete(ctx, o, opts...)
			},
			SubResourceCreate: func(ctx context.Context, c client.Client, sub string, o client.Object, s client.Object, opts ...client.SubResourceCreateOption) error {
				wr.add(fmt.Sprintf("create %s of %T %s", sub, o, o.GetName()))
				return c.SubResource(sub).Create(ctx, o, s, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				if !isUpgrade(o) || sub != "status" {
					wr.add(fmt.Sprintf("patch %s of %T %s", sub, o, o.GetName()))
				}
				return c.SubResource(sub).Patch(ctx, o, p, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, o client.Object, opts ...client.SubResourceUpdateOption) error {
				wr.add(fmt.Sprintf("update %s of %T %s", sub, o, o.GetName()))
				return c.SubResource(sub).Update(ctx, o, opts...)
			},
		}).Build()
	var svcs []runtime.Object
	for _, o := range w.services {
		svcs = append(svcs, o.DeepCopyObject())
	}
	kube := kubefake.NewClientset(svcs...)
	kube.PrependReactor("*", "*", wr.reactor("kube"))
	gw := gatewayfake.NewSimpleClientset(w.routes...)
	gw.PrependReactor("*", "*", wr.reactor("gateway"))
	ic := istiofake.NewSimpleClientset(w.istio...)
	ic.PrependReactor("*", "*", wr.reactor("istio"))
	var rf ambient.RouterFactory
	switch routes {
	case "all":
		rf = ambient.Routers(kube, gw, ic)
	case "httproute":
		rf = ambient.Routers(kube, gw, nil)
	}
	r := NewReconciler(&drive.Env{Client: c, Recorder: record.NewFakeRecorder(100), Log: zaptest.NewLogger(t),
		Clock: clocktesting.NewFakePassiveClock(time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC))}, rf)
	return refuser{r: r, c: c, gw: gw, istio: ic, writes: wr}
}

// versions is the resourceVersion of every object of the kinds an upgrade changes.
func versions(t *testing.T, c client.Client) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range []client.ObjectList{&corev1.NodeList{}, &corev1.NamespaceList{}, &appsv1.DaemonSetList{}, &appsv1.DeploymentList{},
		&appsv1.StatefulSetList{}, &corev1.PodList{}, &corev1.ServiceList{}, &corev1.ServiceAccountList{}, &admissionregistrationv1.MutatingWebhookConfigurationList{}} {
		if err := c.List(context.Background(), l); err != nil {
			t.Fatal(err)
		}
		items, err := meta.ExtractList(l)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			o := it.(client.Object)
			out[fmt.Sprintf("%T %s/%s", o, o.GetNamespace(), o.GetName())] = o.GetResourceVersion()
		}
	}
	return out
}

// preflightCase is one upgrade the orchestrator must refuse after admission.
type preflightCase struct {
	name   string                      // the input, as the table says it
	world  func(*fakeWorld) *fakeWorld // the cluster (nil: the seed world as is)
	spec   func(*ztv1.RevisionUpgrade) // the mistake in the upgrade
	routes string                      // the routers: "all" (default), "httproute" (no Istio client), "none"
	reason string
	want   string // the whole message, when it holds no variable part; else a part of it
}

// ambientUpgrade is a valid Ambient upgrade of the world: the seed flow with the
// HTTPRoute.
func ambientUpgrade() *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "upgrade", Generation: 1},
		Spec: ztv1.RevisionUpgradeSpec{
			From: worldFrom, To: worldTo, NodeLabel: mesh.RevisionKey, NodeStrategy: ztv1.NodeStrategyDrain,
			Ztunnel:   ztv1.ZtunnelSpec{Namespace: worldNS, HandoffLabel: "ztcanary.io/handoff"},
			Workloads: []ztv1.WorkloadPin{{Namespace: appsFrom, Revision: worldFrom}, {Namespace: appsTo, Revision: worldTo}},
			Route: &ztv1.RouteSpec{
				HTTPRoute: &ztv1.ObjectRef{Namespace: appsFrom, Name: "reviews"},
				Stable:    ztv1.BackendRef{Namespace: appsFrom, Name: "reviews", Port: 9080},
				Canary:    ztv1.BackendRef{Namespace: appsTo, Name: "reviews", Port: 9080},
			},
			Steps: []ztv1.Step{
				{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}},
				{Nodes: intstr.FromString("50%"), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](50)}},
				{Nodes: intstr.FromString("100%"), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](100)}},
			},
			Analysis: ztv1.Analysis{AgentVerification: ztv1.AgentVerificationDisabled},
		},
	}
}

// vsUpgrade is ambientUpgrade over the VirtualService route in shop.
func vsUpgrade(u *ztv1.RevisionUpgrade) {
	u.Spec.Route = &ztv1.RouteSpec{
		VirtualService: &ztv1.VirtualServiceRef{Namespace: "shop", Name: "reviews", DestinationRule: "reviews"},
		Stable:         ztv1.BackendRef{Namespace: "shop", Name: "reviews", Port: 9080, Subset: "v1"},
		Canary:         ztv1.BackendRef{Namespace: "shop", Name: "reviews", Port: 9080, Subset: "v2"},
	}
}

// sidecarMode makes ambientUpgrade a valid Sidecar upgrade of the world: the
// namespaces from's injector enrols (cart, shop), one then all.
func sidecarMode(u *ztv1.RevisionUpgrade) {
	u.Spec.Mode = ztv1.ModeSidecar
	u.Spec.Workloads, u.Spec.Route, u.Spec.NodeLabel = nil, nil, ""
	u.Spec.Sidecar = ztv1.SidecarSpec{IstiodNamespace: worldNS, MaxConcurrentRestarts: 2}
	u.Spec.Steps = []ztv1.Step{{Namespaces: ptr.To(intstr.FromInt32(1))}, {Namespaces: ptr.To(intstr.FromString("100%"))}}
}

func inSidecarMode(change func(*ztv1.RevisionUpgrade)) func(*ztv1.RevisionUpgrade) {
	return func(u *ztv1.RevisionUpgrade) {
		sidecarMode(u)
		if change != nil {
			change(u)
		}
	}
}

func viaVirtualService(change func(*ztv1.RevisionUpgrade)) func(*ztv1.RevisionUpgrade) {
	return func(u *ztv1.RevisionUpgrade) {
		vsUpgrade(u)
		if change != nil {
			change(u)
		}
	}
}

func nodeSteps(n ...intstr.IntOrString) []ztv1.Step {
	out := make([]ztv1.Step, len(n))
	for i := range n {
		out[i] = ztv1.Step{Nodes: n[i]}
	}
	return out
}

func preflightRefusals() []preflightCase {
	unavailable := func(d *appsv1.Deployment) {
		d.Spec.Replicas = ptr.To[int32](2)
		d.Status = appsv1.DeploymentStatus{Replicas: 2, AvailableReplicas: 0, Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionFalse}}}
	}
	return []preflightCase{
		// Ambient: the revisions and the ztunnels.
		{name: "an unknown to revision (no istiod-<to>)", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.To = "1-99-0"; u.Spec.Workloads[1].Revision = "1-99-0" },
			reason: "IstiodMissing", want: "spec.to: no istiod Deployment istio-system/istiod-1-99-0; install the 1-99-0 control plane first (helm install istiod-1-99-0 ... --set revision=1-99-0)"},
		{name: "istiod of the to revision not Available", world: func(w *fakeWorld) *fakeWorld { return edit(w, worldNS+"/istiod-"+worldTo, unavailable) },
			reason: "IstiodNotReady", want: "spec.to: istiod istio-system/istiod-1-18-1 is not Available yet (0 of 2 replicas available); the upgrade starts once it is (kubectl -n istio-system describe deployment istiod-1-18-1 says what it waits for)"},
		{name: "no ztunnel DaemonSet of the from revision", world: func(w *fakeWorld) *fakeWorld { return w.without(worldNS + "/ztunnel-" + worldFrom) },
			reason: "ZtunnelMissing", want: "spec.from: no ztunnel DaemonSet of revision 1-18-0 in istio-system (pods labelled app=ztunnel, annotation istio.io/rev=1-18-0)"},
		{name: "no ztunnel DaemonSet of the to revision", world: func(w *fakeWorld) *fakeWorld { return w.without(worldNS + "/ztunnel-" + worldTo) },
			reason: "ZtunnelMissing", want: "spec.to: no ztunnel DaemonSet of revision 1-18-1 in istio-system; install the ztunnel chart with revision=1-18-1 and resourceName=ztunnel-1-18-1"},
		{name: "the to ztunnel on the default ServiceAccount", world: func(w *fakeWorld) *fakeWorld {
			return edit(w, worldNS+"/ztunnel-"+worldTo, func(d *appsv1.DaemonSet) { d.Spec.Template.Spec.ServiceAccountName = "" })
		}, reason: "ZtunnelServiceAccount", want: "spec.to: ztunnel DaemonSet istio-system/ztunnel-1-18-1 runs as the default ServiceAccount; give it its own (the chart's resourceName) so istiod can trust it"},
		{name: "the to ztunnel's ServiceAccount missing", world: func(w *fakeWorld) *fakeWorld {
			w.objs = slices.DeleteFunc(w.objs, func(o client.Object) bool {
				_, sa := o.(*corev1.ServiceAccount)
				return sa && o.GetName() == "ztunnel-"+worldTo
			})
			return w
		},
			reason: "ZtunnelServiceAccount", want: "spec.to: ztunnel DaemonSet istio-system/ztunnel-1-18-1 uses ServiceAccount ztunnel-1-18-1, which does not exist; create it (the ztunnel chart does) or fix the DaemonSet's serviceAccountName"},
		{name: "istiod not trusting the to ztunnel's ServiceAccount", world: func(w *fakeWorld) *fakeWorld {
			return edit(w, worldNS+"/istiod-"+worldTo, func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Env[0].Value = worldNS + "/ztunnel" })
		}, reason: "ZtunnelNotTrusted", want: "spec.to: istiod istio-system/istiod-1-18-1 does not trust ServiceAccount istio-system/ztunnel-1-18-1 (CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel): the 1-18-1 ztunnel would get no certificate; add it to CA_TRUSTED_NODE_ACCOUNTS"},
		{name: "a workload namespace that does not exist", spec: func(u *ztv1.RevisionUpgrade) {
			u.Spec.Workloads = append(u.Spec.Workloads, ztv1.WorkloadPin{Namespace: "nope", Revision: worldTo})
		}, reason: "WorkloadsMissing", want: "spec.workloads[2].namespace: namespace nope does not exist"},
		// Ambient: the scope and the steps against it.
		{name: "a node selector that matches no node", spec: func(u *ztv1.RevisionUpgrade) {
			u.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "nowhere"}}
		}, reason: "InvalidSpec", want: "spec.nodeSelector: no node in scope (no node is labelled istio.io/rev=1-18-0, or the selector matches none)"},
		{name: "an unknown from revision (no node labelled with it)", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.From = "1-17-0"; u.Spec.Workloads[0].Revision = "1-17-0" },
			reason: "InvalidSpec", want: "spec.nodeSelector: no node in scope (no node is labelled istio.io/rev=1-17-0, or the selector matches none)"},
		{name: "a node selector with an unknown operator", spec: func(u *ztv1.RevisionUpgrade) {
			u.Spec.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: "Near", Values: []string{"a"}}}}
		}, reason: "InvalidSpec", want: `spec.nodeSelector: "Near" is not a valid label selector operator`},
		{name: "node percentages that decrease against counts", spec: func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = nil
			u.Spec.Steps = nodeSteps(intstr.FromString("75%"), intstr.FromInt32(2), intstr.FromString("100%"))
		}, reason: "InvalidSpec", want: "spec.steps[1].nodes: 2 is 2 of 4 nodes, fewer than the 3 of the step before; node counts must never decrease"},
		{name: "steps that never reach every node", spec: func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route = nil
			u.Spec.Steps = nodeSteps(intstr.FromInt32(1))
		}, reason: "InvalidSpec", want: "spec.steps: the last step moves 1 of 4 nodes; end with nodes: 100% so the upgrade completes"},
		{name: "the last stable node moved before traffic is 100% canary", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[2].Traffic.Weight = ptr.To[int32](60) },
			reason: "InvalidSpec", want: "spec.steps[2] moves the last stable node but traffic is only 60% canary by then: give that step (or an earlier one) traffic weight 100"},
		{name: "traffic without a route", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Route = nil },
			reason: "InvalidSpec", want: "spec.steps[0].traffic: set spec.route to say which route to shift"},
		{name: "a workload pinned to a third revision", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Workloads[1].Revision = "1-17-0" },
			reason: "InvalidSpec", want: `spec.workloads[1].revision: "1-17-0" is neither spec.from (1-18-0) nor spec.to (1-18-1)`},
		{name: "a canary body regex that does not compile", spec: func(u *ztv1.RevisionUpgrade) {
			u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{URL: "http://gateway/", CanaryBodyRegex: `reviews-(v2`}
		}, reason: "InvalidSpec", want: "spec.analysis.trafficTest.canaryBodyRegex: \"reviews-(v2\" is not a valid regular expression (Go RE2 syntax): error parsing regexp: missing closing ): `reviews-(v2`"},
		// Ambient: the HTTPRoute.
		{name: "an HTTPRoute that does not exist", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Route.HTTPRoute.Name = "nope" },
			reason: "RouteMissing", want: "spec.route.httpRoute: route not usable: httproute bookinfo-1-18-0/nope not found; create it, or name the route to shift"},
		{name: "a canary Service that does not exist", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Route.Canary.Name = "nope" },
			reason: "BackendMissing", want: "spec.route.canary: Service bookinfo-1-18-1/nope does not exist"},
		{name: "a stable Service that does not exist", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Route.Stable.Name = "nope" },
			reason: "BackendMissing", want: "spec.route.stable: Service bookinfo-1-18-0/nope does not exist"},
		{name: "a backend port the Service does not have", spec: func(u *ztv1.RevisionUpgrade) { u.Spec.Route.Canary.Port = 8080 },
			reason: "BackendUnusable", want: "spec.route: backend not usable: canary backend service bookinfo-1-18-1/reviews has no TCP port 8080"},
		{name: "a canary in another namespace without a ReferenceGrant", world: func(w *fakeWorld) *fakeWorld { return w.without(appsTo + "/reviews-from-stable") },
			reason: "ReferenceNotPermitted", want: "spec.route: cross-namespace reference not permitted: httproutes in namespace bookinfo-1-18-0 may not send to service bookinfo-1-18-1/reviews: create a ReferenceGrant in bookinfo-1-18-1"},
		{name: "a route on an orchestrator without route support", routes: "none",
			reason: "RouteUnsupported", want: "spec.route: this orchestrator was started without route support"},
		// Ambient: the VirtualService.
		{name: "a VirtualService that does not exist", spec: viaVirtualService(func(u *ztv1.RevisionUpgrade) { u.Spec.Route.VirtualService.Name = "nope" }),
			reason: "RouteMissing", want: "spec.route.virtualService: route not usable: virtualservice shop/nope not found; create it, or name the route to shift"},
		{name: "a DestinationRule that does not exist", spec: viaVirtualService(func(u *ztv1.RevisionUpgrade) { u.Spec.Route.VirtualService.DestinationRule = "nope" }),
			reason: "BackendUnusable", want: "spec.route: backend not usable: destinationrule shop/nope not found"},
		{name: "a subset the DestinationRule does not define", spec: viaVirtualService(func(u *ztv1.RevisionUpgrade) { u.Spec.Route.Canary.Subset = "v3" }),
			reason: "BackendUnusable", want: `spec.route: backend not usable: destinationrule shop/reviews defines no subset "v3" (it defines "v1", "v2")`},
		{name: "a VirtualService whose Service does not exist", spec: viaVirtualService(func(u *ztv1.RevisionUpgrade) {
			u.Spec.Route.Stable.Name, u.Spec.Route.Canary.Name = "details", "details"
		}),
			reason: "BackendMissing", want: "Service shop/details does not exist"},
		{name: "a VirtualService host no route sends to", spec: viaVirtualService(func(u *ztv1.RevisionUpgrade) { u.Spec.Route.VirtualService.Host = "reviews.shop.svc.cluster.local" }),
			reason: "RouteUnusable", want: "spec.route: route not usable: no route sends to subset v1 of reviews.shop.svc.cluster.local"},
		{name: "a VirtualService on an orchestrator without an Istio client", spec: viaVirtualService(nil), routes: "httproute",
			reason: "RouteUnsupported", want: "spec.route.virtualService: this orchestrator was started without an Istio client; use spec.route.httpRoute"},
		// Sidecar.
		{name: "Sidecar: an unknown to revision (no istiod-<to>)", spec: inSidecarMode(func(u *ztv1.RevisionUpgrade) { u.Spec.To = "1-99-0" }),
			reason: "IstiodMissing", want: "spec.to: no istiod Deployment istio-system/istiod-1-99-0: revision 1-99-0 is not installed (helm install istiod-1-99-0 istio/istiod -n istio-system --set revision=1-99-0)"},
		{name: "Sidecar: istiod of the to revision not Available", spec: inSidecarMode(nil), world: func(w *fakeWorld) *fakeWorld { return edit(w, worldNS+"/istiod-"+worldTo, unavailable) },
			reason: "IstiodNotReady", want: "spec.to: istiod istio-system/istiod-1-18-1 is not Available yet (0 of 2 replicas available); the upgrade starts once it is (kubectl -n istio-system describe deployment istiod-1-18-1 says what it waits for)"},
		{name: "Sidecar: no injector of the to revision", spec: inSidecarMode(nil), world: func(w *fakeWorld) *fakeWorld { return w.without("istio-sidecar-injector-" + worldTo) },
			reason: "InjectorMissing", want: "spec.to: no sidecar injector of revision 1-18-1"},
		{name: "Sidecar: no injector of the from revision", spec: inSidecarMode(nil), world: func(w *fakeWorld) *fakeWorld {
			return w.without("istio-sidecar-injector-"+worldFrom, "istio-revision-tag-default")
		}, reason: "InjectorMissing", want: "spec.from: no sidecar injector of revision 1-18-0"},
		{name: "Sidecar: a namespace selector that matches no namespace", spec: inSidecarMode(func(u *ztv1.RevisionUpgrade) {
			u.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "nobody"}}
		}), reason: "NoNamespaces", want: "spec.namespaceSelector: no namespace matches team=nobody; nothing to upgrade"},
		{name: "Sidecar: a namespace selector with an unknown operator", spec: inSidecarMode(func(u *ztv1.RevisionUpgrade) {
			u.Spec.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Near", Values: []string{"a"}}}}
		}), reason: "InvalidSpec", want: `spec.namespaceSelector: "Near" is not a valid label selector operator`},
		{name: "Sidecar: no namespace enrolled in the from injector", spec: inSidecarMode(nil), world: func(w *fakeWorld) *fakeWorld { return w.without("shop", "cart") },
			reason: "NoNamespaces", want: "spec.namespaceSelector: unset, so the scope is the namespaces enrolled in the 1-18-0 injector, and there are none (labelled istio.io/rev=1-18-0, or istio-injection=enabled where 1-18-0 serves the default injection); label them, or set spec.namespaceSelector"},
		{name: "Sidecar: a namespace with injection disabled", spec: inSidecarMode(func(u *ztv1.RevisionUpgrade) {
			u.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "off"}}
		}), reason: "InjectionDisabled", want: "spec.namespaceSelector: namespace off has istio-injection=disabled: its pods get no sidecar today and moving it would inject them; leave it out of spec.namespaceSelector"},
		{name: "Sidecar: a to injector that would not select the relabelled namespace", spec: inSidecarMode(nil), world: func(w *fakeWorld) *fakeWorld {
			w.without("istio-sidecar-injector-" + worldTo)
			w.objs = append(w.objs, chartInjector(worldTo, "canary")) // selects istio.io/rev=canary only
			return w
		}, reason: "InjectorSelectorMismatch", want: "spec.to: namespace cart, relabelled istio.io/rev=1-18-1 without istio-injection, would not be selected by any webhook of the 1-18-1 injector (istio-revision-tag-canary): its pods would get no proxy; make one of its webhooks select istio.io/rev=1-18-1, or leave the namespace out of spec.namespaceSelector"},
		{name: "Sidecar: a second injector selecting the relabelled namespace", spec: inSidecarMode(nil), world: func(w *fakeWorld) *fakeWorld {
			rogue := chartInjector("1-17-0", "")
			rogue.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{mesh.RevisionKey: worldTo}}
			w.objs = append(w.objs, rogue)
			return w
		}, reason: "InjectorConflict", want: "spec.to: namespace cart, relabelled istio.io/rev=1-18-1, would also be selected by istio-sidecar-injector-1-17-0/rev.namespace.sidecar-injector.istio.io (revision 1-17-0): two injectors would mutate its pods; fix that webhook's namespaceSelector"},
		{name: "Sidecar: namespace percentages that decrease against counts", spec: inSidecarMode(func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps = []ztv1.Step{{Namespaces: ptr.To(intstr.FromInt32(2))}, {Namespaces: ptr.To(intstr.FromString("10%"))}, {Namespaces: ptr.To(intstr.FromString("100%"))}}
		}), reason: "InvalidSpec", want: "spec.steps[1].namespaces: 10% is 1 of 2 namespaces, fewer than the 2 of the step before; namespace counts must never decrease"},
		{name: "Sidecar: steps that never reach every namespace", spec: inSidecarMode(func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps = []ztv1.Step{{Namespaces: ptr.To(intstr.FromInt32(1))}}
		}), reason: "InvalidSpec", want: "spec.steps: the last step moves 1 of 2 namespaces; end with namespaces: 100% so the upgrade completes"},
	}
}

// TestPreflightRefusesBadInputAndChangesNothing runs the orchestrator's first
// reconcile of each upgrade in a world of fake clients: each is refused through the
// Ready condition with its reason and message, stays Pending with nothing recorded,
// and no object is written (nodes, namespaces, DaemonSets, workloads, webhooks,
// routes, Services: no write call, resourceVersions unchanged). The rows are the
// table docs/refusals-preflight.md.
func TestPreflightRefusesBadInputAndChangesNothing(t *testing.T) {
	cases := preflightRefusals()
	var rows []string
	for _, tc := range cases {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			w := refusalWorld()
			if tc.world != nil {
				w = tc.world(w)
			}
			routes := tc.routes
			if routes == "" {
				routes = "all"
			}
			rf := w.refuser(t, routes)
			u := ambientUpgrade()
			if tc.spec != nil {
				tc.spec(u)
			}
			ctx := context.Background()
			if err := rf.c.Create(ctx, u); err != nil {
				t.Fatal(err)
			}
			before, routesBefore := versions(t, rf.c), rf.routes(t)
			if _, err := rf.r.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKey{Name: u.Name}}); err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			got := &ztv1.RevisionUpgrade{}
			if err := rf.c.Get(ctx, client.ObjectKey{Name: u.Name}, got); err != nil {
				t.Fatal(err)
			}
			c := meta.FindStatusCondition(got.Status.Conditions, ztv1.ConditionReady)
			if c == nil || c.Status != metav1.ConditionFalse {
				t.Fatalf("Ready = %+v, want False (status %+v)", c, got.Status)
			}
			if c.Reason != tc.reason || !strings.Contains(c.Message, tc.want) {
				t.Errorf("Ready=False %s: %s\nwant %s: %s", c.Reason, c.Message, tc.reason, tc.want)
			}
			if got.Status.Message != c.Message {
				t.Errorf("status.message %q, want the condition's message", got.Status.Message)
			}
			if got.Status.Phase != ztv1.PhasePending || len(got.Status.Nodes) != 0 || len(got.Status.Namespaces) != 0 ||
				got.Status.OriginalPins != nil || got.Status.OriginalRoute != nil {
				t.Errorf("status after the refusal: phase %s, %d nodes, %d namespaces, pins %v, route %v; want Pending and nothing recorded",
					got.Status.Phase, len(got.Status.Nodes), len(got.Status.Namespaces), got.Status.OriginalPins, got.Status.OriginalRoute != nil)
			}
			if len(rf.writes.list) > 0 {
				t.Errorf("the refused upgrade wrote:\n%s", strings.Join(rf.writes.list, "\n"))
			}
			after := versions(t, rf.c)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("%s: resourceVersion %s, was %s", k, after[k], v)
				}
			}
			if len(after) != len(before) {
				t.Errorf("%d objects after the refusal, %d before", len(after), len(before))
			}
			if routesAfter := rf.routes(t); routesAfter != routesBefore {
				t.Errorf("the routes changed:\n%s\nwere\n%s", routesAfter, routesBefore)
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s |", cell(tc.name), cell("status: Ready=False, reason "+c.Reason), cell(messageField(c.Message)), cell(c.Message)))
		})
	}
	t.Run("the valid upgrades start, and their writes are seen", func(t *testing.T) {
		for _, spec := range []func(*ztv1.RevisionUpgrade){nil, vsUpgrade, sidecarMode} {
			rf := refusalWorld().refuser(t, "all")
			u := ambientUpgrade()
			if spec != nil {
				spec(u)
			}
			ctx := context.Background()
			if err := rf.c.Create(ctx, u); err != nil {
				t.Fatal(err)
			}
			before := versions(t, rf.c)
			// The first write of a started upgrade is its own finalizer; go on to the
			// writes to the cluster.
			onlyOwn := func() bool {
				return !slices.ContainsFunc(rf.writes.list, func(w string) bool { return !strings.HasPrefix(w, "patch *v1alpha1.RevisionUpgrade ") })
			}
			for i := 0; i < 6 && onlyOwn(); i++ {
				if _, err := rf.r.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKey{Name: u.Name}}); err != nil {
					t.Fatalf("reconcile: %v", err)
				}
			}
			got := &ztv1.RevisionUpgrade{}
			if err := rf.c.Get(ctx, client.ObjectKey{Name: u.Name}, got); err != nil {
				t.Fatal(err)
			}
			if c := meta.FindStatusCondition(got.Status.Conditions, ztv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
				t.Fatalf("%s upgrade: Ready = %+v, want True", got.Spec.Mode, c)
			}
			after := versions(t, rf.c)
			changed := 0
			for k, v := range before {
				if after[k] != v {
					changed++
				}
			}
			if len(rf.writes.list) == 0 || changed == 0 {
				t.Errorf("%s upgrade: %d writes seen, %d objects changed; want some of both once it runs (status: %s)", got.Spec.Mode, len(rf.writes.list), changed, got.Status.Message)
			}
		}
	})
	if len(rows) != len(cases) {
		return // a case failed or was not run (-run): the table would be partial
	}
	golden.Check(t, refusalsFile, preflightTable(rows), *update, "the orchestrator")
}

var fieldPrefix = regexp.MustCompile(`^spec(\.[A-Za-z]+|\[\d+\])*`)

// messageField is the field a message names first, "—" if it names none.
func messageField(msg string) string {
	if f := fieldPrefix.FindString(msg); f != "" {
		return f
	}
	return "—"
}

func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", "<br>")
}

func preflightTable(rows []string) string {
	var b strings.Builder
	b.WriteString("# Refused inputs: preflight\n\n")
	b.WriteString("<!-- Generated by `make refusals` (go test ./orchestrator -run TestPreflightRefusesBadInputAndChangesNothing -update); do not edit. -->\n\n")
	b.WriteString("Every RevisionUpgrade the API server admits but the orchestrator refuses when it starts\n")
	b.WriteString("the upgrade, because only the cluster can judge it: the revisions, ztunnels and injectors\n")
	b.WriteString("installed, the nodes or namespaces in scope, the route and its backends. A refusal is the\n")
	b.WriteString("`Ready=False` condition (also `status.message` and a Warning Event), with the reason and\n")
	b.WriteString("the message below, verbatim; the upgrade stays `Pending`, nothing is written, and the\n")
	b.WriteString("orchestrator checks again every 30 s, so fixing the cluster starts the upgrade. Inputs\n")
	b.WriteString("refused at admission are in [refusals-admission.md](refusals-admission.md).\n\n")
	fmt.Fprintf(&b, "%d refused inputs.\n\n", len(rows))
	b.WriteString("| input | layer | field | message shown |\n")
	b.WriteString("|---|---|---|---|\n")
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	return b.String()
}

func availableIstiod(rev string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod-" + rev},
		Status:     appsv1.DeploymentStatus{AvailableReplicas: 1, Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue}}},
	}
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func chartInjector(rev, tag string) *admissionregistrationv1.MutatingWebhookConfiguration {
	sel := func(reqs ...metav1.LabelSelectorRequirement) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: reqs}
	}
	req := func(k string, op metav1.LabelSelectorOperator, v ...string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: k, Operator: op, Values: v}
	}
	selects, name := rev, "istio-sidecar-injector-"+rev
	if tag != "" {
		selects, name = tag, "istio-revision-tag-"+tag
	}
	hooks := []admissionregistrationv1.MutatingWebhook{
		{Name: "rev.namespace.sidecar-injector.istio.io", NamespaceSelector: sel(req(mesh.RevisionKey, metav1.LabelSelectorOpIn, selects), req(mesh.LabelInjection, metav1.LabelSelectorOpDoesNotExist))},
		{Name: "rev.object.sidecar-injector.istio.io", NamespaceSelector: sel(req(mesh.RevisionKey, metav1.LabelSelectorOpDoesNotExist), req(mesh.LabelInjection, metav1.LabelSelectorOpDoesNotExist))},
	}
	if tag == "default" {
		hooks = append(hooks,
			admissionregistrationv1.MutatingWebhook{Name: "namespace.sidecar-injector.istio.io", NamespaceSelector: sel(req(mesh.LabelInjection, metav1.LabelSelectorOpIn, "enabled"))},
			admissionregistrationv1.MutatingWebhook{Name: "object.sidecar-injector.istio.io", NamespaceSelector: sel(req(mesh.LabelInjection, metav1.LabelSelectorOpDoesNotExist), req(mesh.RevisionKey, metav1.LabelSelectorOpDoesNotExist))},
		)
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{mesh.RevisionKey: rev}}, Webhooks: hooks}
}
