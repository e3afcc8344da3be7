package cli

import (
	"encoding/json"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztcanary/ztcanary/internal/mesh"
)

func TestInventory(t *testing.T) {
	w := seedWorld()
	w.objs = append(w.objs,
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-1-18-0", Labels: map[string]string{mesh.RevisionKey: fromRev}}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "istio-revision-tag-prod", Labels: map[string]string{mesh.RevisionKey: toRev, mesh.LabelTag: "prod"}}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "cert-manager-webhook"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy", Labels: map[string]string{mesh.LabelInjection: "enabled", mesh.RevisionKey: toRev}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments", Labels: map[string]string{mesh.RevisionKey: toRev}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted-out", Labels: map[string]string{mesh.LabelInjection: "disabled"}}},
	)
	env, _ := w.env(t)
	out, err := run(t, env, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "inventory/seed.txt", out)

	out, err = run(t, env, "inventory", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var inv Inventory
	if err := json.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("inventory -o json: %v\n%s", err, out)
	}
	if len(inv.Nodes[fromRev]) != 4 || len(inv.Ztunnel) != 2 || len(inv.Webhooks) != 2 || len(inv.Namespaces) != 4 {
		t.Errorf("inventory = %+v", inv)
	}
}
