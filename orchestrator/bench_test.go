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
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/google/pprof/profile"
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

// BenchmarkUpgrade1000Nodes runs Handoff upgrades (10% → 50% → 100% of the nodes)
// on simulated clusters of 100, 300 and 1000 nodes carrying 10 pods per node, with the
// real orchestrator binary, one cluster at a time, and prints per cluster size and
// step: the orchestrator's CPU time per 100 nodes moved, in all and as its reconcile
// passes alone (what it decides and writes, beyond waiting for pods: the issue's
// "under 1 s for a 100-node step"), told from taking in the watched changes and from
// GC by CPU profiles taken in 1 s segments throughout; the CPU above what an idle
// orchestrator spends watching the cluster (measured for ZTCANARY_BENCH_IDLE_SECONDS,
// 45 by default: kwok rewrites each node's status every 20-45 s); API writes and
// requests per node moved; the process's peak resident memory; then the sizes side
// by side. ZTCANARY_BENCH_SIZES (e.g. "1000" or "100,300") picks the sizes;
// ZTCANARY_BENCH_NODES / _PODS run one size with that many pods;
// ZTCANARY_BENCH_PROFILE=dir saves each step's CPU profile and the heap profiles
// there; ZTCANARY_BENCH_CANARY_PERCENT (10) is the share of the pods that belong to
// canary workloads, which wait Pending until the first wave starts them all.
func BenchmarkUpgrade1000Nodes(b *testing.B) {
	var results []scaleResult
	for _, sz := range benchSizes() {
		b.Run(fmt.Sprintf("nodes=%d", sz.nodes), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				results = append(results, runScaleUpgrade(b, sz.nodes, sz.pods))
			}
		})
	}
	printScaleTable(results)
}

type benchSize struct{ nodes, pods int }

func benchSizes() []benchSize {
	if os.Getenv("ZTCANARY_BENCH_NODES") != "" || os.Getenv("ZTCANARY_BENCH_PODS") != "" {
		n := envInt("ZTCANARY_BENCH_NODES", 1000)
		return []benchSize{{n, envInt("ZTCANARY_BENCH_PODS", 10*n)}}
	}
	list := os.Getenv("ZTCANARY_BENCH_SIZES")
	if list == "" {
		list = "100,300,1000"
	}
	var out []benchSize
	for _, f := range strings.Split(list, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, benchSize{n, 10 * n})
		}
	}
	return out
}

// scaleResult is what one scale run measured.
type scaleResult struct {
	nodes, pods int
	setup       time.Duration
	// startCPU is the orchestrator's CPU time from exec until its caches were synced
	// and its workers started; syncRSS its peak resident memory by then.
	startCPU float64
	syncRSS  int64
	// idleCPU is the orchestrator's CPU per second of wall time while it watches the
	// cluster with no upgrade (decoding watch events, its resyncs): subtracted from a
	// step's CPU, what is left is the work the step itself asked for.
	idleCPU float64
	// idleShare splits the CPU sampled over the idle window (idleWall).
	idleShare cpuShare
	idleWall  time.Duration
	// prepCPU and prepWall: the upgrade's start (preflight over every node, the
	// plan and the pins recorded in status, pinning), until its first wave begins
	// to move nodes; part of step 0.
	prepCPU  float64
	prepWall time.Duration
	steps    []stepResult
	total    time.Duration
	moved    int
	// writes by kind (ztcanary_api_writes_total) and requests by HTTP method
	// (rest_client_requests_total), over the upgrade.
	writes, requests map[string]float64
	reconciles       float64
	peakRSS          int64
	heapInUse        float64
	// invariantEvents is how many pod and node events the invariant watcher
	// checked; overlap the longest time a node ran two ztunnel revisions.
	invariantEvents int
	overlap         time.Duration
	// restarts: stable (from) ztunnel pods started during the upgrade, each one a
	// restart of a node's ztunnel that the upgrade did not move.
	restarts int
}

type stepResult struct {
	nodes     int // nodes this step moved
	cpu       float64
	reconcile float64 // seconds inside Reconcile, API round trips included
	wall      time.Duration
	from, to  time.Time
	// share splits the step's sampled CPU: the reconcile passes alone (what the
	// orchestrator decided and wrote), taking in watched changes, GC, the rest.
	share cpuShare
}

// ownPer100 is the reconcile passes' CPU seconds (sampled) per 100 nodes moved.
func (s stepResult) ownPer100() float64 {
	if s.nodes == 0 {
		return 0
	}
	return s.share.reconcile.Seconds() * 100 / float64(s.nodes)
}

