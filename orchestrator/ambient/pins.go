package ambient

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
)

// FieldManager is the name ztcanary writes under, so other owners' fields are never
// taken over silently.
const FieldManager = "ztcanary"

// heldStrategyKey annotates a ztunnel DaemonSet that ztcanary holds at OnDelete with
// the update strategy it had before (JSON), until ztcanary gives it back. An upgrade
// that ends Failed (no automatic rollback) leaves the hold in place; the next upgrade
// reads its strategy here, not the OnDelete it finds, and gives the DaemonSet its own
// strategy back in the end.
const heldStrategyKey = "ztcanary.io/held-update-strategy"

// ztunnelDaemonSets returns the ztunnel DaemonSets of the namespace by revision.
// Istio's chart gives every revision the selector app=ztunnel, so DaemonSets are told
// apart by their revision, and their pods only by ownerReference.
func ztunnelDaemonSets(ctx context.Context, c client.Reader, ns string) (map[string]*appsv1.DaemonSet, error) {
	var list appsv1.DaemonSetList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list ztunnel DaemonSets in %s: %w", ns, err)
	}
	out := map[string]*appsv1.DaemonSet{}
	for i := range list.Items {
		ds := &list.Items[i]
		if !mesh.IsZtunnelDaemonSet(ds) {
			continue
		}
		if rev := mesh.Revision(ds); rev != "" {
			out[rev] = ds
		}
	}
	return out, nil
}

// pinTarget is one object ztcanary pins to the nodes of a revision.
type pinTarget struct {
	kind     string
	obj      client.Object
	template *corev1.PodTemplateSpec
	revision string
	// affinity: pin through required node affinity ORed with the handoff label
	// instead of nodeSelector (ztunnel DaemonSets during a Handoff).
	affinity bool
}

// pinTargets lists what the upgrade pins: both ztunnel DaemonSets and every
// Deployment and StatefulSet of the workload namespaces.
func (d *Driver) pinTargets(ctx context.Context, u *ztv1.RevisionUpgrade) ([]pinTarget, error) {
	dss, err := ztunnelDaemonSets(ctx, d.Client, u.Spec.Ztunnel.Namespace)
	if err != nil {
		return nil, err
	}
	handoff := u.Spec.NodeStrategy == ztv1.NodeStrategyHandoff
	var out []pinTarget
	for _, rev := range []string{u.Spec.From, u.Spec.To} {
		ds, ok := dss[rev]
		if !ok {
			return nil, fmt.Errorf("no ztunnel DaemonSet of revision %s in %s", rev, u.Spec.Ztunnel.Namespace)
		}
		out = append(out, pinTarget{kind: "DaemonSet", obj: ds, template: &ds.Spec.Template, revision: rev, affinity: handoff})
	}
	for _, w := range u.Spec.Workloads {
		var deps appsv1.DeploymentList
		if err := d.Client.List(ctx, &deps, client.InNamespace(w.Namespace)); err != nil {
			return nil, fmt.Errorf("list Deployments in %s: %w", w.Namespace, err)
		}
		for i := range deps.Items {
			d := &deps.Items[i]
			out = append(out, pinTarget{kind: "Deployment", obj: d, template: &d.Spec.Template, revision: w.Revision})
		}
		var sts appsv1.StatefulSetList
		if err := d.Client.List(ctx, &sts, client.InNamespace(w.Namespace)); err != nil {
			return nil, fmt.Errorf("list StatefulSets in %s: %w", w.Namespace, err)
		}
		for i := range sts.Items {
			s := &sts.Items[i]
			out = append(out, pinTarget{kind: "StatefulSet", obj: s, template: &s.Spec.Template, revision: w.Revision})
		}
	}
	return out, nil
}

