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
// As root it also gives the workers a real data plane (kind/sim/simdataplane: a
// network namespace per ambient pod, a stand-in ztunnel process per ztunnel pod) and
// runs one real node agent per worker: every wave then waits for the agents' eBPF
// proof of which ztunnel revision captures each pod (agentVerification Required),
// and the demo shows that proof per node after each wave.
//
// Network namespaces and eBPF need root: without it the demo says so and runs
// without real traffic and without agent verification (the route still moves; the
// second upgrade then fails another gate, canary workloads that never become Ready).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simdataplane"
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
	noAgents     bool
}

func main() {
	var o options
	flag.StringVar(&o.orchestrator, "orchestrator", "bin/ztcanary-orchestrator", "path of the ztcanary-orchestrator binary")
	flag.StringVar(&o.agent, "agent", "bin/ztcanary-agent", "path of the ztcanary-agent binary, run on every worker as root")
	flag.IntVar(&o.nodes, "nodes", 5, "nodes of the simulated cluster (the first is the control plane)")
	flag.BoolVar(&o.noTraffic, "no-traffic", false, "run without Traefik and real traffic, even as root")
	flag.BoolVar(&o.noAgents, "no-agents", false, "run without node agents (no agent verification), even as root")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	if _, err := run(ctx, o); err != nil {
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
	// dp is the simulated data plane with a node agent per worker, so upgrades
	// require the agents' proof; nil without root.
	dp *simdataplane.DataPlane
	// upgradeNo is the upgrade running (1, 2), out what the run showed.
	upgradeNo int
	out       *outcome
}

// run is the whole demo. Its outcome says what it showed and what it started, for a
// test to check; it is returned even when the demo fails.
func run(ctx context.Context, o options) (out *outcome, err error) {
	out = &outcome{}
	// The clients log nothing the demo's reader needs (server-side apply warnings).
	ctrllog.SetLogger(logr.Discard())
	if o.nodes < 3 {
		return out, fmt.Errorf("-nodes %d: want at least 3 (a control plane and two workers)", o.nodes)
	}
	if _, err := os.Stat(o.orchestrator); err != nil {
		return out, fmt.Errorf("orchestrator binary %s: %w (run make build)", o.orchestrator, err)
	}
	traffic := !o.noTraffic
	agentsWhyNot := agentsUnavailable(o)
	if os.Geteuid() != 0 {
		say("not root: network namespaces and eBPF need root, so this run sends no real traffic through Traefik and has no node agents: upgrades run with agentVerification Disabled; run `sudo make demo` for the whole picture")
		traffic = false
	} else if agentsWhyNot != "" {
		say("no node agents in this run (%s): upgrades run with agentVerification Disabled", agentsWhyNot)
	}
	var traefikBin string
	if traffic {
		say("getting Traefik %s, the Gateway API data plane (cached; the first run builds it, about 6 minutes, or waits for a build already running)", sim.TraefikVersion)
		began := time.Now()
		if traefikBin, err = sim.EnsureTraefik(ctx, prefixed{}); err != nil {
			return out, err
		}
		if took := time.Since(began); took > 5*time.Second {
			say("Traefik ready after %s", took.Round(time.Second))
		}
	}

	say("starting a simulated cluster of %d nodes (real control plane, kwok nodes)", o.nodes)
	cl, err := sim.Start(ctx, sim.Options{Nodes: o.nodes, Progress: prefixed{}})
	if err != nil {
		return out, err
	}
	out.Paths = append(out.Paths, cl.Dir)
	defer func() {
		for name, pid := range cl.PIDs() {
			out.pid(name, pid)
		}
		say("stopping the simulated cluster (every process by PID) and removing its folder")
		if err := cl.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stop cluster:", err)
		}
	}()
	d, err := newDemo(ctx, cl, o.nodes)
	if err != nil {
		return out, err
	}
	d.out = out

	say("installing the seed topology from Istio's Helm charts (rendered by istio-render, server-side applied): istio-cni once; istiod and ztunnel for %s (stable), %s and %s; workers labelled istio.io/rev=%s", stable, canary, broken, stable)
	began := time.Now()
	if err := seed.Install(ctx, d.c, d.workers, stable, canary, broken); err != nil {
		return out, err
	}
	say("seed installed in %s:", time.Since(began).Round(100*time.Millisecond))
	d.printIstio(ctx)
	d.printNodes(ctx)

	if traffic {
		say("starting Traefik (the Gateway API data plane) and one reviews backend per revision in its own network namespace")
		if d.net, err = startNetwork(ctx, cl, traefikBin); err != nil {
			return out, err
		}
		out.Traffic = true
		for _, b := range d.net.backends {
			out.NetNS = append(out.NetNS, b.NetNS)
		}
		defer d.net.close()
	}
	if err := d.installRoute(ctx); err != nil {
		return out, err
	}

	if agentsWhyNot == "" {
		say("starting the simulated data plane (a network namespace per ambient pod, a stand-in ztunnel per ztunnel pod in a kubelet-style cgroup) and a node agent (eBPF) per worker")
		began := time.Now()
		if d.dp, err = startAgents(ctx, d, o.agent); err != nil {
			return out, fmt.Errorf("start the node agents: %w", err)
		}
		out.Agents = true
		out.Paths = append(out.Paths, d.dp.Dir())
		d.recordDataPlane()
		defer func() {
			d.recordDataPlane()
			say("stopping the node agents and the simulated data plane (by PID; namespaces, cgroups, bpffs pins removed)")
			if err := d.dp.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "demo:", err)
			}
		}()
		say("every agent reports its pods captured by %s (%s): upgrades run with agentVerification Required", stable, time.Since(began).Round(100*time.Millisecond))
	}

	logPath := filepath.Join(cl.Dir, "ztcanary-orchestrator.log")
	orch, err := startOrchestrator(o.orchestrator, cl.Kubeconfig, logPath)
	if err != nil {
		return out, err
	}
	out.pid("ztcanary-orchestrator", orch.pid)
	defer orch.stop()
	defer func() {
		if err != nil {
			// The cluster's folder, and the log with it, goes at the end.
			fmt.Fprintf(os.Stderr, "demo: the orchestrator's log ends with:\n%s\n", tail(logPath, 40))
		}
	}()

	if err := d.goodUpgrade(ctx); err != nil {
		return out, err
	}
	if err := d.failedUpgrade(ctx); err != nil {
		return out, err
	}
	return out, nil
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

// orchestrator is the ztcanary-orchestrator process.
type orchestratorProc struct {
	pid  int
	stop func()
}

// startOrchestrator runs the orchestrator binary against the cluster, its log in
// logPath; stop ends it by PID.
func startOrchestrator(bin, kubeconfig, logPath string) (*orchestratorProc, error) {
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
	return &orchestratorProc{pid: cmd.Process.Pid, stop: func() {
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
	}}, nil
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// prefixed indents the simulated cluster's progress lines under the demo's.
type prefixed struct{}

func (prefixed) Write(b []byte) (int, error) {
	fmt.Print("    " + string(b))
	return len(b), nil
}

// nop is the logger of the routers the demo reads routes with.
var nop = zap.NewNop()
