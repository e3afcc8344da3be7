package ambient_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/ambient"
)

// splitBackend answers as v2 every tenth request (by arrival order) and as v1
// otherwise, or always as v2 with the test header; broken answers 500 for v2.
func splitBackend(t *testing.T, broken bool) *httptest.Server {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := "v1"
		if n.Add(1)%10 == 0 || r.Header.Get("traffic") == "test" {
			v = "v2"
		}
		w.Header().Set("x-version", v)
		if broken && v == "v2" {
			http.Error(w, "v2 is broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "<p>reviews served by %s</p>", v)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestTrafficGate(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	header := &ztv1.HeaderMatch{Name: "x-version", Value: "v2"}
	for _, tc := range []struct {
		name       string
		step       int // 0: header-test rule, 1: weight 10, 2: weight 30
		broken     bool
		header     *ztv1.HeaderMatch
		regex      string
		sinceStart time.Duration // how long ago the analysis began
		wantDone   bool
		wantErr    string // "" when the gate must not fail
		wantMsg    string // message or event
	}{
		{name: "header step with every answer from the canary passes and records the figures", step: 0, header: header, sinceStart: time.Minute, wantDone: true,
			wantMsg: "step 0: 400 requests with header traffic=test, 100.0% succeeded, canary share 100.0%"},
		{name: "10% canary recognised by a response header passes", step: 1, header: header, sinceStart: time.Minute, wantDone: true,
			wantMsg: "canary share 10.0% (interval"},
		{name: "10% canary recognised by a body regex passes", step: 1, regex: `served by v2\b`, sinceStart: time.Minute, wantDone: true,
			wantMsg: "canary share 10.0% (interval"},
		{name: "a share inconsistent with the weight fails", step: 2, header: header, sinceStart: time.Minute,
			wantErr: "traffic test: canary share 10.0% (interval"},
		{name: "a body regex that matches no canary answer fails", step: 1, regex: `served by v3`, sinceStart: time.Minute,
			wantErr: "canary share 0.0%"},
		{name: "a canary answering 500s fails once the settle time has passed", step: 1, header: header, broken: true, sinceStart: 11 * time.Second,
			wantErr: "traffic test: 90.0% of 400 requests succeeded, below 99% (40× HTTP 500 Internal Server Error)"},
		{name: "a failing test within the settle time is repeated, not failed", step: 1, header: header, broken: true, sinceStart: 3 * time.Second,
			wantMsg: "below 99% (40× HTTP 500 Internal Server Error); repeating while the gateway applies the route"},
		{name: "a body regex that does not compile is refused naming the field", step: 1, regex: `served by (v2`, sinceStart: time.Minute,
			wantErr: "spec.analysis.trafficTest.canaryBodyRegex: \"served by (v2\" is not a valid regular expression (Go RE2 syntax): error parsing regexp: missing closing ): `served by (v2`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := splitBackend(t, tc.broken)
			u := &ztv1.RevisionUpgrade{
				ObjectMeta: metav1.ObjectMeta{Name: "gate"},
				Spec: ztv1.RevisionUpgradeSpec{
					Steps: []ztv1.Step{
						{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: "traffic", Value: "test"}}},
						{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](10)}},
						{Nodes: intstr.FromInt32(1), Traffic: &ztv1.StepTraffic{Weight: ptr.To[int32](30)}},
					},
					Analysis: ztv1.Analysis{TrafficTest: &ztv1.TrafficTest{
						URL: srv.URL, Requests: 400, Concurrency: 4, MinSuccessRate: 99,
						CanaryHeader: tc.header, CanaryBodyRegex: tc.regex,
					}},
				},
				Status: ztv1.RevisionUpgradeStatus{StepStartedAt: &metav1.Time{Time: now.Add(-tc.sinceStart)}},
			}
			rec := record.NewFakeRecorder(10)
			gate := ambient.TrafficGate{Recorder: rec, Clock: clocktesting.NewFakePassiveClock(now)}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			done, msg, err := gate.Check(ctx, u, tc.step)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("gate failed: %v", err)
			case done != tc.wantDone:
				t.Fatalf("done = %v (%s), want %v", done, msg, tc.wantDone)
			}
			if !done {
				if !strings.Contains(msg, tc.wantMsg) {
					t.Errorf("message %q, want it to say %q", msg, tc.wantMsg)
				}
				return
			}
			select {
			case ev := <-rec.Events:
				if !strings.HasPrefix(ev, "Normal TrafficTestPassed") || !strings.Contains(ev, tc.wantMsg) {
					t.Errorf("event %q, want TrafficTestPassed saying %q", ev, tc.wantMsg)
				}
			default:
				t.Error("no event recorded for the passed test")
			}
		})
	}
}
