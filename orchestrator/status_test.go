package orchestrator

import (
	"context"
	"encoding/json"
	"github.com/ztcanary/ztcanary/orchestrator/drive"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

func scaleStatus(nodes int) ztv1.RevisionUpgradeStatus {
	s := ztv1.RevisionUpgradeStatus{
		Phase: ztv1.PhaseProgressing, StepStage: ztv1.StageMovingNodes, TotalNodes: int32(nodes),
		TrafficStep: ptr.To(int32(0)), Message: "step 0: moving",
		Conditions: []metav1.Condition{{Type: ztv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "PreflightPassed", LastTransitionTime: metav1.Unix(1700000000, 0)}},
	}
	for i := range nodes {
		s.Nodes = append(s.Nodes, ztv1.NodeStatus{Name: "node-" + string(rune('a'+i)), OriginalRevision: "1-18-0", Revision: "1-18-0", Step: -1, Phase: ztv1.NodeStable})
	}
	return s
}

func TestStatusOpsWriteOnlyWhatChanged(t *testing.T) {
	tests := []struct {
		name    string
		before  ztv1.RevisionUpgradeStatus
		change  func(s *ztv1.RevisionUpgradeStatus)
		wantOps []string // op and path of each operation after the resourceVersion lock
	}{
		{
			name:    "an unchanged status writes nothing",
			before:  scaleStatus(5),
			change:  func(*ztv1.RevisionUpgradeStatus) {},
			wantOps: nil,
		},
		{
			name:    "a first status is set whole",
			before:  ztv1.RevisionUpgradeStatus{},
			change:  func(s *ztv1.RevisionUpgradeStatus) { *s = scaleStatus(3) },
			wantOps: []string{"add /status"},
		},
		{
			name:   "one moved node patches its entry and the fields that changed",
			before: scaleStatus(5),
			change: func(s *ztv1.RevisionUpgradeStatus) {
				s.Nodes[3].Phase, s.Nodes[3].Revision, s.Nodes[3].Step = ztv1.NodeCanary, "1-18-1", 0
				s.CanaryNodes = 1
				s.Message = "step 0: 1 of 1 nodes on 1-18-1"
			},
			wantOps: []string{"add /status/canaryNodes", "add /status/message", "replace /status/nodes/3"},
		},
		{
			name:    "a field that becomes empty is removed",
			before:  scaleStatus(2),
			change:  func(s *ztv1.RevisionUpgradeStatus) { s.TrafficStep, s.Message = nil, "" },
			wantOps: []string{"remove /status/message", "remove /status/trafficStep"},
		},
		{
			name:    "a node list of another length is replaced whole",
			before:  scaleStatus(2),
			change:  func(s *ztv1.RevisionUpgradeStatus) { s.Nodes = scaleStatus(4).Nodes },
			wantOps: []string{"add /status/nodes"},
		},
		{
			name:    "a condition change rewrites the conditions",
			before:  scaleStatus(2),
			change:  func(s *ztv1.RevisionUpgradeStatus) { s.Conditions[0].Message = "4 nodes in scope" },
			wantOps: []string{"add /status/conditions"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := &ztv1.RevisionUpgrade{ObjectMeta: metav1.ObjectMeta{Name: "u", ResourceVersion: "42"}, Status: tt.before}
			after := before.DeepCopy()
			tt.change(&after.Status)
			ops, err := statusOps(before, after)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, op := range ops {
				if i == 0 {
					if op.Op != "replace" || op.Path != "/metadata/resourceVersion" || string(op.Value) != `"42"` {
						t.Fatalf("first operation %+v, want the resourceVersion lock", op)
					}
					continue
				}
				got = append(got, op.Op+" "+op.Path)
			}
			if !reflect.DeepEqual(got, tt.wantOps) {
				t.Fatalf("operations %v, want %v", got, tt.wantOps)
			}
			if ops == nil {
				return
			}
			// Applied to the object as stored, the patch gives exactly the new status.
			doc, _ := json.Marshal(before)
			patch, _ := json.Marshal(ops)
			p, err := jsonpatch.DecodePatch(patch)
			if err != nil {
				t.Fatal(err)
			}
			out, err := p.Apply(doc)
			if err != nil {
				t.Fatalf("apply %s: %v", patch, err)
			}
			var res ztv1.RevisionUpgrade
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatal(err)
			}
			wantJSON, _ := json.Marshal(after.Status)
			gotJSON, _ := json.Marshal(res.Status)
			if string(gotJSON) != string(wantJSON) {
				t.Fatalf("patched status\n%s\nwant\n%s", gotJSON, wantJSON)
			}
		})
	}
}

// TestStatusPatchOfAStaleReadConflicts checks against a real API server that a
// status written from an outdated read is refused with Conflict (so two replicas
// cannot both advance an upgrade), and that a current one is stored.
func TestStatusPatchOfAStaleReadConflicts(t *testing.T) {
	cl := simtest.Start(t, sim.Options{Nodes: 1, SkipCRDs: true})
	ctx := context.Background()
	crds, err := sim.ReadCRDs(filepath.Join("..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.InstallCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	scheme, _ := NewScheme()
	c, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Env: &drive.Env{Client: c}}
	u := &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "status"},
		Spec:       ztv1.RevisionUpgradeSpec{From: "1-18-0", To: "1-18-1", Steps: []ztv1.Step{{Nodes: intstr.FromString("100%")}}},
	}
	if err := c.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	write := func(u *ztv1.RevisionUpgrade, change func(*ztv1.RevisionUpgradeStatus)) error {
		before := u.DeepCopy()
		change(&u.Status)
		_, err := r.patchStatus(ctx, before, u)
		return err
	}
	if err := write(u, func(s *ztv1.RevisionUpgradeStatus) { *s = scaleStatus(4) }); err != nil {
		t.Fatalf("first status: %v", err)
	}
	stale := u.DeepCopy()
	if err := write(u, func(s *ztv1.RevisionUpgradeStatus) { s.Nodes[1].Phase = ztv1.NodeMoving }); err != nil {
		t.Fatalf("second status: %v", err)
	}
	err = write(stale, func(s *ztv1.RevisionUpgradeStatus) { s.Nodes[2].Phase = ztv1.NodeMoving })
	if !apierrors.IsConflict(err) {
		t.Fatalf("status from a stale read: %v, want a Conflict", err)
	}
	var got ztv1.RevisionUpgrade
	if err := c.Get(ctx, client.ObjectKey{Name: "status"}, &got); err != nil {
		t.Fatal(err)
	}
	var phases []string
	for _, n := range got.Status.Nodes {
		phases = append(phases, string(n.Phase))
	}
	if want := "Stable,Moving,Stable,Stable"; strings.Join(phases, ",") != want || got.Status.ObservedGeneration != got.Generation {
		t.Fatalf("stored node phases %s (observedGeneration %d of %d), want %s", strings.Join(phases, ","), got.Status.ObservedGeneration, got.Generation, want)
	}
}
