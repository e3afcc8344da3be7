package orchestrator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// TestRollbackEndsWhenTheRouteIsGone: the HTTPRoute deleted while the upgrade is
// paused, then an abort: the rollback does not wait for a route that will never come
// back; it restores the nodes and the pins exactly, ends RolledBack with reason
// Incomplete, and lists the route in status.unrestored.
func TestRollbackEndsWhenTheRouteIsGone(t *testing.T) {
	e, gw := routeEnv(t)
	ctx := context.Background()
	before := e.snapshot()
	e.startOrchestrator()
	e.create(routedUpgrade("orphaned"))
	e.waitPhase("orphaned", 2*time.Minute, ztv1.PhasePaused)
	if err := gw.GatewayV1().HTTPRoutes(fromApps).Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.annotate("orphaned", ztv1.AnnotationAbort, "true")
	u := e.waitPhase("orphaned", 3*time.Minute, ztv1.PhaseRolledBack)
	c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack)
	if c == nil || c.Reason != ztv1.ReasonIncomplete || !strings.Contains(c.Message, "HTTPRoute "+fromApps+"/reviews") {
		t.Errorf("RolledBack condition %+v, want reason Incomplete naming the route", c)
	}
	want := []ztv1.UnrestoredObject{{Kind: "HTTPRoute", Namespace: fromApps, Name: "reviews", Reason: "deleted during the upgrade"}}
	if len(u.Status.Unrestored) != 1 || u.Status.Unrestored[0] != want[0] {
		t.Errorf("status.unrestored %+v, want %+v", u.Status.Unrestored, want)
	}
	if d := before.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("the nodes and pins were not restored exactly:\n%s", strings.Join(d, "\n"))
	}
}
