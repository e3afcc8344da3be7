package orchestrator

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// An error a pass cannot get past (here the API server failing every DaemonSet list)
// shows on the upgrade as Degraded=True with the error and one Warning Event, not
// only in the log; the condition turns False once a pass completes again.
func TestAPIErrorsShowAsDegraded(t *testing.T) {
	rf := refusalWorld().refuser(t, "all")
	var failing atomic.Bool
	rf.r.Client = interceptor.NewClient(rf.c.(client.WithWatch), interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*appsv1.DaemonSetList); ok && failing.Load() {
				return apierrors.NewServiceUnavailable("the DaemonSet list failed (test)")
			}
			return c.List(ctx, list, opts...)
		},
	})
	ctx := context.Background()
	u := ambientUpgrade()
	if err := rf.c.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	req := reconcile.Request{NamespacedName: client.ObjectKey{Name: u.Name}}
	degraded := func() *ztv1.RevisionUpgrade {
		t.Helper()
		got := &ztv1.RevisionUpgrade{}
		if err := rf.c.Get(ctx, req.NamespacedName, got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	events := rf.r.Recorder.(*record.FakeRecorder).Events
	drain := func() []string {
		var out []string
		for {
			select {
			case e := <-events:
				out = append(out, e)
			default:
				return out
			}
		}
	}

	failing.Store(true)
	for pass := range 2 {
		if _, err := rf.r.Reconcile(ctx, req); err == nil {
			t.Fatalf("pass %d: reconcile succeeded while every DaemonSet list fails", pass)
		}
		c := meta.FindStatusCondition(degraded().Status.Conditions, ztv1.ConditionDegraded)
		if c == nil || c.Status != "True" || c.Reason != "ReconcileError" || !strings.Contains(c.Message, "the DaemonSet list failed (test)") {
			t.Fatalf("pass %d: Degraded = %+v, want True, ReconcileError, with the API error", pass, c)
		}
	}
	var warnings []string
	for _, e := range drain() {
		if strings.HasPrefix(e, "Warning ReconcileError") {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 {
		t.Errorf("Warning ReconcileError events over two failed passes: %q, want one", warnings)
	}

	failing.Store(false)
	if _, err := rf.r.Reconcile(ctx, req); err != nil {
		t.Fatalf("reconcile once the API answers: %v", err)
	}
	got := degraded()
	if c := meta.FindStatusCondition(got.Status.Conditions, ztv1.ConditionDegraded); c == nil || c.Status != "False" || c.Reason != "Recovered" {
		t.Fatalf("Degraded = %+v after a pass that completed, want False, Recovered", c)
	}
	if !meta.IsStatusConditionTrue(got.Status.Conditions, ztv1.ConditionReady) {
		t.Fatalf("the upgrade did not start once the API answered: %+v", got.Status)
	}
}