// cpuPer100 is CPU seconds per 100 nodes moved.
func (s stepResult) cpuPer100() float64 {
	if s.nodes == 0 {
		return 0
	}
	return s.cpu * 100 / float64(s.nodes)
}

// aboveIdle is the CPU seconds of a span beyond what a watching orchestrator spends
// idle (idle CPU seconds per second) over the span's wall time.
func aboveIdle(cpu float64, wall time.Duration, idle float64) float64 {
	return max(0, cpu-idle*wall.Seconds())
}

// abovePer100 is the CPU seconds per 100 nodes moved above the idle rate.
func (s stepResult) abovePer100(idle float64) float64 {
	if s.nodes == 0 {
		return 0
	}
	return aboveIdle(s.cpu, s.wall, idle) * 100 / float64(s.nodes)
}

func (r scaleResult) cpu() float64 {
	t := 0.0
	for _, s := range r.steps {
		t += s.cpu
	}
	return t
}

func (r scaleResult) sum(m map[string]float64) float64 {
	t := 0.0
	for _, v := range m {
		t += v
	}
	return t
}

func printScaleTable(results []scaleResult) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\nscale (Handoff 10%%→50%%→100%%, 10 pods per node; CPU is the orchestrator's own, user+system):\n")
	fmt.Printf("  %-34s", "nodes")
	for _, r := range results {
		fmt.Printf("%12d", r.nodes)
	}
	fmt.Println()
	row := func(name string, f func(scaleResult) string) {
		fmt.Printf("  %-34s", name)
		for _, r := range results {
			fmt.Printf("%12s", f(r))
		}
		fmt.Println()
	}
	row("startup CPU (cache sync) s", func(r scaleResult) string { return fmt.Sprintf("%.2f", r.startCPU) })
	for i := range 3 {
		row(fmt.Sprintf("step %d CPU s per 100 nodes moved", i), func(r scaleResult) string {
			if i >= len(r.steps) {
				return "-"
			}
			return fmt.Sprintf("%.2f", r.steps[i].cpuPer100())
		})
	}
	row("idle CPU (watching) ms per s", func(r scaleResult) string { return fmt.Sprintf("%.1f", r.idleCPU*1000) })
	for i := range 3 {
		row(fmt.Sprintf("step %d CPU above idle per 100 nodes", i), func(r scaleResult) string {
			if i >= len(r.steps) {
				return "-"
			}
			return fmt.Sprintf("%.2f", r.steps[i].abovePer100(r.idleCPU))
		})
	}
	for i := range 3 {
		row(fmt.Sprintf("step %d reconcile passes CPU per 100", i), func(r scaleResult) string {
			if i >= len(r.steps) {
				return "-"
			}
			return fmt.Sprintf("%.2f", r.steps[i].ownPer100())
		})
	}
	row("step 0: upgrade start CPU s (above idle)", func(r scaleResult) string {
		return fmt.Sprintf("%.2f (%.2f)", r.prepCPU, aboveIdle(r.prepCPU, r.prepWall, r.idleCPU))
	})
	row("step 0: its wave, CPU s per 100 nodes", func(r scaleResult) string {
		if len(r.steps) == 0 || r.steps[0].nodes == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", (r.steps[0].cpu-r.prepCPU)*100/float64(r.steps[0].nodes))
	})
	row("upgrade CPU s per 100 nodes moved", func(r scaleResult) string { return fmt.Sprintf("%.2f", r.cpu()*100/float64(r.moved)) })
	row("reconciles per 100 nodes moved", func(r scaleResult) string { return fmt.Sprintf("%.0f", r.reconciles*100/float64(r.moved)) })
	row("API writes per node moved", func(r scaleResult) string { return fmt.Sprintf("%.2f", r.sum(r.writes)/float64(r.moved)) })
	row("API requests per node moved", func(r scaleResult) string { return fmt.Sprintf("%.2f", r.sum(r.requests)/float64(r.moved)) })
	row("peak RSS MB at cache sync", func(r scaleResult) string { return fmt.Sprintf("%.0f", float64(r.syncRSS)/(1<<20)) })
	row("peak RSS MB", func(r scaleResult) string { return fmt.Sprintf("%.0f", float64(r.peakRSS)/(1<<20)) })
	row("Go heap in use at end MB", func(r scaleResult) string { return fmt.Sprintf("%.0f", r.heapInUse/(1<<20)) })
	row("upgrade wall time", func(r scaleResult) string { return r.total.Round(time.Second).String() })
	row("invariant events checked", func(r scaleResult) string { return strconv.Itoa(r.invariantEvents) })
	row("longest two-ztunnel overlap", func(r scaleResult) string { return r.overlap.Round(100 * time.Millisecond).String() })
	row("stable ztunnels restarted", func(r scaleResult) string { return strconv.Itoa(r.restarts) })
}

