package orchestrator

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

var (
	fuzzPhases = []ztv1.Phase{"", ztv1.PhasePending, ztv1.PhaseProgressing, ztv1.PhasePaused, ztv1.PhaseRollingBack}
	fuzzStages = []ztv1.Stage{"", ztv1.StagePinning, ztv1.StageMovingNodes, ztv1.StageVerifying, ztv1.StageShiftingTraffic,
		ztv1.StageAnalysing, ztv1.StagePausing, ztv1.StageRestoringRoute, ztv1.StageRestoringNodes, ztv1.StageRestoringPins,
		ztv1.StageEvictingCanaryPods, ztv1.StageMovingNamespaces, ztv1.StageRestoringNamespaces, ztv1.StageDone, "Nonsense"}
	fuzzNodePhases = []ztv1.NodePhase{ztv1.NodeStable, ztv1.NodeMoving, ztv1.NodeCanary, ztv1.NodeRestored, ""}
	fuzzNodes      = []string{"ambient-worker", "ambient-worker2", "ambient-worker3", "ambient-worker4", "gone-node"}
)

// pick returns the element of xs that b selects.
func pick[T any](xs []T, b byte) T { return xs[int(b)%len(xs)] }

// fuzzUpgrade builds an upgrade of the fake world from fuzz bytes: a mode, a phase,
// a stage, a current step, steps (fewer than the status may assume, as after an
// edit), node and namespace entries in any phase and step, and the steering
// annotations.
func fuzzUpgrade(data []byte) *ztv1.RevisionUpgrade {
	at := func(i int) byte {
		if i < len(data) {
			return data[i]
		}
		return 0
	}
	u := ambientUpgrade()
	if at(0)%3 == 0 {
		sidecarMode(u)
	}
	u.Spec.Steps = u.Spec.Steps[:1+int(at(1))%len(u.Spec.Steps)]
	u.Spec.NodeStrategy = pick([]ztv1.NodeStrategy{ztv1.NodeStrategyDrain, ztv1.NodeStrategyHandoff}, at(2))
	u.Status.Phase = pick(fuzzPhases, at(3))
	u.Status.StepStage = pick(fuzzStages, at(4))
	u.Status.CurrentStep = int32(int8(at(5)))
	if at(6)%2 == 1 {
		u.Status.TrafficStep = ptr.To(int32(int8(at(7))))
	}
	started := metav1.NewTime(time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC))
	if at(8)%2 == 1 {
		u.Status.StepStartedAt = &started
	}
	u.Annotations = map[string]string{}
	for i, key := range []string{ztv1.AnnotationAbort, ztv1.AnnotationPause, ztv1.AnnotationPromote} {
		if at(9)&(1<<i) != 0 {
			u.Annotations[key] = pick([]string{"true", "0", "1", "x"}, at(10+i))
		}
	}
	for i, b := range data[min(len(data), 13):] {
		if i%2 == 0 {
			u.Status.Nodes = append(u.Status.Nodes, ztv1.NodeStatus{Name: pick(fuzzNodes, b), OriginalRevision: worldFrom,
				Step: int32(int8(b)) % 4, Phase: pick(fuzzNodePhases, b>>3)})
		} else {
			u.Status.Namespaces = append(u.Status.Namespaces, ztv1.NamespaceStatus{Name: pick([]string{"shop", "cart", "gone"}, b),
				Step: int32(int8(b)) % 3, Phase: pick(fuzzNodePhases, b>>3)})
		}
	}
	u.Status.TotalNodes = int32(len(u.Status.Nodes))
	if len(u.Spec.Steps) > 1 {
		u.Spec.Steps[1].Pause = &ztv1.Pause{}
	}
	u.Spec.Steps[0].Nodes = intstr.FromInt32(int32(at(1)) % 6)
	return u
}

// FuzzReconcilePass runs passes of the shell and both drivers, without the panic
// guard, over (spec, status) pairs the API admits (any stage in any phase, a current
// step past the steps, node entries of nodes that are gone): a pass may fail with an
// error, never panic.
func FuzzReconcilePass(f *testing.F) {
	f.Add([]byte{1, 2, 0, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 10, 20, 30, 40})
	f.Add([]byte{0, 0, 1, 4, 12, 0, 0, 0, 0, 1, 0, 0, 0, 3, 4})
	f.Add([]byte{1, 0, 0, 3, 6, 5, 0, 0, 1, 4, 1, 1, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		rf := refusalWorld().refuser(t, "all")
		u := fuzzUpgrade(data)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rf.c.Create(ctx, u.DeepCopy()); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			if _, err := rf.r.reconcile(ctx, u); err != nil {
				return
			}
		}
	})
}
