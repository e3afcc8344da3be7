package orchestrator

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// injectorWebhookSuffix ends the name of every webhook of Istio's sidecar injector
// (rev.namespace.sidecar-injector.istio.io, namespace.sidecar-injector.istio.io, ...).
const injectorWebhookSuffix = "sidecar-injector.istio.io"

// injectorWebhook is one webhook of a sidecar injector, with the revision that
// serves it (the istio.io/rev label of its MutatingWebhookConfiguration).
type injectorWebhook struct {
	config   string
	name     string
	revision string
	tag      string
	selector labels.Selector
	// byLabel: the namespaceSelector requires a label the namespace carries (In,
	// Exists, matchLabels), so it enrols namespaces, not single pods.
	byLabel bool
}

// injectorWebhooks lists the sidecar injector webhooks of the cluster.
func (r *Reconciler) injectorWebhooks(ctx context.Context) ([]injectorWebhook, error) {
	var list admissionregistrationv1.MutatingWebhookConfigurationList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list MutatingWebhookConfigurations: %w", err)
	}
	var out []injectorWebhook
	for _, cfg := range list.Items {
		rev := cfg.Labels[revisionKey]
		if rev == "" {
			continue
		}
		for _, wh := range cfg.Webhooks {
			if !strings.HasSuffix(wh.Name, injectorWebhookSuffix) {
				continue
			}
			sel := labels.Everything()
			byLabel := false
			if wh.NamespaceSelector != nil {
				s, err := metav1.LabelSelectorAsSelector(wh.NamespaceSelector)
				if err != nil {
					continue // the API server refuses such a webhook too
				}
				sel = s
				reqs, _ := s.Requirements()
				for _, req := range reqs {
					if req.Operator() == selection.In || req.Operator() == selection.Equals || req.Operator() == selection.Exists {
						byLabel = true
					}
				}
			}
			out = append(out, injectorWebhook{config: cfg.Name, name: wh.Name, revision: rev, tag: cfg.Labels["istio.io/tag"], selector: sel, byLabel: byLabel})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].config+out[i].name < out[j].config+out[j].name })
	return out, nil
}

// relabelled returns a namespace's labels as ztcanary leaves them on the to
// revision: istio-injection removed (it would take precedence), istio.io/rev=to.
func relabelled(in map[string]string, to string) labels.Set {
	out := labels.Set{}
	for k, v := range in {
		out[k] = v
	}
	delete(out, injectionLabel)
	out[revisionKey] = to
	return out
}

// injectionLabels keeps the labels of a namespace that choose its injector.
func injectionLabels(in map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range []string{injectionLabel, revisionKey} {
		if v, ok := in[k]; ok {
			out[k] = v
		}
	}
	return out
}

// resolveNamespaces lists the namespaces of a Sidecar upgrade: those the selector
// picks, or by default those the from revision's injector enrols by label today.
func (r *Reconciler) resolveNamespaces(ctx context.Context, u *ztv1.RevisionUpgrade, hooks []injectorWebhook) ([]corev1.Namespace, error) {
	var list corev1.NamespaceList
	if u.Spec.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(u.Spec.NamespaceSelector)
		if err != nil {
			return nil, refused(reasonInvalid, "spec.namespaceSelector: %v", err)
		}
		if err := r.Client.List(ctx, &list, client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return nil, fmt.Errorf("list namespaces in scope: %w", err)
		}
		if len(list.Items) == 0 {
			return nil, refused("NoNamespaces", "spec.namespaceSelector: no namespace matches %s; nothing to upgrade", sel.String())
		}
		return list.Items, nil
	}
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var out []corev1.Namespace
	for _, ns := range list.Items {
		for _, h := range hooks {
			if h.revision == u.Spec.From && h.byLabel && h.selector.Matches(labels.Set(ns.Labels)) {
				out = append(out, ns)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, refused("NoNamespaces", "spec.namespaceSelector: unset, so the scope is the namespaces enrolled in the %s injector, and there are none (labelled %s=%s, or %s=enabled where %s serves the default injection); label them, or set spec.namespaceSelector", u.Spec.From, revisionKey, u.Spec.From, injectionLabel, u.Spec.From)
	}
	return out, nil
}

// preflightSidecar checks, before anything changes, that the to revision can take
// the namespaces over: istiod-<to> is Ready; both revisions have an injector; once
// relabelled, every namespace is selected by a to webhook and by no webhook of
// another revision. It returns the namespaces in scope.
func (r *Reconciler) preflightSidecar(ctx context.Context, u *ztv1.RevisionUpgrade) ([]corev1.Namespace, error) {
	ns := u.Spec.Sidecar.IstiodNamespace
	if ns == "" {
		ns = "istio-system"
	}
	name := "istiod-" + u.Spec.To
	var istiod appsv1.Deployment
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &istiod); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, refused("IstiodMissing", "spec.to: no istiod Deployment %s/%s: revision %s is not installed (helm install istiod-%s istio/istiod -n %s --set revision=%s)", ns, name, u.Spec.To, u.Spec.To, ns, u.Spec.To)
		}
		return nil, fmt.Errorf("get istiod %s/%s: %w", ns, name, err)
	}
	if !deploymentAvailable(&istiod) {
		return nil, istiodNotReady(&istiod)
	}
	hooks, err := r.injectorWebhooks(ctx)
	if err != nil {
		return nil, err
	}
	for _, rev := range []struct{ field, rev, why string }{
		{"spec.to", u.Spec.To, "pods would get no new proxy"},
		{"spec.from", u.Spec.From, "rollback could not give pods their proxy back"},
	} {
		if !hasInjector(hooks, rev.rev) {
			return nil, refused("InjectorMissing", "%s: no sidecar injector of revision %s (a MutatingWebhookConfiguration labelled %s=%s with *.%s webhooks): %s", rev.field, rev.rev, revisionKey, rev.rev, injectorWebhookSuffix, rev.why)
		}
	}
	scope, err := r.resolveNamespaces(ctx, u, hooks)
	if err != nil {
		return nil, err
	}
	for _, n := range scope {
		if n.Labels[injectionLabel] == "disabled" {
			return nil, refused("InjectionDisabled", "spec.namespaceSelector: namespace %s has %s=disabled: its pods get no sidecar today and moving it would inject them; leave it out of spec.namespaceSelector", n.Name, injectionLabel)
		}
		after := relabelled(n.Labels, u.Spec.To)
		var mine, others []string
		for _, h := range hooks {
			if !h.selector.Matches(after) {
				continue
			}
			if h.revision == u.Spec.To && h.byLabel {
				mine = append(mine, h.config+"/"+h.name)
			} else if h.revision != u.Spec.To {
				others = append(others, fmt.Sprintf("%s/%s (revision %s)", h.config, h.name, h.revision))
			}
		}
		if len(mine) == 0 {
			return nil, refused("InjectorSelectorMismatch", "spec.to: namespace %s, relabelled %s=%s without %s, would not be selected by any webhook of the %s injector (%s): its pods would get no proxy; make one of its webhooks select %s=%s, or leave the namespace out of spec.namespaceSelector", n.Name, revisionKey, u.Spec.To, injectionLabel, u.Spec.To, strings.Join(injectorConfigs(hooks, u.Spec.To), ", "), revisionKey, u.Spec.To)
		}
		if len(others) > 0 {
			return nil, refused("InjectorConflict", "spec.to: namespace %s, relabelled %s=%s, would also be selected by %s: two injectors would mutate its pods; fix that webhook's namespaceSelector", n.Name, revisionKey, u.Spec.To, strings.Join(others, ", "))
		}
	}
	return scope, nil
}

