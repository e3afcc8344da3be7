// Package seed installs the seed topology of an ambient revision upgrade on a
// cluster, the way an operator sets it up by hand before ztcanary takes over: worker
// nodes labelled with the stable revision, then Istio's own Helm charts, rendered by
// kind/tools/istiocharts (see Render): istio-cni once, and per revision istiod
// (Deployment istiod-<rev>, trusting its ztunnel's ServiceAccount through
// CA_TRUSTED_NODE_ACCOUNTS) and ztunnel (DaemonSet and ServiceAccount ztunnel-<rev>,
// nodeSelector istio.io/rev=<rev>, the revision in the istio.io/rev annotation), all
// with the ambient profile and server-side applied; and a Bookinfo-like workload
// namespace per revision enrolled in ambient. The demo and the tests share it.
//
// The charts' admission webhooks are not installed: no istiod serves them in the
// simulated cluster, and a webhook the API server cannot reach fails (injector,
// failurePolicy Fail) or slows (validator) every write it matches. See Installed.
package seed

import (
	"context"
	"fmt"
	"regexp"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ztcanary/ztcanary/internal/mesh"
)

// Names of the seed topology.
const (
	IstioNamespace = "istio-system"
	// RevisionKey is Istio's revision label and annotation (mesh.RevisionKey).
	RevisionKey = mesh.RevisionKey
	// Apps are the workloads deployed per revision, two replicas each.
	AppReplicas = 2
	// Profile is the charts' profile value: Istio's ambient mode.
	Profile = "ambient"
)

// Apps are the workloads of each revision's namespace.
var Apps = []string{"productpage", "reviews"}

// AppNamespace is the workload namespace of a revision.
func AppNamespace(rev string) string { return "bookinfo-" + rev }

// IstiodName is the name of a revision's istiod Deployment (and Service).
func IstiodName(rev string) string { return "istiod-" + rev }

// ZtunnelName is a revision's ztunnel DaemonSet and ServiceAccount: the chart's
// resourceName, so that two revisions can live side by side in one namespace.
func ZtunnelName(rev string) string { return "ztunnel-" + rev }

// CNIRelease is istio-cni, installed once per cluster.
func CNIRelease() Release {
	return Release{Chart: ChartCNI, Set: []string{"profile=" + Profile}}
}

// IstiodRelease is a revision's istiod, trusting the ServiceAccount of the same
// revision's ztunnel (the chart turns trustedZtunnelName into
// CA_TRUSTED_NODE_ACCOUNTS=<namespace>/<name>; without it istiod trusts only
// <namespace>/ztunnel and a renamed ztunnel gets no certificate).
func IstiodRelease(rev string) Release {
	return Release{Chart: ChartIstiod, Revision: rev, Set: []string{"profile=" + Profile, "trustedZtunnelName=" + ZtunnelName(rev)}}
}

// ZtunnelRelease is a revision's ztunnel, restricted to the nodes labelled with it.
func ZtunnelRelease(rev string) Release {
	return Release{Chart: ChartZtunnel, Revision: rev, ResourceName: ZtunnelName(rev),
		NodeSelector: map[string]string{RevisionKey: rev}, Set: []string{"profile=" + Profile}}
}

// Installed reports whether Install applies a rendered object: everything but the
// admission webhook configurations (see the package comment).
func Installed(o *unstructured.Unstructured) bool {
	if o.GetAPIVersion() != "admissionregistration.k8s.io/v1" {
		return true
	}
	switch o.GetKind() {
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		return false
	}
	return true
}

// revisionPattern is what Istio accepts as a revision: it becomes part of object
// names and label values.
var revisionPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Install labels nodes with the stable revision and installs istio-cni, then istiod,
// ztunnel and the workloads for each revision (revisions[0] is the stable one), and
// waits until every istiod is Available and the stable ztunnel Ready on every
// labelled node. Bad input (no revision, a malformed or repeated one, an unknown
// node) is refused before anything changes.
func Install(ctx context.Context, c client.Client, nodes []string, revisions ...string) error {
	if err := validate(ctx, c, nodes, revisions); err != nil {
		return err
	}
	releases := []Release{CNIRelease()}
	for _, rev := range revisions {
		releases = append(releases, IstiodRelease(rev), ZtunnelRelease(rev))
	}
	// Render everything before the first write, so a chart that fails changes nothing.
	var objs []*unstructured.Unstructured
	for _, r := range releases {
		rendered, err := Render(ctx, r)
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		for _, o := range rendered {
			if Installed(o) {
				objs = append(objs, o)
			}
		}
	}
	for _, n := range nodes {
		patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, RevisionKey, revisions[0]))
		if err := c.Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return fmt.Errorf("label node %s: %w", n, err)
		}
	}
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName(IstioNamespace)
	if err := Apply(ctx, c, append([]*unstructured.Unstructured{ns}, objs...)); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	for _, rev := range revisions {
		if err := create(ctx, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AppNamespace(rev), Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}}); err != nil {
			return err
		}
		for _, app := range Apps {
			if err := create(ctx, c, Deployment(AppNamespace(rev), app, AppReplicas)); err != nil {
				return err
			}
		}
	}
	// Big simulated clusters take a while to schedule a ztunnel on every node.
	timeout := max(2*time.Minute, time.Duration(len(nodes))*300*time.Millisecond)
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: IstioNamespace, Name: ZtunnelName(revisions[0])}, &ds); err != nil {
			return false, err
		}
		for _, rev := range revisions {
			var d appsv1.Deployment
			if err := c.Get(ctx, client.ObjectKey{Namespace: IstioNamespace, Name: IstiodName(rev)}, &d); err != nil || d.Status.AvailableReplicas < 1 {
				return false, client.IgnoreNotFound(err)
			}
		}
		return int(ds.Status.NumberReady) == len(nodes) && ds.Status.DesiredNumberScheduled == int32(len(nodes)), nil
	})
}

func validate(ctx context.Context, c client.Client, nodes []string, revisions []string) error {
	if len(revisions) == 0 {
		return fmt.Errorf("seed: no revision given; pass the stable revision first, e.g. 1-18-0")
	}
	seen := map[string]bool{}
	for i, rev := range revisions {
		if !revisionPattern.MatchString(rev) {
			return fmt.Errorf("seed: revision %d %q is not a DNS label (lower-case letters, digits and '-', e.g. 1-18-0)", i, rev)
		}
		if seen[rev] {
			return fmt.Errorf("seed: revision %q is given twice", rev)
		}
		seen[rev] = true
	}
	for _, n := range nodes {
		if err := c.Get(ctx, client.ObjectKey{Name: n}, &corev1.Node{}); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("seed: node %s does not exist", n)
			}
			return fmt.Errorf("seed: get node %s: %w", n, err)
		}
	}
	return nil
}

func create(ctx context.Context, c client.Client, objs ...client.Object) error {
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

// Deployment is a plain Deployment of one container labelled app=name.
func Deployment(ns, name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "example/" + name}}},
			},
		},
	}
}