func runScaleUpgrade(b *testing.B, nodes, pods int) scaleResult {
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
	// operator deploys them per revision): 90% of the pods stable, 10% canary
	// (ZTCANARY_BENCH_CANARY_PERCENT). The canary pods wait, Pending, for the first
	// nodes on the to revision: the first wave starts all of them.
	canaryPercent := 10
	if v, err := strconv.Atoi(os.Getenv("ZTCANARY_BENCH_CANARY_PERCENT")); err == nil && v >= 0 && v <= 100 {
		canaryPercent = v
	}
	workers := make([]string, nodes)
	for i := range workers {
		workers[i] = sim.NodeName(i + 1)
	}
	must(seed.Install(ctx, c, workers, fromRev, toRev))
	const perDeployment = 250
	stable := 0
	for i, left := 0, pods; left > 0; i++ {
		ns, rev := fromApps, fromRev
		if stable >= pods*(100-canaryPercent)/100 {
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
	// The API server is busy creating thousands of pods: a timed-out read here is
	// transient, so it is retried, not fatal.
	var seen string
	lastLog := time.Now()
	if err := wait.PollUntilContextTimeout(ctx, 3*time.Second, 30*time.Minute, true, func(ctx context.Context) (bool, error) {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: "ztunnel-" + fromRev}, &ds); err != nil {
			b.Logf("setup: %v (retrying)", err)
			return false, nil
		}
		var list corev1.PodList
		if err := c.List(ctx, &list, client.InNamespace(fromApps)); err != nil {
			b.Logf("setup: %v (retrying)", err)
			return false, nil
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		seen = fmt.Sprintf("%d of %d ztunnels Ready, %d of %d stable pods Running", ds.Status.NumberReady, nodes, running, stable+len(seed.Apps)*seed.AppReplicas)
		if time.Since(lastLog) > time.Minute {
			b.Logf("setup: %s", seen)
			lastLog = time.Now()
		}
		return int(ds.Status.NumberReady) == nodes && running == stable+len(seed.Apps)*seed.AppReplicas, nil
	}); err != nil {
		b.Fatalf("setup: %v; %s", err, seen)
	}
	setup := time.Since(began)

	port := freePort(b)
	e := &env{t: b, cluster: cl, c: c, nodes: nodes + 1}
	// DESIGN.md invariant 1 on every pod and node event from here on: no worker with
	// ambient pods lacks a Ready ztunnel, two revisions share a node only for a
	// bounded time.
	w := e.watchInvariants(ztv1.NodeStrategyHandoff)
	// Its CPU is profiled from the idle window to the end, to tell its reconcile
	// passes from taking in watched changes and from the garbage collector.
	profDir := os.Getenv("ZTCANARY_BENCH_PROFILE")
	if profDir != "" {
		profDir = filepath.Join(profDir, fmt.Sprintf("nodes-%d", nodes))
	}
	pprofPort := freePort(b)
	proc := startBenchOrchestrator(b, e, port, fmt.Sprintf("--pprof-bind-address=127.0.0.1:%d", pprofPort))
	pid := proc.cmd.Process.Pid
	// Its caches synced (every pod and node read once) when its workers start: the
	// steps are measured from there.
	must(wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 5*time.Minute, true, func(context.Context) (bool, error) {
		return strings.Contains(proc.output(), "Starting workers"), nil
	}))
	res := scaleResult{nodes: nodes, pods: pods, setup: setup, startCPU: cpuSeconds(b, pid), syncRSS: peakRSS(b, pid)}
	// The idle rate: what watching the cluster costs with no upgrade running.
	idleWindow := time.Duration(envInt("ZTCANARY_BENCH_IDLE_SECONDS", 45)) * time.Second
	stopProfiles := profileCPU(b, profDir, pprofPort)
	idleFrom := time.Now()
	time.Sleep(idleWindow)
	idleEnd := cpuSeconds(b, pid)
	res.idleCPU = (idleEnd - res.startCPU) / time.Since(idleFrom).Seconds()
	upgrade := seedUpgrade("scale", ztv1.NodeStrategyHandoff,
		ztv1.Step{Nodes: intstr.FromString("10%")}, ztv1.Step{Nodes: intstr.FromString("50%")}, ztv1.Step{Nodes: intstr.FromString("100%")})
	upgrade.Spec.StepTimeout = &metav1.Duration{Duration: 30 * time.Minute}
	m0 := scrape(b, port)
	start := time.Now()
	must(c.Create(ctx, upgrade))
	lastStep, lastSum, lastAt, lastCPU, lastCanary := int32(0), m0["reconcile_seconds"], start, idleEnd, int32(0)
	var u ztv1.RevisionUpgrade
	prepared := false
	must(wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Name: "scale"}, &u); err != nil {
			b.Logf("get upgrade: %v (retrying)", err)
			return false, nil
		}
		if !prepared && u.Status.StepStage != "" && u.Status.StepStage != ztv1.StagePinning {
			prepared = true
			res.prepCPU, res.prepWall = cpuSeconds(b, pid)-idleEnd, time.Since(start)
		}
		if u.Status.CurrentStep != lastStep || u.Status.Phase == ztv1.PhaseSucceeded {
			sum, cpu, now := scrape(b, port)["reconcile_seconds"], cpuSeconds(b, pid), time.Now()
			res.steps = append(res.steps, stepResult{nodes: int(u.Status.CanaryNodes - lastCanary), cpu: cpu - lastCPU, reconcile: sum - lastSum, wall: now.Sub(lastAt), from: lastAt, to: now})
			lastStep, lastSum, lastAt, lastCPU, lastCanary = u.Status.CurrentStep, sum, now, cpu, u.Status.CanaryNodes
		}
		if u.Status.Phase == ztv1.PhaseRolledBack || u.Status.Phase == ztv1.PhaseFailed {
			return false, fmt.Errorf("upgrade %s: %s", u.Status.Phase, u.Status.Message)
		}
		if err := w.Err(); err != nil {
			return false, err
		}
		return u.Status.Phase == ztv1.PhaseSucceeded, nil
	}))
	res.total = time.Since(start)
	// Invariants 2 and 4 as far as they apply without agents: every worker on the
	// to revision, served by its ztunnel alone, and the pinning as the upgrade set it.
	must(w.waitOn(ctx, toRev, 2*time.Minute))
	must(checkPinning(ctx, c, upgrade))
	w.assert(b, upgrade.Spec.StepTimeout.Duration)
	if b.Failed() {
		b.FailNow()
	}
	res.invariantEvents, res.overlap, res.restarts = w.Events(), w.LongestOverlap(), w.Started(fromRev)
	segs := stopProfiles()
	_, res.idleShare = stepProfile(segs, idleFrom, start)
	res.idleWall = start.Sub(idleFrom)
	for i := range res.steps {
		st := &res.steps[i]
		var p *profile.Profile
		p, st.share = stepProfile(segs, st.from, st.to)
		if p != nil && profDir != "" {
			f, err := os.Create(filepath.Join(profDir, fmt.Sprintf("cpu-step%d.pprof", i)))
			must(err)
			must(p.Write(f))
			must(f.Close())
		}
	}
	m := scrape(b, port)
	res.peakRSS = peakRSS(b, pid)
	proc.kill()

	res.moved = int(u.Status.CanaryNodes)
	res.writes, res.requests = map[string]float64{}, map[string]float64{}
	for k, v := range m {
		switch {
		case strings.HasPrefix(k, "writes_"):
			res.writes[strings.TrimPrefix(k, "writes_")] = v - m0[k]
		case strings.HasPrefix(k, "requests_"):
			res.requests[strings.TrimPrefix(k, "requests_")] = v - m0[k]
		}
	}
	res.reconciles = m["reconciles"] - m0["reconciles"]
	res.heapInUse = m["heap_inuse"]
	moved := float64(res.moved)
	first := res.steps[0]
	b.ReportMetric(first.cpu, "s-cpu-step0")
	b.ReportMetric(first.cpuPer100(), "s-cpu/100nodes-step0")
	worst := 0.0
	for _, st := range res.steps {
		worst = max(worst, st.ownPer100())
	}
	b.ReportMetric(worst, "s-reconcile-cpu/100nodes-max")
	b.ReportMetric(res.cpu()*100/moved, "s-cpu/100nodes")
	b.ReportMetric(res.writes["node"]/moved, "node-writes/node")
	b.ReportMetric(res.sum(res.writes)/moved, "writes/node")
	b.ReportMetric(res.sum(res.requests)/moved, "requests/node")
	b.ReportMetric(float64(res.peakRSS)/(1<<20), "MB-peak-rss")
	fmt.Printf("scale upgrade: %d nodes, %d pods (setup %s), Handoff 10%%→50%%→100%% in %s; orchestrator start-up (cache sync) CPU %.2fs, idle (watching) %.1f ms CPU per s\n",
		nodes, pods, setup.Round(time.Second), res.total.Round(time.Second), res.startCPU, res.idleCPU*1000)
	fmt.Printf("  idle %s sampled: %s\n", res.idleWall.Round(time.Second), res.idleShare)
	for i, st := range res.steps {
		fmt.Printf("  step %d: %d nodes moved; orchestrator CPU %.2fs (%.2fs per 100 nodes, %.2fs above idle), time inside Reconcile %.2fs (API round trips included), of %s wall\n",
			i, st.nodes, st.cpu, st.cpuPer100(), st.abovePer100(res.idleCPU), st.reconcile, st.wall.Round(10*time.Millisecond))
		fmt.Printf("    sampled: %s\n", st.share)
	}
	fmt.Printf("  %.0f reconciles; API writes: %.0f node patches (%.2f per node moved), %.0f evictions, %.0f pin patches, %.0f status patches; requests by method: %v\n",
		res.reconciles, res.writes["node"], res.writes["node"]/moved, res.writes["eviction"], res.writes["pin"], res.writes["status"], res.requests)
	fmt.Printf("  orchestrator peak RSS %.0f MB (%.0f MB by cache sync), Go heap in use at the end %.0f MB\n", float64(res.peakRSS)/(1<<20), float64(res.syncRSS)/(1<<20), res.heapInUse/(1<<20))
	fmt.Printf("  invariants held: %d pod and node events checked, longest two-ztunnel overlap %s; every worker on %s, pinning consistent; %d stable ztunnels restarted\n",
		res.invariantEvents, res.overlap.Round(100*time.Millisecond), toRev, res.restarts)
	return res
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startBenchOrchestrator(b *testing.B, e *env, port int, extra ...string) *orchestratorProc {
	p := e.startOrchestrator(append([]string{fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port)}, extra...)...)
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

