package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
)

// Inventory is which Istio revisions exist and what uses each.
type Inventory struct {
	Istiod     []Workload          `json:"istiod"`
	Ztunnel    []Workload          `json:"ztunnel"`
	Webhooks   []Webhook           `json:"webhooks"`
	NodeLabel  string              `json:"nodeLabel"`
	Nodes      map[string][]string `json:"nodes"`
	Namespaces []NamespaceUse      `json:"namespaces"`
}

// Workload is an istiod Deployment or a ztunnel DaemonSet of a revision.
type Workload struct {
	Revision  string `json:"revision"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Ready     int32  `json:"ready"`
	Desired   int32  `json:"desired"`
	// NodeSelector is the ztunnel's nodeSelector value for the node label.
	NodeSelector string `json:"nodeSelector,omitempty"`
}

// Webhook is an injection MutatingWebhookConfiguration of a revision (or a tag).
type Webhook struct {
	Revision string `json:"revision"`
	Tag      string `json:"tag,omitempty"`
	Name     string `json:"name"`
}

// NamespaceUse is a namespace enrolled in the mesh: ambient (served by the ztunnel
// of its node's revision), or sidecar by revision or by istio-injection.
type NamespaceUse struct {
	Namespace string `json:"namespace"`
	Mode      string `json:"mode"`
	Revision  string `json:"revision"`
	Note      string `json:"note,omitempty"`
}

func newInventoryCommand(env *Env) *cobra.Command {
	var nodeLabel, output string
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "List the Istio revisions: istiod, ztunnel, webhooks, and the nodes and namespaces of each",
		Long: `Reads the cluster's istiod Deployments (label app=istiod), ztunnel DaemonSets
(pods labelled app=ztunnel, revision in the istio.io/rev annotation or label), the
injection MutatingWebhookConfigurations (label istio.io/rev, istio.io/tag for
tags), the nodes grouped by the node label (istio.io/rev), and the namespaces
enrolled by istio.io/dataplane-mode=ambient, istio.io/rev or istio-injection
(which takes precedence over istio.io/rev).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" {
				return fmt.Errorf("%w: --output %q: want json", ErrRefused, output)
			}
			cl, err := env.clients()
			if err != nil {
				return err
			}
			inv, err := readInventory(cmd.Context(), cl.Client, nodeLabel)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(inv)
			}
			inv.render(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().StringVar(&nodeLabel, "node-label", ztv1.DefaultNodeLabel, "node label key that pins revisions")
	cmd.Flags().StringVarP(&output, "output", "o", "", "json: print the inventory as JSON")
	return cmd
}

// revisionOf reads a revision as Istio's charts write it (mesh.Revision: the
// istio.io/rev annotation, as on ztunnel, or label, as on istiod and webhooks),
// "default" when there is none.
func revisionOf(obj metav1.Object) string {
	if r := mesh.Revision(obj); r != "" {
		return r
	}
	return mesh.DefaultRevision
}

func readInventory(ctx context.Context, c client.Client, nodeLabel string) (*Inventory, error) {
	inv := &Inventory{NodeLabel: nodeLabel, Nodes: map[string][]string{}}
	var deps appsv1.DeploymentList
	if err := c.List(ctx, &deps, client.MatchingLabels{mesh.LabelApp: mesh.AppIstiod}); err != nil {
		return nil, fmt.Errorf("list istiod deployments: %w", err)
	}
	for _, d := range deps.Items {
		inv.Istiod = append(inv.Istiod, Workload{
			Revision: revisionOf(&d), Namespace: d.Namespace, Name: d.Name,
			Ready: d.Status.AvailableReplicas, Desired: replicasOf(d.Spec.Replicas),
		})
	}
	var dss appsv1.DaemonSetList
	if err := c.List(ctx, &dss); err != nil {
		return nil, fmt.Errorf("list daemonsets: %w", err)
	}
	for _, d := range dss.Items {
		if !mesh.IsZtunnelDaemonSet(&d) {
			continue
		}
		rev := mesh.DaemonSetRevision(&d)
		if rev == "" {
			rev = mesh.DefaultRevision
		}
		inv.Ztunnel = append(inv.Ztunnel, Workload{
			Revision: rev, Namespace: d.Namespace, Name: d.Name,
			Ready: d.Status.NumberReady, Desired: d.Status.DesiredNumberScheduled,
			NodeSelector: d.Spec.Template.Spec.NodeSelector[nodeLabel],
		})
	}
	var hooks admissionregistrationv1.MutatingWebhookConfigurationList
	if err := c.List(ctx, &hooks); err != nil {
		return nil, fmt.Errorf("list mutatingwebhookconfigurations: %w", err)
	}
	for _, h := range hooks.Items {
		_, hasRev := h.Labels[mesh.RevisionKey]
		if !hasRev && !strings.HasPrefix(h.Name, "istio-sidecar-injector") && !strings.HasPrefix(h.Name, "istio-revision-tag-") {
			continue
		}
		inv.Webhooks = append(inv.Webhooks, Webhook{Revision: revisionOf(&h), Tag: h.Labels[mesh.LabelTag], Name: h.Name})
	}
	var nodes corev1.NodeList
	if err := c.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes.Items {
		rev, ok := n.Labels[nodeLabel]
		if !ok {
			rev = "(unlabelled)"
		}
		inv.Nodes[rev] = append(inv.Nodes[rev], n.Name)
	}
	var nss corev1.NamespaceList
	if err := c.List(ctx, &nss); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for _, ns := range nss.Items {
		if use, ok := namespaceUse(ns); ok {
			inv.Namespaces = append(inv.Namespaces, use)
		}
	}
	inv.sort()
	return inv, nil
}

