package ambient

import (
	"encoding/json"
	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func TestHandoffAffinityORsTheTransitionalLabelWithinExistingTerms(t *testing.T) {
	orig := &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
		{Key: "kubernetes.io/arch", Operator: corev1.NodeSelectorOpIn, Values: []string{"amd64"}},
	}}}}
	got := handoffAffinity(orig, "istio.io/rev", "ztcanary.io/handoff", "1-18-1")
	if len(got.NodeSelectorTerms) != 2 {
		t.Fatalf("%d terms, want 2 (label OR handoff label)", len(got.NodeSelectorTerms))
	}
	for i, key := range []string{"istio.io/rev", "ztcanary.io/handoff"} {
		exprs := got.NodeSelectorTerms[i].MatchExpressions
		if len(exprs) != 2 || exprs[0].Key != "kubernetes.io/arch" || exprs[1].Key != key || exprs[1].Values[0] != "1-18-1" {
			t.Errorf("term %d = %+v, want arch AND %s=1-18-1", i, exprs, key)
		}
	}
	if len(orig.NodeSelectorTerms[0].MatchExpressions) != 1 {
		t.Error("the original terms were modified")
	}
}

// The affinity an upgrade leaves on a ztunnel DaemonSet is the next upgrade's
// original: pinning it again, for the same or another revision, must not multiply the
// terms (found by the crash campaign: 2^n terms after n Handoff upgrades, until the
// status recording them went over the apiserver's 3 MiB request limit).
func TestHandoffAffinityDoesNotGrowFromUpgradeToUpgrade(t *testing.T) {
	orig := &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
		{Key: "kubernetes.io/arch", Operator: corev1.NodeSelectorOpIn, Values: []string{"amd64"}},
	}}}}
	first := handoffAffinity(orig, "istio.io/rev", "ztcanary.io/handoff", "1-18-1")
	got := first
	for i, rev := range []string{"1-18-1", "1-18-0", "1-19-0", "1-18-1"} {
		got = handoffAffinity(got, "istio.io/rev", "ztcanary.io/handoff", rev)
		if len(got.NodeSelectorTerms) != 2 {
			t.Fatalf("upgrade %d: %d terms, want 2", i+2, len(got.NodeSelectorTerms))
		}
		for _, term := range got.NodeSelectorTerms {
			if len(term.MatchExpressions) != 2 || term.MatchExpressions[0].Key != "kubernetes.io/arch" || term.MatchExpressions[1].Values[0] != rev {
				t.Fatalf("upgrade %d: term %+v, want arch AND one pin to %s", i+2, term.MatchExpressions, rev)
			}
		}
	}
	b1, _ := json.Marshal(first)
	b2, _ := json.Marshal(got)
	if string(b1) != string(b2) {
		t.Errorf("pinning to 1-18-1 again gave\n%s\nnot\n%s", b2, b1)
	}
}