// cpuSegment is one CPU profile of the orchestrator and the wall time it covers.
type cpuSegment struct {
	from, to time.Time
	prof     *profile.Profile
}

// profileCPU takes back-to-back one-second CPU profiles of the orchestrator (its
// --pprof-bind-address port) until stopped; stop returns them. Short segments let
// each be assigned to the step that ran then. When dir is set, stop also saves the
// heap and allocation profiles there.
func profileCPU(b *testing.B, dir string, port int) (stop func() []cpuSegment) {
	get := func(path string) ([]byte, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/%s", port, path))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s", path, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	var segs []cpuSegment
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			from := time.Now()
			raw, err := get("profile?seconds=1")
			if err != nil {
				b.Logf("CPU profile: %v", err)
				return // the orchestrator is gone
			}
			p, err := profile.ParseData(raw)
			if err != nil {
				b.Logf("CPU profile: %v", err)
				return
			}
			segs = append(segs, cpuSegment{from: from, to: time.Now(), prof: p})
		}
	}()
	var once sync.Once
	stopLoop := func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
	// A benchmark that fails stops the loop too.
	b.Cleanup(stopLoop)
	return func() []cpuSegment {
		stopLoop()
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for _, name := range []string{"heap", "allocs"} {
				if raw, err := get(name); err != nil {
					b.Logf("profile %s: %v", name, err)
				} else if err := os.WriteFile(filepath.Join(dir, name+".pprof"), raw, 0o644); err != nil {
					b.Fatal(err)
				}
			}
		}
		return segs
	}
}

