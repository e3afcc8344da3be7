package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// simEnv is a simulated cluster (real apiserver, real CRDs) with the seed topology.
type simEnv struct {
	t       *testing.T
	cluster *sim.Cluster
	c       client.Client
}

func newSimEnv(t *testing.T) *simEnv {
	t.Helper()
	cl := simtest.Start(t, sim.Options{Nodes: 5})
	crds, err := sim.ReadCRDs(filepath.Join("..", "..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.InstallCRDs(context.Background(), crds); err != nil {
		t.Fatal(err)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	var workers []string
	for i := 1; i < 5; i++ {
		workers = append(workers, sim.NodeName(i))
	}
	if err := seed.Install(context.Background(), c, workers, fromRev, toRev); err != nil {
		t.Fatal(err)
	}
	return &simEnv{t: t, cluster: cl, c: c}
}

// ztcanary runs the command line against the cluster, as a user would.
func (e *simEnv) ztcanary(args ...string) (string, error) {
	e.t.Helper()
	out, err := run(e.t, &Env{}, append(args, "--kubeconfig", e.cluster.Kubeconfig)...)
	e.t.Logf("$ ztcanary %s\n%s(error: %v)", strings.Join(args, " "), out, err)
	return out, err
}

func (e *simEnv) upgrades() []string {
	e.t.Helper()
	var list ztv1.RevisionUpgradeList
	if err := e.c.List(context.Background(), &list); err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, u := range list.Items {
		names = append(names, u.Name)
	}
	return names
}

func (e *simEnv) waitFor(name, what string, timeout time.Duration, cond func(*ztv1.RevisionUpgrade) bool) *ztv1.RevisionUpgrade {
	e.t.Helper()
	u := &ztv1.RevisionUpgrade{}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := e.c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
			return false, err
		}
		return cond(u), nil
	})
	if err != nil {
		e.t.Fatalf("waiting for %s to be %s: %v; phase %s, stage %s: %s", name, what, err, u.Status.Phase, u.Status.StepStage, u.Status.Message)
	}
	return u
}

func awaitingPromote(step int32) func(*ztv1.RevisionUpgrade) bool {
	return func(u *ztv1.RevisionUpgrade) bool {
		c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused)
		return u.Status.CurrentStep == step && c != nil && c.Status == "True" && c.Reason == "AwaitingPromote"
	}
}

// binDir holds binaries the tests build; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ztcanary-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	orchestratorOnce sync.Once
	orchestratorBin  string
	orchestratorErr  error
)