// namespaceUse says how a namespace is enrolled, by Istio's precedence:
// istio.io/dataplane-mode=ambient makes it ambient; for sidecars istio-injection
// wins over istio.io/rev.
func namespaceUse(ns corev1.Namespace) (NamespaceUse, bool) {
	l := ns.Labels
	rev, hasRev := l[mesh.RevisionKey]
	use := NamespaceUse{Namespace: ns.Name}
	switch {
	case mesh.NamespaceAmbient(l):
		use.Mode, use.Revision = "ambient", "(node's ztunnel)"
		if hasRev {
			use.Revision = rev
			use.Note = "istio.io/rev picks the waypoint's control plane; ztunnel is per node"
		}
	case l[mesh.LabelInjection] == mesh.InjectionEnabled:
		use.Mode, use.Revision = "sidecar", mesh.DefaultRevision
		if hasRev {
			use.Note = "istio-injection=enabled takes precedence over istio.io/rev=" + rev
		}
	case hasRev && l[mesh.LabelInjection] != mesh.InjectionDisabled:
		use.Mode, use.Revision = "sidecar", rev
	default:
		return use, false
	}
	return use, true
}

func (inv *Inventory) sort() {
	byRev := func(ws []Workload) {
		sort.Slice(ws, func(i, j int) bool {
			if ws[i].Revision != ws[j].Revision {
				return ws[i].Revision < ws[j].Revision
			}
			return ws[i].Namespace+"/"+ws[i].Name < ws[j].Namespace+"/"+ws[j].Name
		})
	}
	byRev(inv.Istiod)
	byRev(inv.Ztunnel)
	sort.Slice(inv.Webhooks, func(i, j int) bool { return inv.Webhooks[i].Name < inv.Webhooks[j].Name })
	for _, ns := range inv.Nodes {
		sort.Strings(ns)
	}
	sort.Slice(inv.Namespaces, func(i, j int) bool {
		a, b := inv.Namespaces[i], inv.Namespaces[j]
		if a.Revision != b.Revision {
			return a.Revision < b.Revision
		}
		return a.Namespace < b.Namespace
	})
}

func (inv *Inventory) render(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	section := func(title string, empty bool, header string) bool {
		fmt.Fprintln(tw, title)
		if empty {
			fmt.Fprintln(tw, "  (none)")
			return false
		}
		fmt.Fprintln(tw, header)
		return true
	}
	if section("Control planes (istiod):", len(inv.Istiod) == 0, "  REVISION\tNAMESPACE\tDEPLOYMENT\tAVAILABLE") {
		for _, d := range inv.Istiod {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d/%d\n", d.Revision, d.Namespace, d.Name, d.Ready, d.Desired)
		}
	}
	if section("ztunnel:", len(inv.Ztunnel) == 0, "  REVISION\tNAMESPACE\tDAEMONSET\tREADY\tNODE SELECTOR") {
		for _, d := range inv.Ztunnel {
			sel := "-"
			if d.NodeSelector != "" {
				sel = inv.NodeLabel + "=" + d.NodeSelector
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d/%d\t%s\n", d.Revision, d.Namespace, d.Name, d.Ready, d.Desired, sel)
		}
	}
	if section("Injection webhooks (MutatingWebhookConfiguration):", len(inv.Webhooks) == 0, "  REVISION\tTAG\tNAME") {
		for _, h := range inv.Webhooks {
			tag := h.Tag
			if tag == "" {
				tag = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", h.Revision, tag, h.Name)
		}
	}
	revs := make([]string, 0, len(inv.Nodes))
	for r := range inv.Nodes {
		revs = append(revs, r)
	}
	sort.Strings(revs)
	if section(fmt.Sprintf("Nodes by %s:", inv.NodeLabel), len(revs) == 0, "  REVISION\tNODES\tNAMES") {
		for _, r := range revs {
			fmt.Fprintf(tw, "  %s\t%d\t%s\n", r, len(inv.Nodes[r]), strings.Join(inv.Nodes[r], ", "))
		}
	}
	if section("Namespaces:", len(inv.Namespaces) == 0, "  REVISION\tMODE\tNAMESPACE\tNOTE") {
		for _, n := range inv.Namespaces {
			note := n.Note
			if note == "" {
				note = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", n.Revision, n.Mode, n.Namespace, note)
		}
	}
	_ = tw.Flush()
}

func replicasOf(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}