// recordPins returns what each target's pinning fields hold before the upgrade.
func recordPins(u *ztv1.RevisionUpgrade, targets []pinTarget) []ztv1.PinRecord {
	key := u.Spec.NodeLabelOrDefault()
	out := make([]ztv1.PinRecord, 0, len(targets))
	for _, t := range targets {
		rec := ztv1.PinRecord{Kind: t.kind, Namespace: t.obj.GetNamespace(), Name: t.obj.GetName()}
		if v, ok := t.template.Spec.NodeSelector[key]; ok {
			rec.Value = &v
		}
		if t.affinity {
			b, _ := json.Marshal(t.template.Spec.Affinity)
			rec.Affinity = string(b)
		}
		if ds, ok := t.obj.(*appsv1.DaemonSet); ok {
			b, _ := json.Marshal(ds.Spec.UpdateStrategy)
			rec.UpdateStrategy = string(b)
			if held, ok := heldStrategy(ds); ok {
				rec.UpdateStrategy = held
			}
		}
		out = append(out, rec)
	}
	return out
}

// heldStrategy returns the strategy a DaemonSet had before ztcanary held it at
// OnDelete, if it is still held (someone who changed the strategy since has lifted
// the hold).
func heldStrategy(ds *appsv1.DaemonSet) (string, bool) {
	held, ok := ds.Annotations[heldStrategyKey]
	if !ok || ds.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
		return "", false
	}
	var s appsv1.DaemonSetUpdateStrategy
	if err := json.Unmarshal([]byte(held), &s); err != nil || s.Type == "" {
		return "", false
	}
	return held, true
}

// holdPatch is the merge patch of a DaemonSet's spec that also sets the held strategy
// annotation to held (the recorded strategy's JSON), or removes it (nil).
func holdPatch(spec map[string]any, held any) ([]byte, error) {
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{heldStrategyKey: held}},
		"spec":     spec,
	})
}

// pinPatch is the merge patch pinning a target to its revision's nodes. A merge patch
// on the pod template touches only the keys it names.
func pinPatch(u *ztv1.RevisionUpgrade, t pinTarget) ([]byte, error) {
	key := u.Spec.NodeLabelOrDefault()
	spec := map[string]any{}
	if !t.affinity {
		spec["nodeSelector"] = map[string]any{key: t.revision}
	} else {
		// Build on the affinity recorded before the upgrade, not the live one, which
		// holds ztcanary's terms once pinned: pinning again must change nothing.
		a := t.template.Spec.Affinity
		if rec := findPin(u.Status.OriginalPins, t); rec != nil && rec.Affinity != "" {
			a = nil
			if err := json.Unmarshal([]byte(rec.Affinity), &a); err != nil {
				return nil, fmt.Errorf("recorded affinity of %s %s/%s: %w", rec.Kind, rec.Namespace, rec.Name, err)
			}
		}
		var orig *corev1.NodeSelector
		if a != nil && a.NodeAffinity != nil {
			orig = a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution
		}
		spec["nodeSelector"] = map[string]any{key: nil}
		spec["affinity"] = map[string]any{"nodeAffinity": map[string]any{
			"requiredDuringSchedulingIgnoredDuringExecution": handoffAffinity(orig, key, u.Spec.Ztunnel.HandoffLabel, t.revision),
		}}
	}
	patch := map[string]any{"template": map[string]any{"spec": spec}}
	if rec := findPin(u.Status.OriginalPins, t); t.kind == "DaemonSet" && rec != nil && rec.UpdateStrategy != "" {
		// The pinned template is new to the DaemonSet: with its own strategy it would
		// replace the ztunnel of every node it runs on (cutting their connections),
		// though none of those nodes moves. OnDelete keeps the running pods; the
		// DaemonSet controller still removes a pod from a node the pinning no longer
		// selects (the swap) and starts one on a node it newly selects.
		patch["updateStrategy"] = map[string]any{"type": string(appsv1.OnDeleteDaemonSetStrategyType), "rollingUpdate": nil}
		return holdPatch(patch, rec.UpdateStrategy)
	}
	return json.Marshal(map[string]any{"spec": patch})
}