// startOrchestrator builds (once per run) and starts the real orchestrator against
// the cluster; it is killed by PID when the test ends.
func (e *simEnv) startOrchestrator() {
	e.t.Helper()
	orchestratorOnce.Do(func() {
		orchestratorBin = filepath.Join(binDir, "ztcanary-orchestrator")
		out, err := exec.Command("go", "build", "-o", orchestratorBin, "github.com/ztcanary/ztcanary/cmd/ztcanary-orchestrator").CombinedOutput()
		if err != nil {
			orchestratorErr = fmt.Errorf("build orchestrator: %v\n%s", err, out)
		}
	})
	if orchestratorErr != nil {
		e.t.Fatal(orchestratorErr)
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	cmd := exec.Command(orchestratorBin, "--kubeconfig="+e.cluster.Kubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=0", "--leader-elect=false")
	w := &lockedWriter{mu: &mu, w: &logs}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if e.t.Failed() {
			mu.Lock()
			defer mu.Unlock()
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			e.t.Logf("orchestrator (pid %d) logs, last lines:\n%s", cmd.Process.Pid, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestSimBadInputIsRefusedAndWritesNothing: what only the CRD's schema and CEL
// rules catch is refused by plan and start with the API server's words, and
// nothing is stored.
func TestSimBadInputIsRefusedAndWritesNothing(t *testing.T) {
	e := newSimEnv(t)
	base := []string{"--from", fromRev, "--to", toRev}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a weight above 100", []string{"--httproute", "r", "--stable", "s:80", "--canary", "c:80", "--step", "nodes=1,weight=120", "--step", "nodes=100%,weight=100"},
			"spec.steps[0].traffic.weight: Invalid value: 120: spec.steps[0].traffic.weight in body should be less than or equal to 100"},
		{"decreasing weights", []string{"--httproute", "r", "--stable", "s:80", "--canary", "c:80", "--step", "nodes=1,weight=50", "--step", "nodes=100%,weight=10"},
			"spec.steps: traffic weights must never decrease from one step to the next"},
		{"decreasing node counts", []string{"--step", "nodes=3", "--step", "nodes=1", "--step", "nodes=100%"},
			"spec.steps: node counts must never decrease from one step to the next"},
		{"an unknown strategy", []string{"--strategy", "Yolo"}, `spec.nodeStrategy: Unsupported value: "Yolo": supported values: "Drain", "Handoff"`},
		{"a percentage above 100", []string{"--step", "nodes=150%"}, "spec.steps[0].nodes"},
		{"the same revision twice", []string{"--to", fromRev}, "spec.to must differ from spec.from"},
	} {
		for _, cmd := range []string{"plan", "start"} {
			t.Run(cmd+" "+tc.name, func(t *testing.T) {
				args := append(append([]string{cmd}, base...), tc.args...)
				_, err := e.ztcanary(args...)
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "is invalid, nothing was written: ") || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("err = %v, want the API server's refusal saying %q", err, tc.want)
				}
				if got := e.upgrades(); len(got) != 0 {
					t.Errorf("%s stored %v", cmd, got)
				}
			})
		}
	}
	t.Run("a route that does not exist is the orchestrator's refusal", func(t *testing.T) {
		_, err := e.ztcanary(append([]string{"start"}, seedFlags...)...)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "(BackendMissing): spec.route.") {
			t.Errorf("err = %v", err)
		}
		if got := e.upgrades(); len(got) != 0 {
			t.Errorf("start stored %v", got)
		}
	})
	t.Run("inventory reads the seed topology", func(t *testing.T) {
		out, err := e.ztcanary("inventory")
		for _, want := range []string{"istiod-" + toRev, "ztunnel-" + toRev, "istio.io/rev=" + fromRev, "ambient  " + seed.AppNamespace(toRev)} {
			if err != nil || !strings.Contains(out, want) {
				t.Errorf("inventory (err %v) lacks %q:\n%s", err, want, out)
			}
		}
	})
	t.Run("steering a missing upgrade names it", func(t *testing.T) {
		for _, cmd := range []string{"promote", "pause", "resume", "abort", "rollback", "status"} {
			_, err := e.ztcanary(cmd, "nope")
			if !errors.Is(err, ErrNotFound) || err.Error() != `revisionupgrade "nope" not found: list them with kubectl get revisionupgrades` {
				t.Errorf("%s: err = %v", cmd, err)
			}
		}
	})
}