func hasInjector(hooks []injectorWebhook, rev string) bool {
	for _, h := range hooks {
		if h.revision == rev {
			return true
		}
	}
	return false
}

func injectorConfigs(hooks []injectorWebhook, rev string) []string {
	var out []string
	for _, h := range hooks {
		if h.revision == rev && !slices.Contains(out, h.config) {
			out = append(out, h.config)
		}
	}
	return out
}

// gatewayInventory finds the gateway proxies of the cluster (pods injected with a
// gateway template, or labelled as Istio gateways) and the revision each runs, so
// the upgrade says which gateways move with their namespace and which it leaves.
func (r *Reconciler) gatewayInventory(ctx context.Context, inScope map[string]bool) ([]ztv1.GatewayStatus, error) {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("list pods for the gateway inventory: %w", err)
	}
	type key struct{ ns, name string }
	found := map[key]*ztv1.GatewayStatus{}
	revs := map[key]map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || podFinished(p) || !isGatewayPod(p) {
			continue
		}
		k := key{p.Namespace, workloadName(p)}
		g, ok := found[k]
		if !ok {
			g = &ztv1.GatewayStatus{Namespace: k.ns, Name: k.name, InScope: inScope[k.ns]}
			found[k] = g
			revs[k] = map[string]bool{}
		}
		g.Pods++
		rev := proxyRevision(p)
		if rev == "" {
			rev = p.Labels[revisionKey]
		}
		if rev == "" {
			rev = "unknown"
		}
		revs[k][rev] = true
	}
	out := make([]ztv1.GatewayStatus, 0, len(found))
	for k, g := range found {
		g.Revision = strings.Join(sortedKeys(revs[k]), ",")
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// isGatewayPod recognises Istio gateway proxies: injected with the gateway template
// (inject.istio.io/templates), labelled istio=ingressgateway/egressgateway as the
// gateway chart does, or deployed by Istio for a Gateway API Gateway.
func isGatewayPod(p *corev1.Pod) bool {
	if strings.Contains(p.Annotations["inject.istio.io/templates"], "gateway") {
		return true
	}
	if v := p.Labels["istio"]; strings.HasSuffix(v, "gateway") {
		return true
	}
	_, managed := p.Labels["gateway.istio.io/managed"]
	return managed
}

// workloadName names a pod's workload: its controller, less the ReplicaSet's
// pod-template-hash suffix for a Deployment's pods.
func workloadName(p *corev1.Pod) string {
	ref := metav1.GetControllerOfNoCopy(p)
	if ref == nil {
		return p.Name
	}
	if ref.Kind == "ReplicaSet" {
		if h := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; h != "" {
			return strings.TrimSuffix(ref.Name, "-"+h)
		}
	}
	return ref.Name
}

// gatewaySummary is the Gateways condition's message.
func gatewaySummary(gws []ztv1.GatewayStatus, to string) string {
	if len(gws) == 0 {
		return "no gateway proxies found"
	}
	var parts []string
	for _, g := range gws {
		where := "not in scope: upgrade it separately"
		if g.InScope {
			where = "in scope: moves to " + to + " with its namespace"
		}
		parts = append(parts, fmt.Sprintf("%s/%s runs %s (%d pods, %s)", g.Namespace, g.Name, g.Revision, g.Pods, where))
	}
	return strings.Join(parts, "; ")
}
