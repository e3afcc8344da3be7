// Command demo shows a whole ztcanary upgrade on a simulated cluster (`make demo`):
// it starts the cluster (5 nodes), installs the seed topology (two revisions of
// istiod and ztunnel, Bookinfo-like workloads per revision), runs the orchestrator,
// and moves the workers from the stable to the canary revision wave by wave; then a
// second upgrade, to a third revision whose canary workloads never become Ready,
// fails its gate and rolls back to exactly where it started. It cleans up by itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/orchestrator"
)

const (
	stable = "1-18-0"
	canary = "1-18-1"
	broken = "1-19-0"
)

func main() {
	bin := flag.String("orchestrator", "bin/ztcanary-orchestrator", "path of the ztcanary-orchestrator binary")
	nodes := flag.Int("nodes", 5, "nodes of the simulated cluster (the first is the control plane)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *nodes); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, bin string, n int) error {
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("orchestrator binary %s: %w (run make build)", bin, err)
	}
	say("starting a simulated cluster of %d nodes (real control plane, kwok nodes)", n)
	cl, err := sim.Start(ctx, sim.Options{Nodes: n, Progress: os.Stdout})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping the simulated cluster")
		_ = cl.Stop()
	}()
	if err := installCRDs(ctx, cl); err != nil {
		return err
	}
	scheme, err := orchestrator.NewScheme()
	if err != nil {
		return err
	}
	c, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	var workers []string
	for i := 1; i < n; i++ {
		workers = append(workers, sim.NodeName(i))
	}
	say("installing the seed topology: istiod and ztunnel for %s (stable), %s and %s; workers labelled istio.io/rev=%s", stable, canary, broken, stable)
	if err := seed.Install(ctx, c, workers, stable, canary, broken); err != nil {
		return err
	}
	printNodes(ctx, c, workers)

	logPath := filepath.Join(os.TempDir(), "ztcanary-demo-orchestrator.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--kubeconfig="+cl.Kubeconfig, "--leader-elect=false", "--metrics-bind-address=0", "--health-probe-bind-address=0")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	say("orchestrator running (pid %d)", cmd.Process.Pid)

	up := upgrade("canary-"+canary, stable, canary)
	up.Spec.Steps = []ztv1.Step{
		{Nodes: intstr.FromInt32(1), Pause: &ztv1.Pause{Duration: &metav1.Duration{Duration: 2 * time.Second}}},
		{Nodes: intstr.FromString("50%")},
		{Nodes: intstr.FromString("100%")},
	}
	say("upgrade 1: %s → %s, Drain, waves of 1 node, 50%%, 100%%", stable, canary)
	if err := c.Create(ctx, up); err != nil {
		return err
	}
	u, err := follow(ctx, c, up.Name, workers)
	if err != nil {
		return err
	}
	if u.Status.Phase != ztv1.PhaseSucceeded {
		return fmt.Errorf("upgrade 1 ended %s: %s", u.Status.Phase, u.Status.Message)
	}
	printNodes(ctx, c, workers)

	// Upgrade 2: the canary workloads of the third revision ask for more CPU than any
	// node has, so they never become Ready and the wave's gate times out.
	for _, app := range seed.Apps {
		var d = seed.Deployment(seed.AppNamespace(broken), app, seed.AppReplicas)
		if err := c.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
			return err
		}
		patch := client.MergeFrom(d.DeepCopy())
		d.Spec.Template.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64")}
		if err := c.Patch(ctx, d, patch); err != nil {
			return err
		}
	}
	before := labels(ctx, c, workers)
	bad := upgrade("canary-"+broken, canary, broken)
	bad.Spec.Steps = []ztv1.Step{{Nodes: intstr.FromInt32(1)}, {Nodes: intstr.FromString("100%")}}
	bad.Spec.StepTimeout = &metav1.Duration{Duration: 10 * time.Second}
	say("upgrade 2: %s → %s, whose canary workloads cannot be scheduled; the gate times out after 10s", canary, broken)
	if err := c.Create(ctx, bad); err != nil {
		return err
	}
	u, err = follow(ctx, c, bad.Name, workers)
	if err != nil {
		return err
	}
	if u.Status.Phase != ztv1.PhaseRolledBack {
		return fmt.Errorf("upgrade 2 ended %s, want RolledBack: %s", u.Status.Phase, u.Status.Message)
	}
	after := labels(ctx, c, workers)
	if before != after {
		return fmt.Errorf("rollback left node labels %s, was %s", after, before)
	}
	say("rolled back exactly: node labels are again %s", after)
	printNodes(ctx, c, workers)
	say("done; orchestrator log was %s", logPath)
	return nil
}

func installCRDs(ctx context.Context, cl *sim.Cluster) error {
	root, err := sim.RepoRoot()
	if err != nil {
		return err
	}
	crds, err := sim.ReadCRDs(filepath.Join(root, "deploy", "crds"))
	if err != nil {
		return err
	}
	return cl.InstallCRDs(ctx, crds)
}

func upgrade(name, from, to string) *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: ztv1.RevisionUpgradeSpec{
			From: from, To: to,
			Workloads: []ztv1.WorkloadPin{{Namespace: seed.AppNamespace(from), Revision: from}, {Namespace: seed.AppNamespace(to), Revision: to}},
			Analysis:  ztv1.Analysis{AgentVerification: ztv1.AgentVerificationDisabled},
		},
	}
}

// follow prints a line whenever the upgrade's phase, step, stage or message changes,
// until it ends.
func follow(ctx context.Context, c client.Client, name string, workers []string) (*ztv1.RevisionUpgrade, error) {
	start := time.Now()
	last := ""
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for {
		u := &ztv1.RevisionUpgrade{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
			return nil, err
		}
		line := fmt.Sprintf("%-11s step %d/%d %-18s canary nodes %d/%d  %s", u.Status.Phase, u.Status.CurrentStep+1, len(u.Spec.Steps), u.Status.StepStage, u.Status.CanaryNodes, u.Status.TotalNodes, u.Status.Message)
		if line != last {
			fmt.Printf("    [%5.1fs] %s\n", time.Since(start).Seconds(), line)
			last = line
		}
		switch u.Status.Phase {
		case ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed:
			return u, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("upgrade %s did not end: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func labels(ctx context.Context, c client.Client, workers []string) string {
	var out []string
	for _, w := range workers {
		var n corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: w}, &n); err == nil {
			out = append(out, w+"="+n.Labels[seed.RevisionKey])
		}
	}
	return strings.Join(out, " ")
}

// printNodes shows each worker's revision label and the ztunnel revisions on it.
func printNodes(ctx context.Context, c client.Client, workers []string) {
	var pods corev1.PodList
	_ = c.List(ctx, &pods, client.InNamespace(seed.IstioNamespace), client.MatchingLabels{"app": "ztunnel"})
	zt := map[string][]string{}
	for _, p := range pods.Items {
		zt[p.Spec.NodeName] = append(zt[p.Spec.NodeName], p.Annotations[seed.RevisionKey])
	}
	for _, w := range workers {
		var n corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: w}, &n); err != nil {
			continue
		}
		sort.Strings(zt[w])
		fmt.Printf("    %-16s istio.io/rev=%-8s ztunnel %s\n", w, n.Labels[seed.RevisionKey], strings.Join(zt[w], ","))
	}
}
