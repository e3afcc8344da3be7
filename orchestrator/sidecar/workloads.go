package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// sidecarWorkload is a Deployment, StatefulSet or DaemonSet of a namespace in scope,
// with its live pods.
type sidecarWorkload struct {
	kind     string
	name     string
	obj      client.Object
	template *corev1.PodTemplateSpec
	// rolledOut: the controller saw the current template and every replica is
	// updated and available.
	rolledOut bool
	// onDelete: the controller replaces pods only when they are deleted.
	onDelete bool
	// desired is the number of pods the workload wants.
	desired int32
	// pods are the live (not terminating, not finished) pods it owns.
	pods []*corev1.Pod
}

func (w *sidecarWorkload) key() string { return w.kind + "/" + w.name }

// restartValue is the template annotation a workload carries while its pods should
// run rev: the revision, the upgrade's name and a piece of its UID, so a value left
// by an earlier upgrade is never mistaken for this one's.
func restartValue(u *ztv1.RevisionUpgrade, rev string) string {
	uid := string(u.UID)
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return fmt.Sprintf("%s by %s/%s", rev, u.Name, uid)
}

// templateRestart returns the restart annotation of a pod template (nil: unset).
func templateRestart(t *corev1.PodTemplateSpec) *string {
	if v, ok := t.Annotations[ztv1.AnnotationRestart]; ok {
		return &v
	}
	return nil
}

func podRestart(p *corev1.Pod) *string {
	if v, ok := p.Annotations[ztv1.AnnotationRestart]; ok {
		return &v
	}
	return nil
}

