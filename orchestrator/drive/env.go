package drive

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Env is what the shell hands every driver: the API client, the event recorder,
// the logger, the clock and the cache's stores.
type Env struct {
	Client   client.Client
	Recorder record.EventRecorder
	Log      *zap.Logger
	Clock    clock.PassiveClock
	// Stores are the cache's node and pod stores that a pass reads without copying
	// (stores.go); nil: read through Client.
	Stores *Stores
	// MaxEvictions bounds evictions per pass and call of Evict (default 10).
	MaxEvictions int
	// Reader reads from the API server itself, not the cache, for decisions that
	// must see the last write (which upgrade runs); nil: Client.
	Reader client.Reader
}

// Live is the reader for decisions that must see the API server's last write.
func (e *Env) Live() client.Reader {
	if e.Reader != nil {
		return e.Reader
	}
	return e.Client
}

// Timing every driver shares.
const (
	// Requeue is how soon a pass that waits for the cluster looks again when no
	// watched change wakes it first.
	Requeue = 2 * time.Second
	// PreflightRetry is how soon a refused upgrade is checked again (it starts by
	// itself once the cluster allows it).
	PreflightRetry = 30 * time.Second
)

// Event types, for Recorder calls.
const (
	EventNormal  = corev1.EventTypeNormal
	EventWarning = corev1.EventTypeWarning
)

var (
	apiWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztcanary_api_writes_total",
		Help: "Writes the orchestrator sent to the API server, by kind (node, eviction, pin, status).",
	}, []string{"kind"})
	rollbacksTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztcanary_rollbacks_total",
		Help: "Rollbacks started, by reason.",
	}, []string{"reason"})
)

func init() {
	metrics.Registry.MustRegister(apiWrites, rollbacksTotal)
}

// CountWrite counts one write to the API server, for the API-cost figures.
func CountWrite(kind string) { apiWrites.WithLabelValues(kind).Inc() }
