// Command demo shows a whole ztcanary upgrade on a simulated cluster (`make demo`).
//
// It starts the cluster (5 nodes: a control plane and four workers), installs the
// seed topology from Istio's real Helm charts (istio-cni once; istiod and ztunnel for
// three revisions; Bookinfo-like workloads per revision), a Gateway and an HTTPRoute
// served by Traefik, a real Gateway API data plane, with one reviews backend per
// revision answering from a network namespace of its own. It runs the orchestrator,
// moves the workers from 1-18-0 to 1-18-1 wave by wave while the traffic tester shows
// the split users really get through Traefik at every step, then tries 1-19-0, whose
// reviews answer 503: the traffic gate fails and ztcanary rolls everything back, the
// node labels and the route exactly as they were. It ends by itself and cleans up
// (processes by PID, network namespaces).
//
// Network namespaces need root: without it the demo says so and runs without real
// traffic (the route still moves; the second upgrade then fails another gate, canary
// workloads that never become Ready). Agents (the eBPF proof of which ztunnel captures
// each pod) plug in through startAgents (agents.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/orchestrator"
)

// The revisions: the stable one, the good canary, and the broken one.
const (
	stable = "1-18-0"
	canary = "1-18-1"
	broken = "1-19-0"
)

type options struct {
	orchestrator string
	agent        string
	nodes        int
	noTraffic    bool
}

func main() {
	var o options
	flag.StringVar(&o.orchestrator, "orchestrator", "bin/ztcanary-orchestrator", "path of the ztcanary-orchestrator binary")
	flag.StringVar(&o.agent, "agent", "bin/ztcanary-agent", "path of the ztcanary-agent binary, for agents plugged in through startAgents")
	flag.IntVar(&o.nodes, "nodes", 5, "nodes of the simulated cluster (the first is the control plane)")
	flag.BoolVar(&o.noTraffic, "no-traffic", false, "run without Traefik and real traffic, even as root")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	say("demo finished in %s", time.Since(began).Round(time.Second))
}

func say(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

// demo is what the steps share.
type demo struct {
	cluster *sim.Cluster
	c       client.Client
	kube    kubernetes.Interface
	gw      gatewayclient.Interface
	workers []string
	// net carries real traffic through Traefik to backends in network namespaces;
	// nil without root.
	net *network
	// agents is set when node agents run, so upgrades require their proof.
	agents bool
}

func run(ctx context.Context, o options) error {
	if o.nodes < 3 {
		return fmt.Errorf("-nodes %d: want at least 3 (a control plane and two workers)", o.nodes)
	}
	if _, err := os.Stat(o.orchestrator); err != nil {
		return fmt.Errorf("orchestrator binary %s: %w (run make build)", o.orchestrator, err)
	}
	traffic := !o.noTraffic
	if traffic && os.Geteuid() != 0 {
		say("not root: network namespaces (and eBPF) need root, so this run sends no real traffic and has no agent verification; run `sudo make demo` for the whole picture")
		traffic = false
	}
	var traefikBin string
	if traffic {
		var err error
		if traefikBin, err = sim.EnsureTraefik(ctx, os.Stdout); err != nil {
			return err
		}
	}

	say("starting a simulated cluster of %d nodes (real control plane, kwok nodes)", o.nodes)
	cl, err := sim.Start(ctx, sim.Options{Nodes: o.nodes, Progress: prefixed{}})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping the simulated cluster (every process by PID)")
		if err := cl.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stop cluster:", err)
		}
	}()
	d, err := newDemo(ctx, cl, o.nodes)
	if err != nil {
		return err
	}

	say("installing the seed topology from Istio's Helm charts (rendered by istio-render, server-side applied): istio-cni once; istiod and ztunnel for %s (stable), %s and %s; workers labelled istio.io/rev=%s", stable, canary, broken, stable)
	began := time.Now()
	if err := seed.Install(ctx, d.c, d.workers, stable, canary, broken); err != nil {
		return err
	}
	say("seed installed in %s:", time.Since(began).Round(100*time.Millisecond))
	d.printIstio(ctx)
	d.printNodes(ctx)

	if traffic {
		say("starting Traefik (the Gateway API data plane) and one reviews backend per revision in its own network namespace")
		if d.net, err = startNetwork(ctx, cl, traefikBin); err != nil {
			return err
		}
		defer d.net.close()
	}
	if err := d.installRoute(ctx); err != nil {
		return err
	}

	if startAgents != nil && os.Geteuid() == 0 {
		say("starting the node agents")
		stopAgents, err := startAgents(ctx, cl, d.workers, o.agent)
		if err != nil {
			return fmt.Errorf("start agents: %w", err)
		}
		defer func() {
			if err := stopAgents(); err != nil {
				fmt.Fprintln(os.Stderr, "demo: stop agents:", err)
			}
		}()
		d.agents = true
	} else {
		say("no node agents in this run: upgrades go without agent verification")
	}

	logPath := filepath.Join(cl.Dir, "ztcanary-orchestrator.log")
	stopOrchestrator, err := startOrchestrator(o.orchestrator, cl.Kubeconfig, logPath)
	if err != nil {
		return err
	}
	defer stopOrchestrator()

	if err := d.goodUpgrade(ctx); err != nil {
		return fmt.Errorf("%w (orchestrator log: %s)", err, logPath)
	}
	if err := d.failedUpgrade(ctx); err != nil {
		return fmt.Errorf("%w (orchestrator log: %s)", err, logPath)
	}
	return nil
}

func newDemo(ctx context.Context, cl *sim.Cluster, nodes int) (*demo, error) {
	root, err := sim.RepoRoot()
	if err != nil {
		return nil, err
	}
	crds, err := sim.ReadCRDs(filepath.Join(root, "deploy", "crds"))
	if err != nil {
		return nil, err
	}
	if err := cl.InstallCRDs(ctx, crds); err != nil {
		return nil, err
	}
	scheme, err := orchestrator.NewScheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	gw, err := gatewayclient.NewForConfig(cl.Config)
	if err != nil {
		return nil, err
	}
	d := &demo{cluster: cl, c: c, kube: cl.Client, gw: gw}
	for i := 1; i < nodes; i++ {
		d.workers = append(d.workers, sim.NodeName(i))
	}
	return d, nil
}

// startOrchestrator runs the orchestrator binary against the cluster, its log in
// logPath; the returned function ends it by PID.
func startOrchestrator(bin, kubeconfig, logPath string) (func(), error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--kubeconfig="+kubeconfig, "--leader-elect=false", "--metrics-bind-address=0", "--health-probe-bind-address=0")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Dies with the demo, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start orchestrator: %w", err)
	}
	say("orchestrator running (pid %d, log %s)", cmd.Process.Pid, logPath)
	return func() {
		say("stopping the orchestrator (pid %d)", cmd.Process.Pid)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	}, nil
}

// prefixed indents the simulated cluster's progress lines under the demo's.
type prefixed struct{}

func (prefixed) Write(b []byte) (int, error) {
	fmt.Print("    " + string(b))
	return len(b), nil
}

// nop is the logger of the routers the demo reads routes with.
var nop = zap.NewNop()
