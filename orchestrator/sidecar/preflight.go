package sidecar

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
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
func (d *Driver) injectorWebhooks(ctx context.Context) ([]injectorWebhook, error) {
	var list admissionregistrationv1.MutatingWebhookConfigurationList
	if err := d.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list MutatingWebhookConfigurations: %w", err)
	}
	var out []injectorWebhook
	for _, cfg := range list.Items {
		rev := cfg.Labels[mesh.RevisionKey]
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
	delete(out, mesh.LabelInjection)
	out[mesh.RevisionKey] = to
	return out
}

// injectionLabels keeps the labels of a namespace that choose its injector.
func injectionLabels(in map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range []string{mesh.LabelInjection, mesh.RevisionKey} {
		if v, ok := in[k]; ok {
			out[k] = v
		}
	}
	return out
}

// resolveNamespaces lists the namespaces of a Sidecar upgrade: those the selector
// picks, or by default those the from revision's injector enrols by label today.
func (d *Driver) resolveNamespaces(ctx context.Context, u *ztv1.RevisionUpgrade, hooks []injectorWebhook) ([]corev1.Namespace, error) {
	var list corev1.NamespaceList
	if u.Spec.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(u.Spec.NamespaceSelector)
		if err != nil {
			return nil, plan.Refused(ztv1.ReasonInvalidSpec, "spec.namespaceSelector: %v", err)
		}
		if err := d.Client.List(ctx, &list, client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return nil, fmt.Errorf("list namespaces in scope: %w", err)
		}
		if len(list.Items) == 0 {
			return nil, plan.Refused("NoNamespaces", "spec.namespaceSelector: no namespace matches %s; nothing to upgrade", sel.String())
		}
		return list.Items, nil
	}
	if err := d.Client.List(ctx, &list); err != nil {
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
		return nil, plan.Refused("NoNamespaces", "spec.namespaceSelector: unset, so the scope is the namespaces enrolled in the %s injector, and there are none (labelled %s=%s, or %s=enabled where %s serves the default injection); label them, or set spec.namespaceSelector", u.Spec.From, mesh.RevisionKey, u.Spec.From, mesh.LabelInjection, u.Spec.From)
	}
	return out, nil
}

// preflightSidecar checks, before anything changes, that the to revision can take
// the namespaces over: istiod-<to> is Ready; both revisions have an injector; once
// relabelled, every namespace is selected by a to webhook and by no webhook of
// another revision. It returns the namespaces in scope.
func (d *Driver) preflightSidecar(ctx context.Context, u *ztv1.RevisionUpgrade) ([]corev1.Namespace, error) {
	ns := u.Spec.Sidecar.IstiodNamespace
	if ns == "" {
		ns = ztv1.DefaultIstioNamespace
	}
	name := "istiod-" + u.Spec.To
	if _, err := d.AvailableIstiod(ctx, ns, u.Spec.To, fmt.Sprintf("spec.to: no istiod Deployment %s/%s: revision %s is not installed (helm install istiod-%s istio/istiod -n %s --set revision=%s)", ns, name, u.Spec.To, u.Spec.To, ns, u.Spec.To)); err != nil {
		return nil, err
	}
	hooks, err := d.injectorWebhooks(ctx)
	if err != nil {
		return nil, err
	}
	for _, rev := range []struct{ field, rev, why string }{
		{"spec.to", u.Spec.To, "pods would get no new proxy"},
		{"spec.from", u.Spec.From, "rollback could not give pods their proxy back"},
	} {
		if !hasInjector(hooks, rev.rev) {
			return nil, plan.Refused("InjectorMissing", "%s: no sidecar injector of revision %s (a MutatingWebhookConfiguration labelled %s=%s with *.%s webhooks): %s", rev.field, rev.rev, mesh.RevisionKey, rev.rev, injectorWebhookSuffix, rev.why)
		}
	}
	scope, err := d.resolveNamespaces(ctx, u, hooks)
	if err != nil {
		return nil, err
	}
	for _, n := range scope {
		if n.Labels[mesh.LabelInjection] == "disabled" {
			return nil, plan.Refused("InjectionDisabled", "spec.namespaceSelector: namespace %s has %s=disabled: its pods get no sidecar today and moving it would inject them; leave it out of spec.namespaceSelector", n.Name, mesh.LabelInjection)
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
			return nil, plan.Refused("InjectorSelectorMismatch", "spec.to: namespace %s, relabelled %s=%s without %s, would not be selected by any webhook of the %s injector (%s): its pods would get no proxy; make one of its webhooks select %s=%s, or leave the namespace out of spec.namespaceSelector", n.Name, mesh.RevisionKey, u.Spec.To, mesh.LabelInjection, u.Spec.To, strings.Join(injectorConfigs(hooks, u.Spec.To), ", "), mesh.RevisionKey, u.Spec.To)
		}
		if len(others) > 0 {
			return nil, plan.Refused("InjectorConflict", "spec.to: namespace %s, relabelled %s=%s, would also be selected by %s: two injectors would mutate its pods; fix that webhook's namespaceSelector", n.Name, mesh.RevisionKey, u.Spec.To, strings.Join(others, ", "))
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
func (d *Driver) gatewayInventory(ctx context.Context, inScope map[string]bool) ([]ztv1.GatewayStatus, error) {
	var pods corev1.PodList
	if err := d.Client.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("list pods for the gateway inventory: %w", err)
	}
	type key struct{ ns, name string }
	found := map[key]*ztv1.GatewayStatus{}
	revs := map[key]map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || mesh.Finished(p) || !mesh.GatewayPod(p) {
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
		rev := mesh.ProxyRevision(p)
		if rev == "" {
			rev = p.Labels[mesh.RevisionKey]
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
