// Command ztcanary-orchestrator runs the controller that drives RevisionUpgrades:
// it plans node waves, pins ztunnel DaemonSets and workloads, swaps each node's
// ztunnel, gates each wave and rolls back on failure. Run it in-cluster, or out of
// cluster with --kubeconfig.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ztcanary/ztcanary/orchestrator"
)

func main() {
	// --kubeconfig is registered by controller-runtime: a path, else in-cluster.
	var opts orchestrator.Options
	flag.StringVar(&opts.MetricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables)")
	flag.StringVar(&opts.PprofAddr, "pprof-bind-address", "", "address of net/http/pprof for profiling (empty or 0 disables)")
	flag.StringVar(&opts.HealthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz (0 disables)")
	flag.BoolVar(&opts.LeaderElection, "leader-elect", true, "elect one active replica through a Lease (ztcanary-orchestrator)")
	flag.StringVar(&opts.LeaderElectionNamespace, "leader-election-namespace", "",
		"namespace of the Lease (default: the pod's namespace; out of cluster, the kubeconfig context's namespace, else \"default\")")
	flag.DurationVar(&opts.LeaseDuration, "lease-duration", 15*time.Second, "how long a leader's Lease lasts without renewal")
	qps := flag.Float64("kube-api-qps", 200, "requests per second to the API server (client-side limit)")
	burst := flag.Int("kube-api-burst", 400, "burst of requests to the API server")
	level := zap.LevelFlag("log-level", zapcore.InfoLevel, "minimum log level: debug, info, warn, error")
	flag.Parse()

	zcfg := zap.NewProductionConfig()
	zcfg.Level = zap.NewAtomicLevelAt(*level)
	logger, err := zcfg.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "build logger:", err)
		os.Exit(1)
	}
	defer logger.Sync() //nolint:errcheck
	log.SetLogger(zapr.NewLogger(logger))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		logger.Fatal("load kubeconfig", zap.Error(err))
	}
	cfg.QPS, cfg.Burst = float32(*qps), *burst
	if err := defaultLeaseNamespace(&opts, logger); err != nil {
		logger.Fatal("leader election", zap.Error(err))
	}
	mgr, _, err := orchestrator.NewManager(cfg, logger, opts)
	if err != nil {
		logger.Fatal("set up", zap.Error(err))
	}
	ctx := ctrl.SetupSignalHandler()
	logger.Info("orchestrator starting", zap.Bool("leaderElection", opts.LeaderElection))
	if err := mgr.Start(ctx); err != nil {
		logger.Fatal("run", zap.Error(err))
	}
}

// defaultLeaseNamespace fills in the Lease's namespace out of cluster, where
// controller-runtime knows none and would refuse to start: the kubeconfig context's
// namespace, so that replicas started with the same kubeconfig still elect one leader.
func defaultLeaseNamespace(opts *orchestrator.Options, logger *zap.Logger) error {
	if !opts.LeaderElection || opts.LeaderElectionNamespace != "" {
		return nil
	}
	// controller-runtime registers --kubeconfig on the default flag set.
	var kubeconfig string
	if f := flag.Lookup("kubeconfig"); f != nil {
		kubeconfig = f.Value.String()
	}
	ns, err := orchestrator.LeaseNamespace(kubeconfig)
	if err != nil {
		return err
	}
	if ns != "" {
		logger.Info("out of cluster: the leader election Lease is in the kubeconfig context's namespace (--leader-election-namespace to change)",
			zap.String("namespace", ns), zap.String("lease", orchestrator.LeaderElectionID))
		opts.LeaderElectionNamespace = ns
	}
	return nil
}
