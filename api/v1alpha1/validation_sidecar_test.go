package v1alpha1_test

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func validSidecarUpgrade() *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "sidecar"},
		Spec: ztv1.RevisionUpgradeSpec{
			Mode:              ztv1.ModeSidecar,
			From:              "1-18-0",
			To:                "1-18-1",
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "shop"}},
			Steps: []ztv1.Step{
				{Namespaces: ptr.To(intstr.FromInt32(1)), Pause: &ztv1.Pause{}},
				{Namespaces: ptr.To(intstr.FromString("50%"))},
				{Namespaces: ptr.To(intstr.FromString("100%"))},
			},
		},
	}
}

// sidecarRefusals are the refused Sidecar upgrades, and Ambient upgrades that use
// Sidecar fields, each a valid upgrade with one mistake.
func sidecarRefusals() []refusalCase {
	return []refusalCase{
		{"an unknown mode", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Mode = "Hybrid" }),
			`spec.mode: Unsupported value: "Hybrid": supported values: "Ambient", "Sidecar"`},
		{"a sidecar step without namespaces", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[1].Namespaces = nil }),
			"every step of a Sidecar upgrade sets namespaces"},
		{"a sidecar step with nodes", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[2].Nodes = intstr.FromInt32(1) }),
			"a Sidecar upgrade moves namespaces, not nodes: replace nodes with namespaces"},
		{"a sidecar step with traffic", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps[1].Traffic = &ztv1.StepTraffic{Weight: ptr.To[int32](10)}
		}), "traffic is not supported in Sidecar mode"},
		{"an ambient step with namespaces", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Mode, u.Spec.NamespaceSelector = ztv1.ModeAmbient, nil
			u.Spec.Steps[2].Nodes = intstr.FromString("100%")
		}), "spec.steps: namespaces is for mode Sidecar; an Ambient upgrade moves nodes: replace namespaces with nodes, or set spec.mode: Sidecar"},
		{"workloads in sidecar mode", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Workloads = []ztv1.WorkloadPin{{Namespace: "shop", Revision: "1-18-1"}}
		}), "spec.workloads, spec.route and spec.nodeSelector are for mode Ambient"},
		{"a node selector in sidecar mode", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}
		}), "spec.workloads, spec.route and spec.nodeSelector are for mode Ambient"},
		{"a namespace selector in ambient mode", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Mode = ztv1.ModeAmbient
			for i := range u.Spec.Steps {
				u.Spec.Steps[i].Nodes, u.Spec.Steps[i].Namespaces = *u.Spec.Steps[i].Namespaces, nil
			}
		}), "spec.namespaceSelector is for mode Sidecar"},
		{"decreasing namespace counts", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
			u.Spec.Steps[0].Namespaces = ptr.To(intstr.FromInt32(3))
			u.Spec.Steps[1].Namespaces = ptr.To(intstr.FromInt32(2))
		}), "namespace counts must never decrease"},
		{"a negative namespace count", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[0].Namespaces = ptr.To(intstr.FromInt32(-1)) }),
			"namespaces must be a count of at least 0 or a percentage from 0% to 100%"},
		{"a namespace percentage above 100", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Steps[2].Namespaces = ptr.To(intstr.FromString("101%")) }),
			`spec.steps[2].namespaces: Invalid value: "101%": namespaces must be a count of at least 0 or a percentage from 0% to 100%`},
		{"zero concurrent restarts", created(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) { u.Spec.Sidecar.MaxConcurrentRestarts = -1 }),
			"spec.sidecar.maxConcurrentRestarts in body should be greater than or equal to 1"},
	}
}

func TestValidSidecarUpgradeIsAcceptedWithDefaults(t *testing.T) {
	c := apiClient(t)
	u := validSidecarUpgrade()
	if err := c.Create(context.Background(), u); err != nil {
		t.Fatalf("create valid sidecar upgrade: %v", err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), u) })
	got := &ztv1.RevisionUpgrade{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: u.Name}, got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Sidecar.MaxConcurrentRestarts != 2 || got.Spec.Sidecar.IstiodNamespace != "istio-system" {
		t.Errorf("sidecar defaults not applied: %+v", got.Spec.Sidecar)
	}
	for i, s := range got.Spec.Steps {
		if s.Nodes != (intstr.IntOrString{}) {
			t.Errorf("steps[%d].nodes = %s, want absent", i, s.Nodes.String())
		}
	}
}

func TestAmbientIsTheDefaultModeAndAStepWithoutNodesMeansZero(t *testing.T) {
	c := apiClient(t)
	u := validUpgrade()
	u.Name = "ambient-default"
	u.Spec.Steps[0].Nodes = intstr.FromInt32(0) // omitted on the wire: absent means 0
	if err := c.Create(context.Background(), u); err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), u) })
	got := &ztv1.RevisionUpgrade{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: u.Name}, got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Mode != ztv1.ModeAmbient {
		t.Errorf("mode = %q, want the default Ambient", got.Spec.Mode)
	}
	if got.Spec.Steps[0].Nodes.IntValue() != 0 || got.Spec.Steps[0].Nodes.Type != intstr.Int {
		t.Errorf("steps[0].nodes = %s, want 0", got.Spec.Steps[0].Nodes.String())
	}
}
