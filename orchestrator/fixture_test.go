package orchestrator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
	"github.com/ztcanary/ztcanary/orchestrator"
)

const (
	fromRev   = "1-18-0"
	toRev     = "1-18-1"
	istioNS   = seed.IstioNamespace
	revKey    = seed.RevisionKey
	fromApps  = "bookinfo-" + fromRev // seed.AppNamespace(fromRev), as a constant
	toApps    = "bookinfo-" + toRev
	testNodes = 5 // the control plane and four workers; the workers are in scope
)

// orchestratorBin is where orchestratorBinary builds the orchestrator, once per test
// run, so tests kill a real process; the agent is built beside it. TestMain removes
// the folder.
var (
	orchestratorBin  string
	orchestratorOnce sync.Once
	orchestratorErr  error
)

func TestMain(m *testing.M) {
	// The tests' own clients (seeding, watching) log nothing; without a logger
	// controller-runtime prints a stack trace at the first API warning.
	ctrllog.SetLogger(logr.Discard())
	dir, err := os.MkdirTemp("", "ztcanary-orchestrator-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	orchestratorBin = filepath.Join(dir, "ztcanary-orchestrator")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// orchestratorBinary returns the built orchestrator, building it on first use: the
// package's pure tests (all that -short runs) never pay for the build.
func orchestratorBinary(t testing.TB) string {
	t.Helper()
	simtest.SkipShort(t, "runs the built orchestrator")
	orchestratorOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", orchestratorBin, "github.com/ztcanary/ztcanary/cmd/ztcanary-orchestrator").CombinedOutput()
		if err != nil {
			orchestratorErr = fmt.Errorf("build orchestrator: %w\n%s", err, out)
		}
	})
	if orchestratorErr != nil {
		t.Fatal(orchestratorErr)
	}
	return orchestratorBin
}

// env is one test's simulated cluster with the seed topology installed.
type env struct {
	t       testing.TB
	cluster *sim.Cluster
	c       client.Client
	procs   []*orchestratorProc
	// kubeconfig is what orchestrators started by the test use (default: the
	// cluster's admin kubeconfig); a test points it at a fault-injecting proxy.
	kubeconfig string
	nodes      int // the control plane and the workers
}

func newEnv(t *testing.T) *env { return newEnvNodes(t, testNodes) }

// newEnvNodes is newEnv with nodes nodes, the first the control plane.
func newEnvNodes(t *testing.T, nodes int) *env {
	t.Helper()
	cl := simtest.Start(t, sim.Options{Nodes: nodes, SkipCRDs: true})
	crds, err := sim.ReadCRDs(filepath.Join("..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.InstallCRDs(context.Background(), crds); err != nil {
		t.Fatal(err)
	}
	scheme, err := orchestrator.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, cluster: cl, c: c, nodes: nodes}
	e.seed()
	return e
}

func (e *env) workers() []string {
	var out []string
	for i := 1; i < e.nodes; i++ {
		out = append(out, sim.NodeName(i))
	}
	return out
}