// findPin returns the record of what target t held before the upgrade, if any.
func findPin(recs []ztv1.PinRecord, t pinTarget) *ztv1.PinRecord {
	for i := range recs {
		if r := &recs[i]; r.Kind == t.kind && r.Namespace == t.obj.GetNamespace() && r.Name == t.obj.GetName() {
			return r
		}
	}
	return nil
}

// handoffAffinity is "node label is rev OR handoff label is rev", each ANDed with the
// terms the DaemonSet already required (terms are ORed, expressions ANDed).
func handoffAffinity(orig *corev1.NodeSelector, key, handoffKey, rev string) *corev1.NodeSelector {
	ours := []corev1.NodeSelectorRequirement{
		{Key: key, Operator: corev1.NodeSelectorOpIn, Values: []string{rev}},
		{Key: handoffKey, Operator: corev1.NodeSelectorOpIn, Values: []string{rev}},
	}
	// Requirements on the two keys ztcanary pins with are its own, left by an earlier
	// upgrade: drop them (and the duplicate terms that leaves) so each upgrade starts
	// from the user's terms and the affinity does not double with every upgrade.
	var base []corev1.NodeSelectorTerm
	seen := map[string]bool{}
	if orig != nil {
		for _, term := range orig.NodeSelectorTerms {
			t := *term.DeepCopy()
			t.MatchExpressions = slices.DeleteFunc(t.MatchExpressions, func(r corev1.NodeSelectorRequirement) bool {
				return r.Key == key || r.Key == handoffKey
			})
			id, _ := json.Marshal(t)
			if !seen[string(id)] {
				seen[string(id)] = true
				base = append(base, t)
			}
		}
	}
	if len(base) == 0 {
		base = []corev1.NodeSelectorTerm{{}}
	}
	out := &corev1.NodeSelector{}
	for _, req := range ours {
		for _, term := range base {
			t := *term.DeepCopy()
			t.MatchExpressions = append(t.MatchExpressions, req)
			out.NodeSelectorTerms = append(out.NodeSelectorTerms, t)
		}
	}
	return out
}

// restorePatch is the merge patch putting a target's recorded pinning back. A merge
// patch merges objects, so the parts ztcanary created are set to null explicitly
// rather than left empty.
func restorePatch(u *ztv1.RevisionUpgrade, rec ztv1.PinRecord) ([]byte, error) {
	key := u.Spec.NodeLabelOrDefault()
	spec := map[string]any{"nodeSelector": map[string]any{key: rec.Value}}
	if rec.Affinity != "" {
		var orig *corev1.Affinity
		if err := json.Unmarshal([]byte(rec.Affinity), &orig); err != nil {
			return nil, fmt.Errorf("recorded affinity of %s %s/%s: %w", rec.Kind, rec.Namespace, rec.Name, err)
		}
		switch {
		case orig == nil:
			spec["affinity"] = nil
		case orig.NodeAffinity == nil:
			spec["affinity"] = map[string]any{"nodeAffinity": nil}
		default:
			spec["affinity"] = map[string]any{"nodeAffinity": map[string]any{
				"requiredDuringSchedulingIgnoredDuringExecution": orig.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution,
			}}
		}
	}
	patch := map[string]any{"template": map[string]any{"spec": spec}}
	if rec.UpdateStrategy != "" {
		_, value, err := recordedStrategy(rec)
		if err != nil {
			return nil, err
		}
		patch["updateStrategy"] = value
		return holdPatch(patch, nil)
	}
	return json.Marshal(map[string]any{"spec": patch})
}