func sameValue(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// injectable reports whether the injector would give the template's pods a proxy:
// not opted out (label or annotation sidecar.istio.io/inject=false) and not on the
// host network, which Istio never injects.
func injectable(t *corev1.PodTemplateSpec) bool {
	if t.Labels[mesh.SidecarInjectKey] == "false" || t.Annotations[mesh.SidecarInjectKey] == "false" {
		return false
	}
	return !t.Spec.HostNetwork
}

// namespaceWorkloads lists the Deployments, StatefulSets and DaemonSets of a
// namespace, sorted by kind and name, each with its live pods (attributed by owner
// reference, through the ReplicaSet for a Deployment).
func (d *Driver) namespaceWorkloads(ctx context.Context, ns string) ([]*sidecarWorkload, error) {
	var out []*sidecarWorkload
	byUID := map[types.UID]*sidecarWorkload{}
	var deps appsv1.DeploymentList
	if err := d.Client.List(ctx, &deps, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list Deployments in %s: %w", ns, err)
	}
	for i := range deps.Items {
		d := &deps.Items[i]
		want := drive.Replicas(d.Spec.Replicas)
		w := &sidecarWorkload{kind: "Deployment", name: d.Name, obj: d, template: &d.Spec.Template, desired: want,
			rolledOut: d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
				d.Status.Replicas == want && d.Status.AvailableReplicas == want}
		out = append(out, w)
		byUID[d.UID] = w
	}
	var stss appsv1.StatefulSetList
	if err := d.Client.List(ctx, &stss, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list StatefulSets in %s: %w", ns, err)
	}
	for i := range stss.Items {
		s := &stss.Items[i]
		want := drive.Replicas(s.Spec.Replicas)
		w := &sidecarWorkload{kind: "StatefulSet", name: s.Name, obj: s, template: &s.Spec.Template, desired: want,
			onDelete: s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType,
			rolledOut: s.Status.ObservedGeneration >= s.Generation && s.Status.UpdatedReplicas == want &&
				s.Status.Replicas == want && s.Status.ReadyReplicas == want}
		out = append(out, w)
		byUID[s.UID] = w
	}
	var dss appsv1.DaemonSetList
	if err := d.Client.List(ctx, &dss, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list DaemonSets in %s: %w", ns, err)
	}
	for i := range dss.Items {
		d := &dss.Items[i]
		want := d.Status.DesiredNumberScheduled
		w := &sidecarWorkload{kind: "DaemonSet", name: d.Name, obj: d, template: &d.Spec.Template, desired: want,
			onDelete: d.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType,
			rolledOut: d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedNumberScheduled == want &&
				d.Status.CurrentNumberScheduled == want && d.Status.NumberAvailable == want && d.Status.NumberUnavailable == 0}
		out = append(out, w)
		byUID[d.UID] = w
	}
	// Pods of a Deployment belong to its ReplicaSets.
	var rss appsv1.ReplicaSetList
	if err := d.Client.List(ctx, &rss, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list ReplicaSets in %s: %w", ns, err)
	}
	for i := range rss.Items {
		rs := &rss.Items[i]
		if ref := metav1.GetControllerOfNoCopy(rs); ref != nil {
			if w, ok := byUID[ref.UID]; ok {
				byUID[rs.UID] = w
			}
		}
	}
	var pods corev1.PodList
	if err := d.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list pods in %s: %w", ns, err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || mesh.Finished(p) {
			continue
		}
		if ref := metav1.GetControllerOfNoCopy(p); ref != nil {
			if w, ok := byUID[ref.UID]; ok {
				w.pods = append(w.pods, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	for _, w := range out {
		sort.Slice(w.pods, func(i, j int) bool { return w.pods[i].Name < w.pods[j].Name })
	}
	return out, nil
}

// restartState is where one workload is in its restart towards a revision.
type restartState int

const (
	// restartNeeded: the template does not carry the target value yet.
	restartNeeded restartState = iota
	// restartRolling: the template carries it; pods are being replaced.
	restartRolling
	// restartDone: rolled out, every pod from the target template with the right proxy.
	restartDone
	// restartFailed: a pod made from the target template has the wrong proxy.
	restartFailed
)

// judgeForward tells where a workload is in its move to rev, whose template value
// is target. A pod created from the target template without rev's proxy means the
// injector did not do its job: the upgrade must not go on.
func judgeForward(w *sidecarWorkload, target, rev string) (restartState, string) {
	if !sameValue(templateRestart(w.template), &target) {
		return restartNeeded, w.key() + ": not restarted yet"
	}
	onTarget := 0
	for _, p := range w.pods {
		fromTarget := sameValue(podRestart(p), &target)
		if fromTarget && mesh.ProxyRevision(p) != rev {
			return restartFailed, fmt.Sprintf("%s: pod %s was created after the namespace moved to %s but carries %s", w.key(), p.Name, rev, mesh.DescribeProxy(p))
		}
		if fromTarget {
			onTarget++
		}
	}
	if w.rolledOut && onTarget == len(w.pods) {
		return restartDone, ""
	}
	return restartRolling, fmt.Sprintf("%s: %d of %d pods restarted with the %s proxy", w.key(), onTarget, w.desired, rev)
}

// judgeBack tells where a workload is in its return from rev: its template carries
// target again (nil: the annotation removed), it rolled out, and no live pod has the
// rev proxy (rev "": the namespace's own labels choose rev, so only the template
// counts).
func judgeBack(w *sidecarWorkload, target *string, rev string) (restartState, string) {
	if !sameValue(templateRestart(w.template), target) {
		return restartNeeded, w.key() + ": not restarted back yet"
	}
	left := 0
	for _, p := range w.pods {
		if (rev != "" && mesh.ProxyRevision(p) == rev) || !sameValue(podRestart(p), target) {
			left++
		}
	}
	if w.rolledOut && left == 0 {
		return restartDone, ""
	}
	return restartRolling, fmt.Sprintf("%s: %d of %d pods still to restart off the %s proxy", w.key(), left, len(w.pods), rev)
}

// needsMove reports whether a workload must restart to get rev's proxy: it runs
// injectable pods and some live pod lacks that proxy (a workload scaled to zero, or
// whose pods already have it, is left alone).
func needsMove(w *sidecarWorkload, rev string) bool {
	if !injectable(w.template) {
		return false
	}
	for _, p := range w.pods {
		if mesh.ProxyRevision(p) != rev {
			return true
		}
	}
	return false
}

// restartPatch sets (or, with nil, removes) the template's restart annotation.
func restartPatch(value *string) ([]byte, error) {
	var v any
	if value != nil {
		v = *value
	}
	return json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{ztv1.AnnotationRestart: v}}}}})
}

// setRestart writes the template's restart annotation, which makes the workload's
// controller replace its pods by its own update strategy.
func (d *Driver) setRestart(ctx context.Context, w *sidecarWorkload, value *string) error {
	patch, err := restartPatch(value)
	if err != nil {
		return err
	}
	drive.CountWrite("restart")
	if err := d.Client.Patch(ctx, w.obj, client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
		return fmt.Errorf("restart %s/%s: %w", w.obj.GetNamespace(), w.key(), err)
	}
	return nil
}

// replaceOnDelete deletes, through the Eviction API (PodDisruptionBudgets apply),
// one pod not yet made from the target template of a workload whose controller
// replaces pods only on deletion, and only while all its other pods are ready: the
// rolling update that strategy leaves to the operator, one pod at a time.
func (d *Driver) replaceOnDelete(ctx context.Context, w *sidecarWorkload, target *string) error {
	if !w.onDelete || int32(len(w.pods)) < w.desired {
		return nil
	}
	var old *corev1.Pod
	for _, p := range w.pods {
		if !mesh.Ready(p) {
			return nil
		}
		if old == nil && !sameValue(podRestart(p), target) {
			old = p
		}
	}
	if old == nil {
		return nil
	}
	return d.Evict(ctx, []*corev1.Pod{old})
}
