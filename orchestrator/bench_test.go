package orchestrator_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
	"github.com/ztcanary/ztcanary/orchestrator"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkUpgrade1000Nodes runs a Handoff upgrade of 1000 nodes (10% → 50% → 100%)
// carrying 10,000 pods on the simulated cluster, with the real orchestrator binary,
// and prints: the orchestrator's own reconcile time in the 100-node step (the time
// it computes and writes, beyond waiting for pods), API writes per node moved, and
// the process's peak resident memory. ZTCANARY_BENCH_NODES / _PODS scale it down.
func BenchmarkUpgrade1000Nodes(b *testing.B) {
	nodes, pods := envInt("ZTCANARY_BENCH_NODES", 1000), envInt("ZTCANARY_BENCH_PODS", 10000)
	for i := 0; i < b.N; i++ {
		runScaleUpgrade(b, nodes, pods)
	}
}

func runScaleUpgrade(b *testing.B, nodes, pods int) {
	ctx := context.Background()
	began := time.Now()
	cl := simtest.Start(b, sim.Options{Nodes: nodes + 1, SkipCRDs: true})
	crds, err := sim.ReadCRDs(filepath.Join("..", "deploy", "crds"))
	if err != nil {
		b.Fatal(err)
	}
	if err := cl.InstallCRDs(ctx, crds); err != nil {
		b.Fatal(err)
	}
	scheme, _ := orchestrator.NewScheme()
	c, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	must := func(err error) {
		b.Helper()
		if err != nil {
			b.Fatal(err)
		}
	}
	// Seed: every worker on the stable revision, plus workloads already pinned (as an
	// operator deploys them per revision): 90% of the pods stable, 10% canary.
	workers := make([]string, nodes)
	for i := range workers {
		workers[i] = sim.NodeName(i + 1)
	}
	must(seed.Install(ctx, c, workers, fromRev, toRev))
	const perDeployment = 250
	stable := 0
	for i, left := 0, pods; left > 0; i++ {
		ns, rev := fromApps, fromRev
		if stable >= pods*9/10 {
			ns, rev = toApps, toRev
		}
		n := min(perDeployment, left)
		d := seed.Deployment(ns, fmt.Sprintf("app-%d", i), int32(n))
		d.Spec.Template.Spec.NodeSelector = map[string]string{revKey: rev}
		must(c.Create(ctx, d))
		if rev == fromRev {
			stable += n
		}
		left -= n
	}
	b.Logf("waiting for %d ztunnels and %d stable pods", nodes, stable)
	must(wait.PollUntilContextTimeout(ctx, time.Second, 15*time.Minute, true, func(ctx context.Context) (bool, error) {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: "ztunnel-" + fromRev}, &ds); err != nil {
			return false, err
		}
		var list corev1.PodList
		if err := c.List(ctx, &list, client.InNamespace(fromApps)); err != nil {
			return false, err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return int(ds.Status.NumberReady) == nodes && running == stable+len(seed.Apps)*seed.AppReplicas, nil
	}))
	setup := time.Since(began)

	port := freePort(b)
	e := &env{t: b, cluster: cl, c: c}
	proc := startBenchOrchestrator(b, e, port)
	upgrade := seedUpgrade("scale", ztv1.NodeStrategyHandoff,
		ztv1.Step{Nodes: intstr.FromString("10%")}, ztv1.Step{Nodes: intstr.FromString("50%")}, ztv1.Step{Nodes: intstr.FromString("100%")})
	upgrade.Spec.StepTimeout = &metav1.Duration{Duration: 30 * time.Minute}
	start := time.Now()
	must(c.Create(ctx, upgrade))
	stepReconcile := map[int32]float64{}
	stepCPU := map[int32]float64{}
	stepWall := map[int32]time.Duration{}
	pid := proc.cmd.Process.Pid
	lastStep, lastSum, lastAt, lastCPU := int32(0), scrape(b, port)["reconcile_seconds"], time.Now(), cpuSeconds(b, pid)
	var u ztv1.RevisionUpgrade
	must(wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Name: "scale"}, &u); err != nil {
			return false, err
		}
		if u.Status.CurrentStep != lastStep || u.Status.Phase == ztv1.PhaseSucceeded {
			sum, cpu := scrape(b, port)["reconcile_seconds"], cpuSeconds(b, pid)
			stepReconcile[lastStep] = sum - lastSum
			stepCPU[lastStep] = cpu - lastCPU
			stepWall[lastStep] = time.Since(lastAt)
			lastStep, lastSum, lastAt, lastCPU = u.Status.CurrentStep, sum, time.Now(), cpu
		}
		if u.Status.Phase == ztv1.PhaseRolledBack || u.Status.Phase == ztv1.PhaseFailed {
			return false, fmt.Errorf("upgrade %s: %s", u.Status.Phase, u.Status.Message)
		}
		return u.Status.Phase == ztv1.PhaseSucceeded, nil
	}))
	total := time.Since(start)
	m := scrape(b, port)
	peak := peakRSS(b, proc.cmd.Process.Pid)
	proc.kill()

	moved := float64(u.Status.CanaryNodes)
	b.ReportMetric(stepCPU[0], "s-cpu-step100")
	b.ReportMetric(stepReconcile[0], "s-reconcile-step100")
	b.ReportMetric(m["writes_node"]/moved, "node-writes/node")
	b.ReportMetric((m["writes_node"]+m["writes_eviction"]+m["writes_pin"]+m["writes_status"])/moved, "writes/node")
	b.ReportMetric(float64(peak)/(1<<20), "MB-peak-rss")
	fmt.Printf("scale upgrade: %d nodes, %d pods (setup %s), Handoff 10%%→50%%→100%% in %s\n", nodes, pods, setup.Round(time.Second), total.Round(time.Second))
	for s := int32(0); s < 3; s++ {
		fmt.Printf("  step %d: orchestrator CPU %.2fs, time inside Reconcile %.2fs (API round trips included), of %s wall\n", s, stepCPU[s], stepReconcile[s], stepWall[s].Round(10*time.Millisecond))
	}
	fmt.Printf("  API writes: %.0f node patches (%.2f per node moved), %.0f evictions, %.0f pin patches, %.0f status patches\n",
		m["writes_node"], m["writes_node"]/moved, m["writes_eviction"], m["writes_pin"], m["writes_status"])
	fmt.Printf("  orchestrator peak RSS %.0f MB\n", float64(peak)/(1<<20))
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startBenchOrchestrator(b *testing.B, e *env, port int) *orchestratorProc {
	p := e.startOrchestrator(fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port))
	if err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return true, nil
	}); err != nil {
		b.Fatal("orchestrator metrics endpoint did not come up")
	}
	return p
}

// scrape reads the figures the benchmark needs from the orchestrator's metrics.
func scrape(b *testing.B, port int) map[string]float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		fields := strings.Fields(line)
		if len(fields) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(fields[1], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(fields[0], `controller_runtime_reconcile_time_seconds_sum{controller="revisionupgrade"}`):
			out["reconcile_seconds"] = v
		case strings.HasPrefix(fields[0], "ztcanary_api_writes_total{"):
			kind := strings.TrimSuffix(strings.TrimPrefix(fields[0], `ztcanary_api_writes_total{kind="`), `"}`)
			out["writes_"+kind] = v
		}
	}
	return out
}

// peakRSS reads VmHWM, the process's peak resident set, from /proc.
func peakRSS(b *testing.B, pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}

// cpuSeconds reads a process's user+system CPU time from /proc (clock ticks of 10 ms).
func cpuSeconds(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start after ") ".
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100
}
