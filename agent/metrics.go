package agent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Metrics are the agent's Prometheus metrics.
type Metrics struct {
	pods       *prometheus.GaugeVec
	verdict    *prometheus.GaugeVec
	accepted   *prometheus.GaugeVec
	listening  *prometheus.GaugeVec
	writes     prometheus.Counter
	errors     *prometheus.CounterVec
	mapEntries prometheus.Gauge
}

// NewMetrics registers the agent's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ztcanary_agent_pods",
			Help: "Ambient pods of the node by capture state (None, Single, Both, Unknown)."}, []string{"state"}),
		verdict: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ztcanary_agent_verdict",
			Help: "1 for the node's current verdict, 0 for the others."}, []string{"verdict"}),
		accepted: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ztcanary_agent_accepted_connections",
			Help: "Connections accepted on capture ports of the node's ambient pods, by ztunnel revision and port, as counted by the eBPF maps (survives agent restarts; drops when owners are garbage-collected)."}, []string{"revision", "port"}),
		listening: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ztcanary_agent_listening_pods",
			Help: "Ambient pods where a ztunnel revision listens on a capture port."}, []string{"revision", "port"}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ztcanary_agent_status_writes_total",
			Help: "NodeCapture status writes."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztcanary_agent_errors_total",
			Help: "Errors by stage (discover, cgroups, netns, scan, maps, gc, write)."}, []string{"stage"}),
		mapEntries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztcanary_agent_owner_map_entries",
			Help: "Entries in the pinned owners map."}),
	}
	reg.MustRegister(m.pods, m.verdict, m.accepted, m.listening, m.writes, m.errors, m.mapEntries)
	return m
}

func (m *Metrics) observe(st ztv1.NodeCaptureStatus) {
	m.pods.Reset()
	for _, s := range []ztv1.CaptureState{ztv1.CaptureNone, ztv1.CaptureSingle, ztv1.CaptureBoth, ztv1.CaptureUnknown} {
		m.pods.WithLabelValues(string(s)).Set(0)
	}
	m.accepted.Reset()
	m.listening.Reset()
	for _, p := range st.Pods {
		m.pods.WithLabelValues(string(p.State)).Inc()
		for _, port := range p.Ports {
			ps := strconv.Itoa(int(port.Port))
			listening := map[string]bool{}
			for _, l := range port.Listeners {
				m.accepted.WithLabelValues(l.Revision, ps).Add(float64(l.Accepted))
				if l.Listening {
					listening[l.Revision] = true
				}
			}
			for r := range listening {
				m.listening.WithLabelValues(r, ps).Inc()
			}
		}
	}
	for _, v := range []ztv1.Verdict{ztv1.VerdictMatch, ztv1.VerdictMismatch, ztv1.VerdictMultipleRevisions, ztv1.VerdictNoZtunnel, ztv1.VerdictUnknown} {
		val := 0.0
		if v == st.Verdict {
			val = 1
		}
		m.verdict.WithLabelValues(string(v)).Set(val)
	}
}
