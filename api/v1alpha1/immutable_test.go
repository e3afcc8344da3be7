package v1alpha1_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// startedUpgrade is validUpgrade with every plan field set, so that each can be
// changed.
func startedUpgrade() *ztv1.RevisionUpgrade {
	u := validUpgrade()
	u.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "blue"}}
	u.Spec.Workloads = []ztv1.WorkloadPin{{Namespace: "bookinfo-1-18-0", Revision: "1-18-0-alpha-0"}, {Namespace: "bookinfo-1-18-1", Revision: "1-18-1"}}
	u.Spec.Route = &ztv1.RouteSpec{HTTPRoute: &ztv1.ObjectRef{Namespace: "bookinfo", Name: "reviews"},
		Stable: ztv1.BackendRef{Namespace: "bookinfo", Name: "reviews-v1", Port: 9080},
		Canary: ztv1.BackendRef{Namespace: "bookinfo", Name: "reviews-v2", Port: 9080}}
	return u
}

// changedOnceStarted sends change of an upgrade the orchestrator has started.
func changedOnceStarted(base func() *ztv1.RevisionUpgrade, change func(*ztv1.RevisionUpgrade)) func(*testing.T, client.Client) error {
	return changedIn(ztv1.PhaseProgressing, base, change)
}

// planChanges are the changes of each field that shapes the plan.
var planChanges = map[string]func(*ztv1.RevisionUpgrade){
	"nodeLabel":    func(u *ztv1.RevisionUpgrade) { u.Spec.NodeLabel = "example.com/rev" },
	"nodeSelector": func(u *ztv1.RevisionUpgrade) { u.Spec.NodeSelector = nil },
	"nodeStrategy": func(u *ztv1.RevisionUpgrade) { u.Spec.NodeStrategy = ztv1.NodeStrategyHandoff },
	"ztunnel":      func(u *ztv1.RevisionUpgrade) { u.Spec.Ztunnel.Namespace = "istio-ztunnel" },
	"route":        func(u *ztv1.RevisionUpgrade) { u.Spec.Route.Canary.Port = 8080 },
	"steps":        func(u *ztv1.RevisionUpgrade) { u.Spec.Steps = u.Spec.Steps[2:] },
}

// immutableRefusals are changes of a started upgrade's plan.
func immutableRefusals() []refusalCase {
	var out []refusalCase
	for _, f := range sortedKeys(planChanges) {
		out = append(out, refusalCase{"changing spec." + f + " of a started upgrade", changedOnceStarted(startedUpgrade, planChanges[f]),
			"spec." + f + " cannot change once the upgrade has started"})
	}
	out = append(out, refusalCase{"changing spec.namespaceSelector of a started Sidecar upgrade", changedOnceStarted(validSidecarUpgrade, func(u *ztv1.RevisionUpgrade) {
		u.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "cart"}}
	}), "spec.namespaceSelector cannot change once the upgrade has started"})
	return out
}

// TestPlanIsMutableUntilStarted: before the orchestrator starts an upgrade, its plan
// may be edited; once started, the fields that do not shape the plan (timeouts,
// analysis, rollback) still may be.
func TestPlanIsMutableUntilStarted(t *testing.T) {
	c := apiClient(t)
	ctx := context.Background()
	for _, f := range sortedKeys(planChanges) {
		t.Run("changing spec."+f+" while Pending is accepted", func(t *testing.T) {
			u := startedUpgrade()
			u.Name = "pending"
			if err := c.Create(ctx, u); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Delete(ctx, u) })
			u.Status.Phase = ztv1.PhasePending
			if err := c.Status().Update(ctx, u); err != nil {
				t.Fatal(err)
			}
			planChanges[f](u)
			if err := c.Update(ctx, u); err != nil {
				t.Errorf("refused: %v", err)
			}
		})
	}
	t.Run("changing what does not shape the plan of a started upgrade is accepted", func(t *testing.T) {
		u := startedUpgrade()
		u.Name = "started"
		if err := c.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(ctx, u) })
		u.Status.Phase = ztv1.PhaseProgressing
		if err := c.Status().Update(ctx, u); err != nil {
			t.Fatal(err)
		}
		u.Spec.StepTimeout = &metav1.Duration{Duration: 42 * time.Second}
		u.Spec.Analysis.AgentVerification = ztv1.AgentVerificationRequired
		u.Spec.Rollback.Automatic = ptr.To(false)
		if err := c.Update(ctx, u); err != nil {
			t.Fatalf("refused: %v", err)
		}
		got := &ztv1.RevisionUpgrade{}
		if err := c.Get(ctx, client.ObjectKey{Name: u.Name}, got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.StepTimeout.Duration != 42*time.Second || got.Spec.Analysis.AgentVerification != ztv1.AgentVerificationRequired {
			t.Errorf("the accepted change was not stored: %+v", got.Spec)
		}
		// The orchestrator's later status writes pass the rules (they see the spec
		// unchanged, every plan field set).
		got.Status.CurrentStep, got.Status.Message = 1, "step 1"
		if err := c.Status().Update(ctx, got); err != nil {
			t.Errorf("a status write of a started upgrade was refused: %v", err)
		}
	})
}
