package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/kind/seed"
)

// printIstio shows what the charts installed: istio-cni, and per revision istiod with
// the ztunnel account it trusts, and the ztunnel DaemonSet with its node selector.
func (d *demo) printIstio(ctx context.Context) {
	var dss appsv1.DaemonSetList
	_ = d.c.List(ctx, &dss, client.InNamespace(seed.IstioNamespace))
	var deps appsv1.DeploymentList
	_ = d.c.List(ctx, &deps, client.InNamespace(seed.IstioNamespace))
	for _, ds := range dss.Items {
		fmt.Printf("    DaemonSet  %-16s %d/%d ready  nodeSelector %s  serviceAccount %s\n", ds.Name, ds.Status.NumberReady, ds.Status.DesiredNumberScheduled,
			selector(ds.Spec.Template.Spec.NodeSelector), ds.Spec.Template.Spec.ServiceAccountName)
	}
	for _, dep := range deps.Items {
		trusted := ""
		for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
			if e.Name == mesh.TrustedNodeAccountsEnv {
				trusted = e.Value
			}
		}
		fmt.Printf("    Deployment %-16s %d/%d available  CA_TRUSTED_NODE_ACCOUNTS=%s\n", dep.Name, dep.Status.AvailableReplicas, dep.Status.Replicas, trusted)
	}
}

func selector(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// printNodes shows each worker's revision label and the ztunnel revisions on it.
func (d *demo) printNodes(ctx context.Context) {
	var pods corev1.PodList
	_ = d.c.List(ctx, &pods, client.InNamespace(seed.IstioNamespace), client.MatchingLabels{mesh.LabelApp: mesh.AppZtunnel})
	zt := map[string][]string{}
	for _, p := range pods.Items {
		zt[p.Spec.NodeName] = append(zt[p.Spec.NodeName], p.Annotations[seed.RevisionKey])
	}
	for _, w := range d.workers {
		var n corev1.Node
		if err := d.c.Get(ctx, client.ObjectKey{Name: w}, &n); err != nil {
			continue
		}
		sort.Strings(zt[w])
		fmt.Printf("    %-16s istio.io/rev=%-8s ztunnel %s\n", w, n.Labels[seed.RevisionKey], strings.Join(zt[w], ","))
	}
}

// nodeLabels is every worker's revision label, to compare before and after.
func (d *demo) nodeLabels(ctx context.Context) string {
	var out []string
	for _, w := range d.workers {
		var n corev1.Node
		if err := d.c.Get(ctx, client.ObjectKey{Name: w}, &n); err == nil {
			out = append(out, w+"="+n.Labels[seed.RevisionKey])
		}
	}
	return strings.Join(out, " ")
}

// poll calls cond every 100 ms for at most a minute, printing its message every 10 s.
func poll(ctx context.Context, what string, cond func() (bool, string, error)) error {
	start, lastPrint := time.Now(), time.Now()
	for {
		ok, msg, err := cond()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Since(start) > time.Minute {
			return fmt.Errorf("wait for %s: gave up after a minute: %s", what, msg)
		}
		if time.Since(lastPrint) > 10*time.Second {
			fmt.Printf("    still waiting for %s: %s\n", what, msg)
			lastPrint = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
