// Command ztcanary-agent is the per-node DaemonSet that proves, with eBPF, which ztunnel
// revision captures each ambient pod of its node, and writes the node's NodeCapture. Run it
// in-cluster, or out of cluster with --kubeconfig.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ztcanary/ztcanary/agent"
)

func main() {
	// --kubeconfig is registered by controller-runtime: a path, else in-cluster.
	var opts agent.Options
	flag.StringVar(&opts.Node, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME, from the downward API)")
	flag.StringVar(&opts.ZtunnelNamespace, "ztunnel-namespace", "istio-system", "namespace of the ztunnel DaemonSets of every revision")
	flag.StringVar(&opts.NodeLabel, "node-label", agent.LabelRevision, "node label key that pins revisions")
	flag.StringVar(&opts.Probe.PinDir, "pin-dir", agent.DefaultPinDir, "bpffs folder for the pinned maps (versioned)")
	ports := flag.String("ports", "15001,15006,15008", "capture ports, comma-separated")
	flag.StringVar(&opts.Cgroup2Root, "cgroup-root", "", "cgroup v2 mount (default: found under /sys/fs/cgroup)")
	flag.StringVar(&opts.ProcRoot, "proc-root", "/proc", "the host's /proc (run with hostPID)")
	netnsDirs := flag.String("netns-dirs", "/var/run/netns", "folders of bind-mounted pod network namespaces, comma-separated")
	flag.DurationVar(&opts.SyncInterval, "sync-interval", 5*time.Second, "how often to list pods, cgroups and namespaces")
	flag.DurationVar(&opts.MinWriteInterval, "min-write-interval", 2*time.Second, "least time between two status writes")
	flag.DurationVar(&opts.ResyncInterval, "resync-interval", 30*time.Second, "write the status at least this often, even unchanged (its observedAt shows the agent is alive)")
	metricsAddr := flag.String("metrics-bind-address", ":9464", "address of the Prometheus metrics endpoint (0 disables)")
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
	if err := run(logger, opts, *ports, *netnsDirs, *metricsAddr); err != nil {
		logger.Fatal("agent", zap.Error(err))
	}
}

func run(logger *zap.Logger, opts agent.Options, ports, netnsDirs, metricsAddr string) error {
	if opts.Node == "" {
		return errors.New("--node-name or $NODE_NAME is required")
	}
	for _, p := range strings.Split(ports, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if err != nil {
			return fmt.Errorf("--ports: %q is not a port", p)
		}
		opts.Probe.Ports = append(opts.Probe.Ports, uint16(n))
	}
	opts.NetnsDirs = strings.Split(netnsDirs, ",")

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	scheme, err := agent.NewScheme()
	if err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("api client: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := agent.NewMetrics(reg)

	probe, err := agent.Load(logger, opts.Probe)
	if err != nil {
		return err
	}
	defer probe.Close()
	a, err := agent.New(logger, c, probe, metrics, opts)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if metricsAddr != "0" {
		srv := &http.Server{Addr: metricsAddr, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("metrics server", zap.Error(err))
			}
		}()
		defer srv.Close()
	}
	logger.Info("agent starting", zap.String("node", opts.Node))
	return a.Run(ctx)
}
