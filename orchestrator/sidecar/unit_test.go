package sidecar

import (
	"context"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
)

func injectedPod(name, rev, restart string, containers string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}}}
	if rev != "" {
		p.Annotations[mesh.RevisionKey] = rev
		p.Annotations[mesh.AnnotationSidecarStatus] = `{"initContainers":["istio-init"],` + containers + `,"volumes":["istio-envoy"],"revision":"` + rev + `"}`
	}
	if restart != "" {
		p.Annotations[ztv1.AnnotationRestart] = restart
	}
	return p
}

func TestProxyRevision(t *testing.T) {
	sidecar := `"containers":["istio-proxy"]`
	cases := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"an injected pod carries its injector's revision", injectedPod("a", "1-18-1", "", sidecar), "1-18-1"},
		{"a pod without the status annotation has no proxy", injectedPod("a", "", "", sidecar), ""},
		{"a native sidecar (init container) counts", func() *corev1.Pod {
			p := injectedPod("a", "1-18-1", "", `"containers":[]`)
			p.Annotations[mesh.AnnotationSidecarStatus] = `{"initContainers":["istio-validation","istio-proxy"],"containers":[],"revision":"1-18-1"}`
			return p
		}(), "1-18-1"},
		{"status and revision annotation must agree", func() *corev1.Pod {
			p := injectedPod("a", "1-18-1", "", sidecar)
			p.Annotations[mesh.RevisionKey] = "1-18-0"
			return p
		}(), ""},
		{"an older injector's revision label counts", func() *corev1.Pod {
			p := injectedPod("a", "1-18-1", "", sidecar)
			delete(p.Annotations, mesh.RevisionKey)
			p.Labels[mesh.RevisionKey] = "1-18-1"
			return p
		}(), "1-18-1"},
		{"a status without the proxy container is no proxy", injectedPod("a", "1-18-1", "", `"containers":["other"]`), ""},
		{"a malformed status is no proxy", func() *corev1.Pod {
			p := injectedPod("a", "1-18-1", "", sidecar)
			p.Annotations[mesh.AnnotationSidecarStatus] = "{"
			return p
		}(), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := mesh.ProxyRevision(tc.pod); got != tc.want {
				t.Errorf("proxyRevision = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestJudgeRestarts(t *testing.T) {
	const to, from = "1-18-1", "1-18-0"
	sidecar := `"containers":["istio-proxy"]`
	target := "1-18-1 by u/12345678"
	withTemplate := func(v *string, rolledOut bool, pods ...*corev1.Pod) *sidecarWorkload {
		w := &sidecarWorkload{kind: "Deployment", name: "web", template: &corev1.PodTemplateSpec{}, rolledOut: rolledOut, desired: int32(len(pods)), pods: pods}
		if v != nil {
			w.template.Annotations = map[string]string{ztv1.AnnotationRestart: *v}
		}
		return w
	}
	forward := []struct {
		name string
		w    *sidecarWorkload
		want restartState
	}{
		{"a template without the target value needs a restart", withTemplate(nil, true, injectedPod("p1", from, "", sidecar)), restartNeeded},
		{"old pods left means rolling", withTemplate(&target, false, injectedPod("p1", from, "", sidecar), injectedPod("p2", to, target, sidecar)), restartRolling},
		{"rolled out with only new pods is done", withTemplate(&target, true, injectedPod("p2", to, target, sidecar)), restartDone},
		{"a new pod with the old proxy fails", withTemplate(&target, false, injectedPod("p2", from, target, sidecar)), restartFailed},
		{"a new pod without a proxy fails", withTemplate(&target, false, injectedPod("p2", "", target, sidecar)), restartFailed},
		{"status says rolled out but an old pod is still seen: rolling", withTemplate(&target, true, injectedPod("p1", from, "", sidecar), injectedPod("p2", to, target, sidecar)), restartRolling},
	}
	for _, tc := range forward {
		t.Run("forward: "+tc.name, func(t *testing.T) {
			if got, msg := judgeForward(tc.w, target, to); got != tc.want {
				t.Errorf("judgeForward = %d (%s), want %d", got, msg, tc.want)
			}
		})
	}
	back := []struct {
		name   string
		w      *sidecarWorkload
		target *string
		want   restartState
	}{
		{"the restart annotation still set needs a restart back", withTemplate(&target, true, injectedPod("p2", to, target, sidecar)), nil, restartNeeded},
		{"removed annotation and old-template pods with the from proxy is done", withTemplate(nil, true, injectedPod("p1", from, "", sidecar)), nil, restartDone},
		{"a pod with the to proxy left means rolling", withTemplate(nil, false, injectedPod("p1", from, "", sidecar), injectedPod("p2", to, target, sidecar)), nil, restartRolling},
		{"a recorded earlier value is written back", withTemplate(ptr.To("old"), true, injectedPod("p1", from, "old", sidecar)), ptr.To("old"), restartDone},
	}
	for _, tc := range back {
		t.Run("back: "+tc.name, func(t *testing.T) {
			if got, msg := judgeBack(tc.w, tc.target, to); got != tc.want {
				t.Errorf("judgeBack = %d (%s), want %d", got, msg, tc.want)
			}
		})
	}
	t.Run("back: a namespace whose own labels chose to keeps the to proxy", func(t *testing.T) {
		w := withTemplate(nil, true, injectedPod("p1", to, "", sidecar))
		if got, msg := judgeBack(w, nil, ""); got != restartDone {
			t.Errorf("judgeBack = %d (%s), want done", got, msg)
		}
	})
}

// chartInjector is a revision's injector webhooks as Istio's chart renders them
// (rev.namespace and rev.object; the default tag adds namespace and object).
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

// TestPreflightSidecar checks the scope the sidecar preflight resolves; what it
// refuses is in TestPreflightRefusesBadInputAndChangesNothing (docs/refusals-preflight.md).
func TestPreflightSidecar(t *testing.T) {
	const from, to = "1-18-0", "1-18-1"
	base := func() []client.Object {
		return []client.Object{
			availableIstiod(from), availableIstiod(to),
			chartInjector(from, ""), chartInjector(from, "default"), chartInjector(to, ""),
			namespace("kube-system", nil), namespace("default", nil),
			namespace("shop", map[string]string{mesh.LabelInjection: "enabled"}),
			namespace("cart", map[string]string{mesh.RevisionKey: from}),
			namespace("trap", map[string]string{mesh.RevisionKey: from, mesh.LabelInjection: "enabled"}),
			namespace("off", map[string]string{mesh.LabelInjection: "disabled"}),
		}
	}
	cases := []struct {
		name     string
		objs     []client.Object
		selector *metav1.LabelSelector
		scope    []string
	}{
		{"the default scope is what the from injector enrols by label", base(), nil, []string{"cart", "shop", "trap"}},
		{"a selector picks its namespaces", base(), &metav1.LabelSelector{MatchLabels: map[string]string{mesh.LabelInjection: "enabled"}}, []string{"shop", "trap"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(s); err != nil {
				t.Fatal(err)
			}
			r := &Driver{Env: &drive.Env{Client: fake.NewClientBuilder().WithScheme(s).WithObjects(tc.objs...).Build(), Log: zaptest.NewLogger(t)}}
			u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{Mode: ztv1.ModeSidecar, From: from, To: to, NamespaceSelector: tc.selector}}
			scope, err := r.preflightSidecar(context.Background(), u)
			if err != nil {
				t.Fatalf("unexpected refusal: %v", err)
			}
			var names []string
			for _, n := range scope {
				names = append(names, n.Name)
			}
			if strings.Join(names, ",") != strings.Join(tc.scope, ",") {
				t.Errorf("scope %v, want %v", names, tc.scope)
			}
		})
	}
}
