// Package seed installs the seed topology of an ambient revision upgrade on a
// cluster, the way an operator sets it up by hand before ztcanary takes over: worker
// nodes labelled with the stable revision, istiod and a ztunnel DaemonSet per
// revision (shaped like Istio's charts render them: pods labelled app=ztunnel, the
// revision in the istio.io/rev annotation, one ServiceAccount per revision trusted by
// istiod), and a Bookinfo-like workload namespace per revision enrolled in ambient.
// The demo and the tests share it.
package seed

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Names of the seed topology.
const (
	IstioNamespace = "istio-system"
	RevisionKey    = "istio.io/rev"
	// Apps are the workloads deployed per revision, two replicas each.
	AppReplicas = 2
)

// Apps are the workloads of each revision's namespace.
var Apps = []string{"productpage", "reviews"}

// AppNamespace is the workload namespace of a revision.
func AppNamespace(rev string) string { return "bookinfo-" + rev }

// ZtunnelServiceAccount is the ServiceAccount of a revision's ztunnel: the chart's
// default for the first (stable) revision, and resourceName for the others.
func ZtunnelServiceAccount(rev string, stable bool) string {
	if stable {
		return "ztunnel"
	}
	return "ztunnel-" + rev
}

// Install labels nodes with the stable revision and installs istiod, ztunnel and the
// workloads for each revision (revisions[0] is the stable one), then waits until the
// stable ztunnel is Ready on every labelled node.
func Install(ctx context.Context, c client.Client, nodes []string, revisions ...string) error {
	if len(revisions) == 0 {
		return fmt.Errorf("seed: no revision given")
	}
	for _, n := range nodes {
		patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, RevisionKey, revisions[0]))
		if err := c.Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return fmt.Errorf("label node %s: %w", n, err)
		}
	}
	if err := create(ctx, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}); err != nil {
		return err
	}
	var trusted []string
	for i, rev := range revisions {
		trusted = append(trusted, IstioNamespace+"/"+ZtunnelServiceAccount(rev, i == 0))
	}
	for i, rev := range revisions {
		sa := ZtunnelServiceAccount(rev, i == 0)
		if err := create(ctx, c,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: IstioNamespace, Name: sa}},
			Istiod(rev, trusted),
			Ztunnel(rev, sa),
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AppNamespace(rev), Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		); err != nil {
			return err
		}
		for _, app := range Apps {
			if err := create(ctx, c, Deployment(AppNamespace(rev), app, AppReplicas)); err != nil {
				return err
			}
		}
	}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: IstioNamespace, Name: "ztunnel-" + revisions[0]}, &ds); err != nil {
			return false, err
		}
		for _, rev := range revisions {
			var d appsv1.Deployment
			if err := c.Get(ctx, client.ObjectKey{Namespace: IstioNamespace, Name: "istiod-" + rev}, &d); err != nil || d.Status.AvailableReplicas < 1 {
				return false, client.IgnoreNotFound(err)
			}
		}
		return int(ds.Status.NumberReady) == len(nodes) && ds.Status.DesiredNumberScheduled == int32(len(nodes)), nil
	})
}

func create(ctx context.Context, c client.Client, objs ...client.Object) error {
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

// Istiod is a revision's istiod Deployment, trusting the given ztunnel accounts
// (CA_TRUSTED_NODE_ACCOUNTS, as the istio-discovery chart sets it).
func Istiod(rev string, trusted []string) *appsv1.Deployment {
	d := Deployment(IstioNamespace, "istiod-"+rev, 1)
	d.Labels = map[string]string{"app": "istiod", RevisionKey: rev}
	d.Spec.Template.Spec.Containers[0].Name = "discovery"
	value := ""
	for i, t := range trusted {
		if i > 0 {
			value += ","
		}
		value += t
	}
	d.Spec.Template.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "CA_TRUSTED_NODE_ACCOUNTS", Value: value}}
	return d
}

// Ztunnel is a revision's ztunnel DaemonSet as Istio's chart renders it with
// revision, resourceName and nodeSelector values: every revision selects app=ztunnel,
// so pods are attributed by ownerReference.
func Ztunnel(rev, serviceAccount string) *appsv1.DaemonSet {
	labels := map[string]string{"app": "ztunnel"}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + rev, Namespace: IstioNamespace, Annotations: map[string]string{RevisionKey: rev}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType, RollingUpdate: &appsv1.RollingUpdateDaemonSet{
				MaxSurge: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(0)),
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{RevisionKey: rev}},
				Spec: corev1.PodSpec{
					ServiceAccountName: serviceAccount,
					NodeSelector:       map[string]string{"kubernetes.io/os": "linux", RevisionKey: rev},
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}, {Operator: corev1.TolerationOpExists, Key: "CriticalAddonsOnly"}},
					Containers:         []corev1.Container{{Name: "istio-proxy", Image: "istio/ztunnel:" + rev}},
				},
			},
		},
	}
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
