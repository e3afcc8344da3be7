package cli

import (
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
)

// injector is a revision's sidecar injector as Istio's chart renders it (the
// revisioned namespace webhook, selecting istio.io/rev=rev without istio-injection).
func injector(rev string) *admissionregistrationv1.MutatingWebhookConfiguration {
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-" + rev, Labels: map[string]string{mesh.RevisionKey: rev}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "rev.namespace.sidecar-injector.istio.io",
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: mesh.RevisionKey, Operator: metav1.LabelSelectorOpIn, Values: []string{rev}},
				{Key: mesh.LabelInjection, Operator: metav1.LabelSelectorOpDoesNotExist},
			}},
		}},
	}
}

// sidecarWorld is the seed world plus both injectors and three namespaces whose
// pods the from injector serves.
func sidecarWorld() *fakeCluster {
	w := seedWorld()
	w.objs = append(w.objs, injector(fromRev), injector(toRev))
	for _, ns := range []string{"shop", "cart", "pay"} {
		w.objs = append(w.objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{mesh.RevisionKey: fromRev}}})
	}
	return w
}

func TestSidecarPlan(t *testing.T) {
	t.Run("namespaces move one step at a time in name order", func(t *testing.T) {
		env, _ := sidecarWorld().env(t)
		out, err := run(t, env, "plan", "--mode", "Sidecar", "--from", fromRev, "--to", toRev, "--max-concurrent-restarts", "3")
		if err != nil {
			t.Fatalf("plan: %v\n%s", err, out)
		}
		golden(t, "plan/sidecar.txt", out)
	})
	t.Run("a missing injector is the orchestrator's refusal and leaves the steps unplanned", func(t *testing.T) {
		w := sidecarWorld()
		var kept []client.Object
		for _, o := range w.objs {
			if h, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); ok && h.Name == "istio-sidecar-injector-"+toRev {
				continue
			}
			kept = append(kept, o)
		}
		w.objs = kept
		env, _ := w.env(t)
		out, err := run(t, env, "plan", "--mode", "Sidecar", "--from", fromRev, "--to", toRev)
		if err == nil || !strings.Contains(err.Error(), "(InjectorMissing): spec.to: no sidecar injector of revision 1-18-1") {
			t.Errorf("err = %v", err)
		}
		if !strings.Contains(out, "Steps:     not planned") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("steps that stop short are refused", func(t *testing.T) {
		env, _ := sidecarWorld().env(t)
		_, err := run(t, env, "plan", "--mode", "Sidecar", "--from", fromRev, "--to", toRev, "--step", "namespaces=1")
		if err == nil || !strings.Contains(err.Error(), "the orchestrator would refuse") || !strings.Contains(err.Error(), "the last step moves 1 of 3 namespaces") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestSidecarStatusGolden(t *testing.T) {
	u := upgradeObj("sidecars-1-18-1", ztv1.PhaseProgressing, 1, nil)
	u.Spec.Mode = ztv1.ModeSidecar
	ns := func(s string) *intstr.IntOrString { v := intstr.Parse(s); return &v }
	u.Spec.Steps = []ztv1.Step{{Namespaces: ns("1"), Pause: &ztv1.Pause{}}, {Namespaces: ns("100%")}}
	u.Status.StepStage = "MovingNamespaces"
	u.Status.StepStartedAt = ptr.To(metav1.NewTime(testNow.Add(-20 * time.Second)))
	u.Status.TotalNamespaces, u.Status.CanaryNamespaces = 3, 1
	u.Status.Message = "step 1: namespace pay: restarting 1 of 2 workloads"
	u.Status.Namespaces = []ztv1.NamespaceStatus{
		{Name: "cart", Step: 0, Phase: ztv1.NodeCanary, Verified: true, Workloads: []ztv1.RestartRecord{{Kind: "Deployment", Name: "cart", Done: true}}},
		{Name: "pay", Step: 1, Phase: ztv1.NodeMoving, Workloads: []ztv1.RestartRecord{{Kind: "Deployment", Name: "pay", Done: true}, {Kind: "StatefulSet", Name: "ledger"}}},
		{Name: "shop", Step: 1, Phase: ztv1.NodeStable},
	}
	u.Status.Gateways = []ztv1.GatewayStatus{{Namespace: "istio-ingress", Name: "ingressgateway", Revision: fromRev, Pods: 2}}
	u.Status.Conditions = []metav1.Condition{
		cond(ztv1.ConditionReady, "True", "PreflightPassed", "3 namespaces in scope; istiod-1-18-1 is ready and its injector selects them once relabelled", 3*time.Minute),
		cond(ztv1.ConditionGateways, "True", "Inventoried", "1 gateway stays on 1-18-0: istio-ingress/ingressgateway", 3*time.Minute),
	}
	var b strings.Builder
	renderStatus(&b, u, testNow)
	golden(t, "status/sidecar.txt", b.String())
}

func TestVirtualServiceRouteFlags(t *testing.T) {
	o := &specOptions{from: fromRev, to: toRev, virtualService: "reviews", destinationRule: "reviews",
		stable: "reviews:9080", stableSubset: "v1", canarySubset: "v2", automaticRollback: true}
	u, err := o.fromFlags("bookinfo")
	if err != nil {
		t.Fatal(err)
	}
	r := u.Spec.Route
	if r.VirtualService == nil || *r.VirtualService != (ztv1.VirtualServiceRef{Namespace: "bookinfo", Name: "reviews", DestinationRule: "reviews"}) ||
		r.Stable != (ztv1.BackendRef{Namespace: "bookinfo", Name: "reviews", Port: 9080, Subset: "v1"}) ||
		r.Canary != (ztv1.BackendRef{Namespace: "bookinfo", Name: "reviews", Port: 9080, Subset: "v2"}) {
		t.Errorf("route = %+v / %+v / %+v", r.VirtualService, r.Stable, r.Canary)
	}
	o.destinationRule = ""
	if _, err := o.fromFlags("bookinfo"); err == nil || !strings.Contains(err.Error(), "--virtual-service needs --destination-rule") {
		t.Errorf("without a DestinationRule: err = %v", err)
	}
}