// recordedStrategy decodes the update strategy recorded for a DaemonSet, and returns
// it with the merge patch value that sets it back: what it did not hold
// (rollingUpdate under OnDelete) is set to null.
func recordedStrategy(rec ztv1.PinRecord) (appsv1.DaemonSetUpdateStrategy, map[string]any, error) {
	var orig appsv1.DaemonSetUpdateStrategy
	value := map[string]any{"type": nil, "rollingUpdate": nil}
	var raw map[string]any
	if err := json.Unmarshal([]byte(rec.UpdateStrategy), &raw); err != nil {
		return orig, nil, fmt.Errorf("recorded update strategy of %s %s/%s: %w", rec.Kind, rec.Namespace, rec.Name, err)
	}
	if err := json.Unmarshal([]byte(rec.UpdateStrategy), &orig); err != nil {
		return orig, nil, fmt.Errorf("recorded update strategy of %s %s/%s: %w", rec.Kind, rec.Namespace, rec.Name, err)
	}
	for k, v := range raw {
		value[k] = v
	}
	return orig, value, nil
}

// releaseStrategies gives each pinned ztunnel DaemonSet its recorded update strategy
// back once the upgrade has succeeded (the pinning stays). Its pods then are those
// it would have rolled out itself: the to revision's, created under the pinning,
// are current; the from revision runs on no node the upgrade covered.
func (d *Driver) releaseStrategies(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	for _, rec := range u.Status.OriginalPins {
		if rec.Kind != "DaemonSet" || rec.UpdateStrategy == "" {
			continue
		}
		orig, value, err := recordedStrategy(rec)
		if err != nil {
			return err
		}
		var ds appsv1.DaemonSet
		if err := d.Client.Get(ctx, client.ObjectKey{Namespace: rec.Namespace, Name: rec.Name}, &ds); err != nil {
			if client.IgnoreNotFound(err) == nil {
				continue
			}
			return err
		}
		_, held := ds.Annotations[heldStrategyKey]
		if !held && ds.Spec.UpdateStrategy.Type == orig.Type && equality.Semantic.DeepEqual(ds.Spec.UpdateStrategy.RollingUpdate, orig.RollingUpdate) {
			continue
		}
		patch, err := holdPatch(map[string]any{"updateStrategy": value}, nil)
		if err != nil {
			return err
		}
		drive.CountWrite("pin")
		if err := d.Client.Patch(ctx, &ds, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldManager)); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("restore the update strategy of DaemonSet %s/%s: %w", rec.Namespace, rec.Name, err)
		}
	}
	return nil
}

func objectFor(kind, ns, name string) client.Object {
	switch kind {
	case "DaemonSet":
		return &appsv1.DaemonSet{ObjectMeta: metaOf(ns, name)}
	case "StatefulSet":
		return &appsv1.StatefulSet{ObjectMeta: metaOf(ns, name)}
	default:
		return &appsv1.Deployment{ObjectMeta: metaOf(ns, name)}
	}
}

// applyPins pins every target; merge patches are idempotent, so a restart repeats
// them harmlessly. A target whose template (as cached) already holds what its patch
// would write is not written again: the Pinning stage runs a pass on every change
// while the ztunnel DaemonSets roll out, and on a large cluster it pins tens of
// workloads per pass.
func (d *Driver) applyPins(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	targets, err := d.pinTargets(ctx, u)
	if err != nil {
		return err
	}
	for _, t := range targets {
		patch, err := pinPatch(u, t)
		if err != nil {
			return err
		}
		if pinned, err := patchesNothing(t.template, patch); err != nil {
			return fmt.Errorf("pin %s %s/%s: %w", t.kind, t.obj.GetNamespace(), t.obj.GetName(), err)
		} else if pinned {
			continue
		}
		drive.CountWrite("pin")
		if err := d.Client.Patch(ctx, objectFor(t.kind, t.obj.GetNamespace(), t.obj.GetName()),
			client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldManager)); err != nil {
			return fmt.Errorf("pin %s %s/%s to %s: %w", t.kind, t.obj.GetNamespace(), t.obj.GetName(), t.revision, err)
		}
	}
	return nil
}

