package gatewayroutes

import (
	"context"
	"errors"
	"strings"
	"testing"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func shopPod(name, version string, ready bool) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{"app": "reviews", "version": version}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

// TestVirtualServiceSubsetReadiness holds invariant 3 for subsets with fake
// clients: the canary subset gets a share only with a ready pod of the Service that
// carries the subset's labels.
func TestVirtualServiceSubsetReadiness(t *testing.T) {
	withSelector := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "reviews"}, Ports: []corev1.ServicePort{{Port: 9080}}}}
	noSelector := withSelector.DeepCopy()
	noSelector.Spec.Selector = nil
	slice := func(ready bool) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews-x", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
			Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.1.1.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}},
		}
	}
	for _, tc := range []struct {
		name    string
		objects []runtime.Object
		split   Split
		wantErr string
	}{
		{"a ready pod of the canary subset lets the canary have a share", []runtime.Object{withSelector, shopPod("v1-a", "v1", true), shopPod("v2-a", "v2", true)}, Split{CanaryWeight: 10}, ""},
		{"only stable pods ready: no share for the canary", []runtime.Object{withSelector, shopPod("v1-a", "v1", true), shopPod("v2-a", "v2", false)}, Split{CanaryWeight: 10},
			`canary subset "v2" of service shop/reviews has no ready endpoint (no ready pod labelled app=reviews,version=v2)`},
		{"the test route is a share too", []runtime.Object{withSelector, shopPod("v1-a", "v1", true)}, Split{Header: &Header{Name: "traffic", Value: "test"}},
			"has no ready endpoint"},
		{"no share for the canary needs no canary pod", []runtime.Object{withSelector, shopPod("v1-a", "v1", true)}, Split{}, ""},
		{"a Service without selector counts its ready endpoints", []runtime.Object{noSelector, slice(true)}, Split{CanaryWeight: 50}, ""},
		{"a Service without selector and no ready endpoint is refused", []runtime.Object{noSelector, slice(false)}, Split{CanaryWeight: 50}, "canary backend shop/reviews has no ready endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ic := istiofake.NewSimpleClientset(
				&istionetworkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"}, Spec: networkingv1alpha3.VirtualService{
					Hosts: []string{"reviews"},
					Http:  []*networkingv1alpha3.HTTPRoute{{Name: "reviews", Route: []*networkingv1alpha3.HTTPRouteDestination{{Destination: &networkingv1alpha3.Destination{Host: "reviews", Subset: "v1"}}}}},
				}},
				&istionetworkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"}, Spec: networkingv1alpha3.DestinationRule{
					Host:    "reviews",
					Subsets: []*networkingv1alpha3.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}},
				}})
			r := &VirtualServiceRouter{
				Istio: ic, Kube: kubefake.NewSimpleClientset(tc.objects...), Service: Backend{Namespace: "shop", Name: "reviews", Port: 9080},
				Namespace: "shop", Name: "reviews", DestinationRule: "reviews", Host: "reviews", StableSubset: "v1", CanarySubset: "v2",
			}
			if err := r.Check(context.Background()); err != nil {
				t.Fatalf("check: %v", err)
			}
			err := r.checkCanary(context.Background(), tc.split)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && (!errors.Is(err, ErrBackend) || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want ErrBackend saying %q", err, tc.wantErr)
			}
		})
	}
}
