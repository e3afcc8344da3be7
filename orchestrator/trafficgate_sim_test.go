package orchestrator_test

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// TestBadCanaryBodyRegexIsRefusedBeforeAnythingMoves: the real CRD cannot compile a
// regular expression, so it accepts the object; the orchestrator's preflight must
// refuse it as the Ready condition, naming the field, and change nothing.
func TestBadCanaryBodyRegexIsRefusedBeforeAnythingMoves(t *testing.T) {
	e := newEnv(t)
	before := e.snapshot()
	e.startOrchestrator()
	u := seedUpgrade("bad-regex", ztv1.NodeStrategyDrain, seedSteps()...)
	u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{URL: "http://127.0.0.1:9/", CanaryBodyRegex: `reviews-(v2`}
	e.create(u)
	want := "spec.analysis.trafficTest.canaryBodyRegex: \"reviews-(v2\" is not a valid regular expression (Go RE2 syntax): error parsing regexp: missing closing ): `reviews-(v2`"
	e.eventually("the regex to be refused", time.Minute, func() (bool, string) {
		c := meta.FindStatusCondition(e.upgrade("bad-regex").Status.Conditions, ztv1.ConditionReady)
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Status == metav1.ConditionFalse && c.Reason == "InvalidSpec" && c.Message == want, c.Reason + ": " + c.Message
	})
	time.Sleep(2 * time.Second) // let a wrong orchestrator act, if it would
	got := e.upgrade("bad-regex")
	if got.Status.Phase != ztv1.PhasePending || len(got.Status.Nodes) != 0 || got.Status.OriginalPins != nil {
		t.Errorf("status after the refusal: phase %s, %d nodes, pins %v; want Pending and nothing recorded", got.Status.Phase, len(got.Status.Nodes), got.Status.OriginalPins)
	}
	if d := before.diff(e.snapshot()); len(d) > 0 {
		t.Errorf("a refused upgrade changed the cluster:\n%s", strings.Join(d, "\n"))
	}
}