// patchesNothing reports whether the merge patch pinPatch made for a workload (it
// touches only spec.template.spec) leaves the pod template t as it is.
func patchesNothing(t *corev1.PodTemplateSpec, patch []byte) (bool, error) {
	var p struct {
		Spec struct {
			Template struct {
				Spec map[string]any `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(patch, &p); err != nil {
		return false, err
	}
	cur, err := json.Marshal(&t.Spec)
	if err != nil {
		return false, err
	}
	var doc map[string]any
	if err := json.Unmarshal(cur, &doc); err != nil {
		return false, err
	}
	merged, err := json.Marshal(mergePatch(doc, p.Spec.Template.Spec))
	if err != nil {
		return false, err
	}
	var after corev1.PodSpec
	if err := json.Unmarshal(merged, &after); err != nil {
		return false, err
	}
	// Semantic equality: a map the patch empties equals the absent one the API
	// server stores.
	return equality.Semantic.DeepEqual(&t.Spec, &after), nil
}

// mergePatch applies a JSON merge patch (RFC 7386) to a decoded JSON document.
func mergePatch(doc any, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	dm, ok := doc.(map[string]any)
	if !ok {
		dm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(dm, k)
			continue
		}
		dm[k] = mergePatch(dm[k], v)
	}
	return dm
}

// restorePins writes back every recorded pinning.
func (d *Driver) restorePins(ctx context.Context, u *ztv1.RevisionUpgrade) error {
	for _, rec := range u.Status.OriginalPins {
		patch, err := restorePatch(u, rec)
		if err != nil {
			return err
		}
		drive.CountWrite("pin")
		err = d.Client.Patch(ctx, objectFor(rec.Kind, rec.Namespace, rec.Name),
			client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldManager))
		if apierrors.IsNotFound(err) {
			drive.Unrestored(u, rec.Kind, rec.Namespace, rec.Name, "deleted during the upgrade")
			continue
		}
		if err != nil {
			return fmt.Errorf("restore pinning of %s %s/%s: %w", rec.Kind, rec.Namespace, rec.Name, err)
		}
	}
	return nil
}

// ztunnelsSettled reports whether the ztunnel DaemonSets of both revisions have
// rolled out their current template on every node they run on (as `kubectl rollout
// status` judges it), and otherwise what they wait for.
func (d *Driver) ztunnelsSettled(ctx context.Context, u *ztv1.RevisionUpgrade) (bool, string, error) {
	dss, err := ztunnelDaemonSets(ctx, d.Client, u.Spec.Ztunnel.Namespace)
	if err != nil {
		return false, "", err
	}
	for _, rev := range []string{u.Spec.From, u.Spec.To} {
		ds, ok := dss[rev]
		if !ok {
			return false, "", fmt.Errorf("no ztunnel DaemonSet of revision %s in %s", rev, u.Spec.Ztunnel.Namespace)
		}
		st := ds.Status
		onDelete := ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType
		switch {
		case st.ObservedGeneration < ds.Generation:
			return false, fmt.Sprintf("DaemonSet %s: generation %d not observed yet", ds.Name, ds.Generation), nil
		case onDelete && (st.NumberAvailable < st.DesiredNumberScheduled || st.NumberMisscheduled > 0):
			// Held at OnDelete (pinned): its running pods stay as they are; it is
			// settled once it runs, available, on exactly the nodes it selects.
			return false, fmt.Sprintf("DaemonSet %s: %d of %d pods available, %d on nodes it no longer selects", ds.Name, st.NumberAvailable, st.DesiredNumberScheduled, st.NumberMisscheduled), nil
		case !onDelete && (st.UpdatedNumberScheduled < st.DesiredNumberScheduled || st.NumberAvailable < st.DesiredNumberScheduled):
			return false, fmt.Sprintf("DaemonSet %s: %d of %d pods updated, %d available", ds.Name, st.UpdatedNumberScheduled, st.DesiredNumberScheduled, st.NumberAvailable), nil
		}
	}
	return true, "", nil
}