func TestRestorePatchNullsWhatZtcanaryAdded(t *testing.T) {
	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{NodeLabel: "istio.io/rev"}}
	cases := []struct {
		name string
		rec  ztv1.PinRecord
		want string
	}{
		{"an absent selector key is deleted", ztv1.PinRecord{Kind: "Deployment"},
			`{"spec":{"template":{"spec":{"nodeSelector":{"istio.io/rev":null}}}}}`},
		{"a selector value is put back", ztv1.PinRecord{Kind: "Deployment", Value: ptr.To("1-18-0")},
			`{"spec":{"template":{"spec":{"nodeSelector":{"istio.io/rev":"1-18-0"}}}}}`},
		{"an absent affinity is removed whole", ztv1.PinRecord{Kind: "DaemonSet", Value: ptr.To("1-18-0"), Affinity: "null"},
			`{"spec":{"template":{"spec":{"affinity":null,"nodeSelector":{"istio.io/rev":"1-18-0"}}}}}`},
		{"other affinity stays, node affinity goes", ztv1.PinRecord{Kind: "DaemonSet", Affinity: `{"podAntiAffinity":{}}`},
			`{"spec":{"template":{"spec":{"affinity":{"nodeAffinity":null},"nodeSelector":{"istio.io/rev":null}}}}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := restorePatch(u, tc.rec)
			if err != nil || string(b) != tc.want {
				t.Errorf("patch = %s, %v\nwant    %s", b, err, tc.want)
			}
		})
	}
}

func TestPinPatchOnlyNamesTheNodeLabel(t *testing.T) {
	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{NodeLabel: "istio.io/rev", Ztunnel: ztv1.ZtunnelSpec{HandoffLabel: "ztcanary.io/handoff"}}}
	d := &appsv1.Deployment{}
	d.Spec.Template.Spec.NodeSelector = map[string]string{"disk": "ssd", "istio.io/rev": "old"}
	b, err := pinPatch(u, pinTarget{kind: "Deployment", obj: d, template: &d.Spec.Template, revision: "1-18-1"})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if want := `{"spec":{"template":{"spec":{"nodeSelector":{"istio.io/rev":"1-18-1"}}}}}`; string(b) != want {
		t.Errorf("patch %s, want %s (other selector keys untouched)", b, want)
	}
}

func TestPinPatchIsTheSameOnAPinnedDaemonSet(t *testing.T) {
	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{NodeLabel: "istio.io/rev", Ztunnel: ztv1.ZtunnelSpec{HandoffLabel: "ztcanary.io/handoff"}}}
	ds := &appsv1.DaemonSet{}
	ds.Name, ds.Namespace = "ztunnel-1-18-0", "istio-system"
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "linux", "istio.io/rev": "1-18-0"}
	target := pinTarget{kind: "DaemonSet", obj: ds, template: &ds.Spec.Template, revision: "1-18-0", affinity: true}
	u.Status.OriginalPins = recordPins(u, []pinTarget{target})
	first, err := pinPatch(u, target)
	if err != nil {
		t.Fatal(err)
	}
	// The DaemonSet as the first patch left it: ztcanary's terms in its affinity.
	pinned := ds.DeepCopy()
	delete(pinned.Spec.Template.Spec.NodeSelector, "istio.io/rev")
	pinned.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: handoffAffinity(nil, "istio.io/rev", "ztcanary.io/handoff", "1-18-0"),
	}}
	again, err := pinPatch(u, pinTarget{kind: "DaemonSet", obj: pinned, template: &pinned.Spec.Template, revision: "1-18-0", affinity: true})
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(first) {
		t.Errorf("pinning a pinned DaemonSet again patches\n%s\nnot the first patch\n%s\n(a restart or a second pass would change the template, rolling every ztunnel)", again, first)
	}
}

func TestPinIsSkippedOnlyWhenItChangesNothing(t *testing.T) {
	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{NodeLabel: "istio.io/rev", Ztunnel: ztv1.ZtunnelSpec{HandoffLabel: "ztcanary.io/handoff"}}}
	dsWith := func(sel map[string]string, aff *corev1.NodeSelector) *appsv1.DaemonSet {
		ds := &appsv1.DaemonSet{}
		ds.Name, ds.Namespace = "ztunnel-1-18-0", "istio-system"
		ds.Spec.Template.Spec.NodeSelector = sel
		if aff != nil {
			ds.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: aff}}
		}
		return ds
	}
	ours := handoffAffinity(nil, "istio.io/rev", "ztcanary.io/handoff", "1-18-0")
	cases := []struct {
		name     string
		sel      map[string]string
		aff      *corev1.NodeSelector
		affinity bool
		want     bool
	}{
		{"a nodeSelector already on the revision is skipped", map[string]string{"disk": "ssd", "istio.io/rev": "1-18-0"}, nil, false, true},
		{"a nodeSelector on another revision is written", map[string]string{"istio.io/rev": "1-17-0"}, nil, false, false},
		{"a missing nodeSelector is written", nil, nil, false, false},
		{"the handoff affinity already in place is skipped", map[string]string{"kubernetes.io/os": "linux"}, ours, true, true},
		{"the handoff affinity with the selector key still set is written", map[string]string{"istio.io/rev": "1-18-0"}, ours, true, false},
		{"a nodeSelector to replace by the handoff affinity is written", map[string]string{"istio.io/rev": "1-18-0"}, nil, true, false},
		{"the handoff affinity of another revision is written", nil, handoffAffinity(nil, "istio.io/rev", "ztcanary.io/handoff", "1-18-1"), true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ds := dsWith(tc.sel, tc.aff)
			target := pinTarget{kind: "DaemonSet", obj: ds, template: &ds.Spec.Template, revision: "1-18-0", affinity: tc.affinity}
			patch, err := pinPatch(u, target)
			if err != nil {
				t.Fatal(err)
			}
			got, err := patchesNothing(&ds.Spec.Template, patch)
			if err != nil || got != tc.want {
				t.Errorf("patchesNothing = %v, %v; want %v (patch %s)", got, err, tc.want, patch)
			}
		})
	}
}

// TestPinningHoldsADaemonSetAtOnDeleteAndRestoresItsStrategy: the pin patch of a
// ztunnel DaemonSet sets OnDelete with its pinned template (so the new template
// restarts no ztunnel), and the restore patch gives back the recorded strategy
// exactly, rolling-update parameters included.
func TestPinningHoldsADaemonSetAtOnDeleteAndRestoresItsStrategy(t *testing.T) {
	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{NodeLabel: "istio.io/rev", Ztunnel: ztv1.ZtunnelSpec{HandoffLabel: "ztcanary.io/handoff"}}}
	surge, unavailable := intstr.FromInt32(1), intstr.FromInt32(0)
	orig := appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxSurge: &surge, MaxUnavailable: &unavailable}}
	ds := &appsv1.DaemonSet{}
	ds.Name, ds.Namespace = "ztunnel-1-18-0", "istio-system"
	ds.Spec.UpdateStrategy = orig
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"istio.io/rev": "1-18-0"}
	target := pinTarget{kind: "DaemonSet", obj: ds, template: &ds.Spec.Template, revision: "1-18-0", affinity: true}
	u.Status.OriginalPins = recordPins(u, []pinTarget{target})
	apply := func(ds *appsv1.DaemonSet, patch []byte) *appsv1.DaemonSet {
		t.Helper()
		doc, _ := json.Marshal(ds)
		var d, p map[string]any
		if err := json.Unmarshal(doc, &d); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(patch, &p); err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(mergePatch(d, p))
		var got appsv1.DaemonSet
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		return &got
	}
	pin, err := pinPatch(u, target)
	if err != nil {
		t.Fatal(err)
	}
	pinned := apply(ds, pin)
	if s := pinned.Spec.UpdateStrategy; s.Type != appsv1.OnDeleteDaemonSetStrategyType || s.RollingUpdate != nil {
		t.Errorf("pinned DaemonSet has update strategy %+v, want OnDelete alone", s)
	}
	if pinned.Spec.Template.Spec.Affinity == nil {
		t.Error("the pin patch did not pin the template")
	}
	if pinned.Annotations[heldStrategyKey] != u.Status.OriginalPins[0].UpdateStrategy {
		t.Errorf("pinned DaemonSet's annotations %v do not hold its strategy %s", pinned.Annotations, u.Status.OriginalPins[0].UpdateStrategy)
	}
	restore, err := restorePatch(u, u.Status.OriginalPins[0])
	if err != nil {
		t.Fatal(err)
	}
	back := apply(pinned, restore)
	if !equality.Semantic.DeepEqual(back.Spec.UpdateStrategy, orig) {
		t.Errorf("restored update strategy %+v, want %+v", back.Spec.UpdateStrategy, orig)
	}
	if !equality.Semantic.DeepEqual(back.Spec.Template, ds.Spec.Template) {
		t.Errorf("restored template %+v, want %+v", back.Spec.Template, ds.Spec.Template)
	}
	if _, ok := back.Annotations[heldStrategyKey]; ok {
		t.Errorf("restored DaemonSet still annotated %v", back.Annotations)
	}

	// An upgrade that ended Failed left the DaemonSet held: the next upgrade records
	// the strategy it had before the hold, not OnDelete, and gives that back.
	next := u.DeepCopy()
	heldTarget := pinTarget{kind: "DaemonSet", obj: pinned, template: &pinned.Spec.Template, revision: "1-18-0", affinity: true}
	next.Status.OriginalPins = recordPins(next, []pinTarget{heldTarget})
	if got := next.Status.OriginalPins[0].UpdateStrategy; got != u.Status.OriginalPins[0].UpdateStrategy {
		t.Errorf("a held DaemonSet's strategy was recorded as %s, want %s", got, u.Status.OriginalPins[0].UpdateStrategy)
	}
	restore, err = restorePatch(next, next.Status.OriginalPins[0])
	if err != nil {
		t.Fatal(err)
	}
	if back := apply(pinned, restore); !equality.Semantic.DeepEqual(back.Spec.UpdateStrategy, orig) {
		t.Errorf("the next upgrade restored %+v, want %+v", back.Spec.UpdateStrategy, orig)
	}
	// OnDelete without the annotation is the user's own choice; a strategy changed
	// after the hold (the annotation left behind) lifts it: both are recorded as found.
	own := ds.DeepCopy()
	own.Spec.UpdateStrategy = appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
	lifted := pinned.DeepCopy()
	lifted.Spec.UpdateStrategy = orig
	lifted.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &surge}
	for name, d := range map[string]*appsv1.DaemonSet{"own OnDelete": own, "lifted hold": lifted} {
		recs := recordPins(next, []pinTarget{{kind: "DaemonSet", obj: d, template: &d.Spec.Template, revision: "1-18-0", affinity: true}})
		want, _ := json.Marshal(d.Spec.UpdateStrategy)
		if recs[0].UpdateStrategy != string(want) {
			t.Errorf("%s: recorded %s, want %s", name, recs[0].UpdateStrategy, want)
		}
	}
	// A Deployment is never held: its pin patch names only its template.
	d := &appsv1.Deployment{}
	d.Name, d.Namespace = "reviews", "bookinfo"
	dp, err := pinPatch(u, pinTarget{kind: "Deployment", obj: d, template: &d.Spec.Template, revision: "1-18-0"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(dp), "updateStrategy") || strings.Contains(string(dp), "strategy") {
		t.Errorf("Deployment pin patch %s changes its strategy", dp)
	}
}
