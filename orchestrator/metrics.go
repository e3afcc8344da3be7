package orchestrator

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

var (
	stageDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ztcanary_stage_duration_seconds",
		Help:    "Time spent in each stage of a step (MovingNodes, Verifying, ...), observed when the stage ends.",
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
	}, []string{"stage"})
	nodesByRevision = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztcanary_upgrade_nodes",
		Help: "Nodes in scope of an upgrade, by role (canary: on the to revision; stable: not yet).",
	}, []string{"upgrade", "role"})
	upgradePhase = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztcanary_upgrade_phase",
		Help: "1 for the phase an upgrade is in, 0 for the others.",
	}, []string{"upgrade", "phase"})
	trafficWeight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztcanary_upgrade_traffic_weight",
		Help: "Canary share of traffic (percent) an upgrade has set.",
	}, []string{"upgrade"})
)

func init() {
	metrics.Registry.MustRegister(stageDuration, nodesByRevision, upgradePhase, trafficWeight)
}

var allPhases = []ztv1.Phase{ztv1.PhasePending, ztv1.PhaseProgressing, ztv1.PhasePaused, ztv1.PhaseSucceeded,
	ztv1.PhaseRollingBack, ztv1.PhaseRolledBack, ztv1.PhaseFailed}

// observe updates the metrics from a status change.
func (r *Reconciler) observe(before, after *ztv1.RevisionUpgrade) {
	name := after.Name
	if b, a := before.Status.StageStart(), after.Status.StageStart(); before.Status.StepStage != after.Status.StepStage && b != nil && a != nil {
		stageDuration.WithLabelValues(string(before.Status.StepStage)).Observe(a.Sub(b.Time).Seconds())
	}
	for _, p := range allPhases {
		v := 0.0
		if after.Status.Phase == p {
			v = 1
		}
		upgradePhase.WithLabelValues(name, string(p)).Set(v)
	}
	nodesByRevision.WithLabelValues(name, "canary").Set(float64(after.Status.CanaryNodes))
	nodesByRevision.WithLabelValues(name, "stable").Set(float64(after.Status.TotalNodes - after.Status.CanaryNodes))
	trafficWeight.WithLabelValues(name).Set(float64(after.Status.TrafficWeight))
}
