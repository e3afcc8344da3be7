package ambient

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"go.uber.org/zap"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

// preflight checks, before anything moves, that the to revision can take over:
// istiod-<to> is Ready, the to ztunnel DaemonSet exists with its own ServiceAccount
// that istiod trusts, the from ztunnel exists, the workload namespaces exist, and
// the route and its backends exist, and the traffic test can tell the canary. It
// returns the route's snapshot for rollback.
func (d *Driver) preflight(ctx context.Context, u *ztv1.RevisionUpgrade) (*runtime.RawExtension, error) {
	if err := d.preflightRevision(ctx, u); err != nil {
		return nil, err
	}
	if tt := u.Spec.Analysis.TrafficTest; tt != nil {
		if _, err := trafficConfig(tt); err != nil {
			return nil, err
		}
	}
	return d.preflightRoute(ctx, u)
}

func (d *Driver) preflightRevision(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	ns := u.Spec.Ztunnel.Namespace
	name := "istiod-" + u.Spec.To
	istiod, err := d.AvailableIstiod(ctx, ns, u.Spec.To, fmt.Sprintf("spec.to: no istiod Deployment %s/%s; install the %s control plane first (helm install istiod-%s ... --set revision=%s)", ns, name, u.Spec.To, u.Spec.To, u.Spec.To))
	if err != nil {
		return err
	}
	dss, err := ztunnelDaemonSets(ctx, d.Client, ns)
	if err != nil {
		return err
	}
	from, ok := dss[u.Spec.From]
	if !ok {
		return plan.Refused("ZtunnelMissing", "spec.from: no ztunnel DaemonSet of revision %s in %s (pods labelled app=ztunnel, annotation istio.io/rev=%s)", u.Spec.From, ns, u.Spec.From)
	}
	to, ok := dss[u.Spec.To]
	if !ok {
		return plan.Refused("ZtunnelMissing", "spec.to: no ztunnel DaemonSet of revision %s in %s; install the ztunnel chart with revision=%s and resourceName=ztunnel-%s", u.Spec.To, ns, u.Spec.To, u.Spec.To)
	}
	sa := to.Spec.Template.Spec.ServiceAccountName
	if sa == "" || sa == "default" {
		return plan.Refused("ZtunnelServiceAccount", "spec.to: ztunnel DaemonSet %s/%s runs as the default ServiceAccount; give it its own (the chart's resourceName) so istiod can trust it", ns, to.Name)
	}
	if sa == from.Spec.Template.Spec.ServiceAccountName && from.Name != to.Name {
		// Sharing is allowed by Istio but makes the revisions indistinguishable to istiod.
		d.Log.Info("both ztunnel revisions share a ServiceAccount", zap.String("serviceAccount", sa))
	}
	var account corev1.ServiceAccount
	if err := d.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: sa}, &account); err != nil {
		if apierrors.IsNotFound(err) {
			return plan.Refused("ZtunnelServiceAccount", "spec.to: ztunnel DaemonSet %s/%s uses ServiceAccount %s, which does not exist; create it (the ztunnel chart does) or fix the DaemonSet's serviceAccountName", ns, to.Name, sa)
		}
		return fmt.Errorf("get ServiceAccount %s/%s: %w", ns, sa, err)
	}
	trusted := trustedAccounts(istiod, ns)
	if !trusted[ns+"/"+sa] {
		return plan.Refused("ZtunnelNotTrusted", "spec.to: istiod %s/%s does not trust ServiceAccount %s/%s (%s=%s): the %s ztunnel would get no certificate; add it to %s", ns, name, ns, sa, mesh.TrustedNodeAccountsEnv, joinKeys(trusted), u.Spec.To, mesh.TrustedNodeAccountsEnv)
	}
	for i, w := range u.Spec.Workloads {
		var wns corev1.Namespace
		if err := d.Client.Get(ctx, client.ObjectKey{Name: w.Namespace}, &wns); err != nil {
			if apierrors.IsNotFound(err) {
				return plan.Refused("WorkloadsMissing", "spec.workloads[%d].namespace: namespace %s does not exist", i, w.Namespace)
			}
			return err
		}
	}
	return nil
}

// trustedAccounts reads CA_TRUSTED_NODE_ACCOUNTS from istiod's containers (default:
// <ns>/ztunnel, as istiod itself defaults).
func trustedAccounts(d *appsv1.Deployment, ns string) map[string]bool {
	out := map[string]bool{}
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == mesh.TrustedNodeAccountsEnv {
				for _, a := range strings.Split(e.Value, ",") {
					if a = strings.TrimSpace(a); a != "" {
						out[a] = true
					}
				}
				return out
			}
		}
	}
	out[ns+"/ztunnel"] = true
	return out
}

func joinKeys(m map[string]bool) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}