// TestSimUpgradeSteeredByTheCLI drives a real orchestrator with the CLI alone:
// start, pause, promote, resume, status --watch to the end.
func TestSimUpgradeSteeredByTheCLI(t *testing.T) {
	e := newSimEnv(t)
	e.startOrchestrator()
	const name = "canary-1-18-1"
	args := []string{"start", "--name", name, "--from", fromRev, "--to", toRev,
		"--workload", seed.AppNamespace(fromRev) + "=" + fromRev, "--workload", seed.AppNamespace(toRev) + "=" + toRev,
		"--step", "nodes=1,pause", "--step", "nodes=100%", "--agent-verification", "Disabled", "--step-timeout", "3m"}
	if _, err := e.ztcanary(args...); err != nil {
		t.Fatal(err)
	}
	e.waitFor(name, "waiting for a promote of step 0", 2*time.Minute, awaitingPromote(0))

	// A second upgrade is refused while this one runs.
	if _, err := e.ztcanary("start", "--name", "second", "--from", fromRev, "--to", toRev); !errors.Is(err, ErrInProgress) {
		t.Errorf("a second start: err = %v, want ErrInProgress", err)
	}
	if got := e.upgrades(); len(got) != 1 {
		t.Errorf("upgrades %v, want only %s", got, name)
	}

	// Paused by request, a promote is recorded but the upgrade stays held.
	if _, err := e.ztcanary("pause", name); err != nil {
		t.Fatal(err)
	}
	out, err := e.ztcanary("promote")
	if err != nil || !strings.Contains(out, "it is also paused by request") {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	u := e.waitFor(name, "held by the pause annotation", time.Minute, func(u *ztv1.RevisionUpgrade) bool {
		c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused)
		return c != nil && c.Reason == "PausedByRequest"
	})
	if u.Annotations[ztv1.AnnotationPromote] != "0" || u.Annotations[ztv1.AnnotationPause] != "true" || u.Status.CurrentStep != 0 {
		t.Fatalf("annotations %v at step %d, want promote=0 and pause=true at step 0", u.Annotations, u.Status.CurrentStep)
	}
	out, err = e.ztcanary("status", name)
	if err != nil || !strings.Contains(out, "Next:      paused by request: ztcanary resume "+name) {
		t.Errorf("status: %v\n%s", err, out)
	}

	if _, err := e.ztcanary("resume", name); err != nil {
		t.Fatal(err)
	}
	out, err = e.ztcanary("status", name, "--watch", "--interval", "500ms", "--timeout", "3m")
	if err != nil {
		t.Fatalf("status --watch: %v\n%s", err, out)
	}
	// Succeeded, and released by the orchestrator (its finalizer removed: its last
	// write), so a later change of the object can only be the CLI's.
	u = e.waitFor(name, "Succeeded and released", 30*time.Second, func(u *ztv1.RevisionUpgrade) bool {
		return u.Status.Phase == ztv1.PhaseSucceeded && len(u.Finalizers) == 0
	})
	if !strings.Contains(out, "Succeeded · step 1 of steps 0-1") || !strings.Contains(out, "[####################] 4/4 nodes on "+toRev) {
		t.Errorf("the last frame does not show the success:\n%s", out)
	}
	for _, n := range u.Status.Nodes {
		var node corev1.Node
		if err := e.c.Get(context.Background(), client.ObjectKey{Name: n.Name}, &node); err != nil {
			t.Fatal(err)
		}
		if node.Labels[seed.RevisionKey] != toRev {
			t.Errorf("node %s is on %q, want %s", n.Name, node.Labels[seed.RevisionKey], toRev)
		}
	}
	// Finished: steering is refused and writes nothing.
	for _, cmd := range []string{"promote", "pause", "resume"} {
		if _, err := e.ztcanary(cmd, name); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "is over (Succeeded)") {
			t.Errorf("%s: err = %v", cmd, err)
		}
	}
	if _, err := e.ztcanary("rollback", name); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "ztcanary plan --from "+toRev+" --to "+fromRev) {
		t.Errorf("rollback: err = %v", err)
	}
	after := &ztv1.RevisionUpgrade{}
	if err := e.c.Get(context.Background(), client.ObjectKey{Name: name}, after); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != u.ResourceVersion {
		t.Errorf("refused commands changed the upgrade: annotations %v", after.Annotations)
	}
}

// TestSimRollbackOfAnUpgradeInProgress: rollback, then abort, each undo a started
// upgrade through the real orchestrator.
func TestSimRollbackOfAnUpgradeInProgress(t *testing.T) {
	e := newSimEnv(t)
	e.startOrchestrator()
	for _, cmd := range []string{"rollback", "abort"} {
		name := "undone-by-" + cmd
		if _, err := e.ztcanary("start", "--name", name, "--from", fromRev, "--to", toRev, "--strategy", "Handoff",
			"--workload", seed.AppNamespace(fromRev)+"="+fromRev, "--workload", seed.AppNamespace(toRev)+"="+toRev,
			"--step", "nodes=2,pause", "--step", "nodes=100%", "--agent-verification", "Disabled"); err != nil {
			t.Fatal(err)
		}
		e.waitFor(name, "waiting for a promote of step 0", 2*time.Minute, awaitingPromote(0))
		out, err := e.ztcanary(cmd)
		if err != nil || !strings.Contains(out, "abort requested (ztcanary.io/abort=true)") {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		out, err = e.ztcanary("status", name, "--watch", "--interval", "500ms", "--timeout", "3m")
		if !errors.Is(err, ErrUpgradeFailed) || !strings.Contains(err.Error(), `revisionupgrade "`+name+`" rolled back: aborted by request`) {
			t.Fatalf("status --watch: err = %v\n%s", err, out)
		}
		var nodes corev1.NodeList
		if err := e.c.List(context.Background(), &nodes); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes.Items {
			if rev, ok := n.Labels[seed.RevisionKey]; ok && rev != fromRev {
				t.Errorf("node %s is on %s after the %s, want %s", n.Name, rev, cmd, fromRev)
			}
		}
		for _, again := range []string{"abort", "rollback"} {
			if _, err := e.ztcanary(again, name); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "is already rolled back") {
				t.Errorf("%s after the rollback: err = %v", again, err)
			}
		}
	}
}