func (e *env) create(objs ...client.Object) {
	e.t.Helper()
	for _, o := range objs {
		if err := e.c.Create(context.Background(), o); err != nil {
			e.t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

// seed installs the seed topology (package seed) and waits until the stable
// workloads run.
func (e *env) seed() {
	if err := seed.Install(context.Background(), e.c, e.workers(), fromRev, toRev); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) patchNode(name string, patch map[string]any) {
	e.t.Helper()
	b, _ := json.Marshal(patch)
	if err := e.c.Patch(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, client.RawPatch(types.MergePatchType, b)); err != nil {
		e.t.Fatalf("patch node %s: %v", name, err)
	}
}

// ztunnelRevisions maps nodes to the revisions of the ztunnel pods on them.
func (e *env) ztunnelRevisions() map[string][]string {
	var pods corev1.PodList
	if err := e.c.List(context.Background(), &pods, client.InNamespace(istioNS), client.MatchingLabels{"app": "ztunnel"}); err != nil {
		e.t.Fatal(err)
	}
	out := map[string][]string{}
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" {
			out[p.Spec.NodeName] = append(out[p.Spec.NodeName], p.Annotations[revKey])
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

func (e *env) eventually(what string, timeout time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		for _, p := range e.procs {
			if p.crashed() {
				return false, fmt.Errorf("the orchestrator (pid %d) exited on its own", p.cmd.Process.Pid)
			}
		}
		ok, msg := cond()
		last = msg
		return ok, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for %s: %v; last: %s", what, err, last)
	}
}

func (e *env) upgrade(name string) *ztv1.RevisionUpgrade {
	e.t.Helper()
	u := &ztv1.RevisionUpgrade{}
	if err := e.c.Get(context.Background(), client.ObjectKey{Name: name}, u); err != nil {
		e.t.Fatal(err)
	}
	return u
}

func (e *env) waitPhase(name string, timeout time.Duration, phases ...ztv1.Phase) *ztv1.RevisionUpgrade {
	e.t.Helper()
	var u *ztv1.RevisionUpgrade
	e.eventually(fmt.Sprintf("upgrade %s to reach %v", name, phases), timeout, func() (bool, string) {
		u = e.upgrade(name)
		for _, p := range phases {
			if u.Status.Phase == p {
				return true, ""
			}
		}
		return false, fmt.Sprintf("phase %s, stage %s, step %d: %s", u.Status.Phase, u.Status.StepStage, u.Status.CurrentStep, u.Status.Message)
	})
	return u
}

// orchestratorProc is a running ztcanary-orchestrator.
type orchestratorProc struct {
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	mu     *sync.Mutex
	done   chan struct{} // closed when the process exited
	killed bool
}

type lockedBuffer struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// startOrchestrator runs the real binary against the cluster; it is killed (by PID)
// when the test ends, and its logs are shown if the test failed.
func (e *env) startOrchestrator(extra ...string) *orchestratorProc {
	e.t.Helper()
	p := &orchestratorProc{logs: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	kubeconfig := e.cluster.Kubeconfig
	if e.kubeconfig != "" {
		kubeconfig = e.kubeconfig
	}
	args := append([]string{"--kubeconfig=" + kubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=0", "--leader-elect=false"}, extra...)
	p.cmd = exec.Command(orchestratorBinary(e.t), args...)
	w := lockedBuffer{mu: p.mu, buf: p.logs}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	e.procs = append(e.procs, p)
	e.t.Cleanup(func() {
		p.kill()
		if e.t.Failed() {
			p.mu.Lock()
			e.t.Logf("orchestrator (pid %d) logs:\n%s", p.cmd.Process.Pid, tail(p.logs.String(), 60))
			p.mu.Unlock()
		}
	})
	return p
}

// kill sends SIGKILL: no shutdown hook runs, as in a node crash or OOM kill.
func (p *orchestratorProc) kill() {
	p.killed = true
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// output returns what the process logged so far.
func (p *orchestratorProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// crashed reports whether the process exited without being killed by the test.
func (p *orchestratorProc) crashed() bool {
	select {
	case <-p.done:
		return !p.killed
	default:
		return false
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// snapshot is what rollback must restore exactly.
type snapshot struct {
	nodeLabels map[string]string // node → revision label
	cordoned   map[string]bool
	templates  map[string]string // kind/ns/name → JSON of nodeSelector and affinity
}

func (e *env) snapshot() snapshot {
	e.t.Helper()
	ctx := context.Background()
	s := snapshot{nodeLabels: map[string]string{}, cordoned: map[string]bool{}, templates: map[string]string{}}
	var nodes corev1.NodeList
	if err := e.c.List(ctx, &nodes); err != nil {
		e.t.Fatal(err)
	}
	for _, n := range nodes.Items {
		s.nodeLabels[n.Name] = n.Labels[revKey] + "|" + n.Labels["ztcanary.io/handoff"]
		s.cordoned[n.Name] = n.Spec.Unschedulable
	}
	pinning := func(t corev1.PodTemplateSpec) string {
		b, _ := json.Marshal([]any{t.Spec.NodeSelector, t.Spec.Affinity})
		return string(b)
	}
	var dss appsv1.DaemonSetList
	if err := e.c.List(ctx, &dss, client.InNamespace(istioNS)); err != nil {
		e.t.Fatal(err)
	}
	for _, d := range dss.Items {
		// A ztunnel DaemonSet's update strategy too: ztcanary holds it at OnDelete
		// while pinned.
		strategy, _ := json.Marshal(d.Spec.UpdateStrategy)
		s.templates["DaemonSet/"+d.Namespace+"/"+d.Name] = pinning(d.Spec.Template) + " " + string(strategy)
	}
	for _, ns := range []string{fromApps, toApps} {
		var deps appsv1.DeploymentList
		if err := e.c.List(ctx, &deps, client.InNamespace(ns)); err != nil {
			e.t.Fatal(err)
		}
		for _, d := range deps.Items {
			s.templates["Deployment/"+d.Namespace+"/"+d.Name] = pinning(d.Spec.Template)
		}
	}
	return s
}

func (s snapshot) diff(o snapshot) []string {
	var out []string
	for k, v := range s.nodeLabels {
		if o.nodeLabels[k] != v {
			out = append(out, fmt.Sprintf("node %s label %q, was %q", k, o.nodeLabels[k], v))
		}
		if o.cordoned[k] != s.cordoned[k] {
			out = append(out, fmt.Sprintf("node %s cordoned=%v, was %v", k, o.cordoned[k], s.cordoned[k]))
		}
	}
	for k, v := range s.templates {
		if o.templates[k] != v {
			out = append(out, fmt.Sprintf("%s pinning %s, was %s", k, o.templates[k], v))
		}
	}
	sort.Strings(out)
	return out
}

func seedUpgrade(name string, strategy ztv1.NodeStrategy, steps ...ztv1.Step) *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: ztv1.RevisionUpgradeSpec{
			From:         fromRev,
			To:           toRev,
			NodeStrategy: strategy,
			Workloads:    []ztv1.WorkloadPin{{Namespace: fromApps, Revision: fromRev}, {Namespace: toApps, Revision: toRev}},
			Steps:        steps,
			Analysis:     ztv1.Analysis{AgentVerification: ztv1.AgentVerificationDisabled},
			StepTimeout:  &metav1.Duration{Duration: 2 * time.Minute},
		},
	}
}

func nodesStep(n intstr.IntOrString) ztv1.Step { return ztv1.Step{Nodes: n} }

// loadGatewayCRDs reads the real Gateway API CRDs (standard channel plus the
// experimental-only kinds) from the module cache.
func loadGatewayCRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	all, err := sim.LoadCRDs(context.Background(), "standard")
	if err != nil {
		return nil, err
	}
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, c := range all {
		if strings.HasSuffix(c.Name, ".gateway.networking.k8s.io") || strings.HasSuffix(c.Name, ".gateway.networking.x-k8s.io") {
			out = append(out, c)
		}
	}
	return out, nil
}