// stepProfile merges the segments whose middle falls within [from, to).
func stepProfile(segs []cpuSegment, from, to time.Time) (*profile.Profile, cpuShare) {
	var ps []*profile.Profile
	var share cpuShare
	for _, s := range segs {
		mid := s.from.Add(s.to.Sub(s.from) / 2)
		if mid.Before(from) || !mid.Before(to) {
			continue
		}
		ps = append(ps, s.prof)
		share = share.add(splitCPU(s.prof))
	}
	if len(ps) == 0 {
		return nil, share
	}
	merged, err := profile.Merge(ps)
	if err != nil {
		return nil, share
	}
	return merged, share
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
		case strings.HasPrefix(fields[0], `controller_runtime_reconcile_total{controller="revisionupgrade"`):
			out["reconciles"] += v
		case strings.HasPrefix(fields[0], "ztcanary_api_writes_total{"):
			kind := strings.TrimSuffix(strings.TrimPrefix(fields[0], `ztcanary_api_writes_total{kind="`), `"}`)
			out["writes_"+kind] = v
		case strings.HasPrefix(fields[0], "rest_client_requests_total{"):
			if _, rest, ok := strings.Cut(fields[0], `method="`); ok {
				method, _, _ := strings.Cut(rest, `"`)
				out["requests_"+method] += v
			}
		case fields[0] == "go_memstats_heap_inuse_bytes":
			out["heap_inuse"] = v
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
