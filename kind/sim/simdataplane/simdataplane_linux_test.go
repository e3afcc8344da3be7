package simdataplane_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simdataplane"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

const revA = "1-18-0"

// childEnv makes the test binary a process that starts a data plane and waits to be
// killed, to test the sweep of a killed run's leftovers.
const childEnv = "ZTCANARY_SIMDATAPLANE_TEST_CHILD"

func TestMain(m *testing.M) {
	if kc := os.Getenv(childEnv); kc != "" {
		os.Exit(childMain(kc))
	}
	os.Exit(m.Run())
}

func childMain(kubeconfig string) int {
	dp, err := simdataplane.Start(context.Background(), simdataplane.Config{Kubeconfig: kubeconfig, AgentBinary: os.Getenv(childEnv + "_AGENT")},
		strings.Split(os.Getenv(childEnv+"_NODES"), ","))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println(dp.Dir())
	select {} // until killed
}

// requireHost skips without root, cgroup v2 or BTF, except under CI=true where it
// fails: there the data plane and the agents must run. Under -short it skips.
func requireHost(t *testing.T) {
	t.Helper()
	simtest.SkipShort(t, "needs root, cgroup v2 and BTF")
	if err := simdataplane.Check(true); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skip(err)
	}
}

// world is a simulated cluster with the NodeCapture CRD and revision A's seed
// topology on its workers.
type world struct {
	cl      *sim.Cluster
	c       client.Client
	workers []string
	agent   string
}

func newWorld(t *testing.T, nodes int) *world {
	t.Helper()
	requireHost(t)
	ctx := context.Background()
	cl := simtest.Start(t, sim.Options{Nodes: nodes, SkipCRDs: true})
	crds, err := sim.ReadCRDs(filepath.Join("..", "..", "..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.InstallCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := ztv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cl.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{cl: cl, c: c}
	for i := 1; i < nodes; i++ {
		w.workers = append(w.workers, sim.NodeName(i))
	}
	if err := seed.Install(ctx, c, w.workers, revA); err != nil {
		t.Fatal(err)
	}
	if w.agent, err = simdataplane.BuildAgent(ctx, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	return w
}

// start runs a data plane with agents on the workers, closed (and checked clean)
// when the test ends; on failure the agents' logs are shown first.
func (w *world) start(t *testing.T, cfg simdataplane.Config) *simdataplane.DataPlane {
	t.Helper()
	// Reports of an earlier data plane must not pass for this one's.
	if err := w.c.DeleteAllOf(context.Background(), &ztv1.NodeCapture{}); err != nil {
		t.Fatal(err)
	}
	cfg.Kubeconfig, cfg.AgentBinary, cfg.Log = w.cl.Kubeconfig, w.agent, zaptest.NewLogger(t)
	dp, err := simdataplane.Start(context.Background(), cfg, w.workers)
	if err != nil {
		t.Fatalf("start data plane: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range w.workers {
			if log, err := dp.AgentLog(n); err == nil {
				t.Logf("agent of %s:\n%s", n, tail(log, 30))
			}
		}
	})
	return dp
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ambientOn lists the Running ambient pods the API places on node, as namespace/name.
func (w *world) ambientOn(t *testing.T, node string) []string {
	t.Helper()
	var pods corev1.PodList
	if err := w.c.List(context.Background(), &pods, client.InNamespace(seed.AppNamespace(revA))); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.Spec.NodeName == node && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	sort.Strings(out)
	return out
}

// newPod creates a bare pod on node (in namespace ns, created not enrolled if new) and
// returns it once kwok gave it an IP.
func (w *world) newPod(t *testing.T, ns, name string, labels, annotations map[string]string, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if err := w.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); client.IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "fake"}},
			AutomountServiceAccountToken: new(bool)},
	}
	// A new namespace gets its default ServiceAccount a moment later.
	eventually(t, "pod "+ns+"/"+name+" created", 30*time.Second, func() (bool, string) {
		err := w.c.Create(ctx, p)
		return client.IgnoreAlreadyExists(err) == nil, fmt.Sprint(err)
	})
	eventually(t, "pod "+ns+"/"+name+" to get an IP", 30*time.Second, func() (bool, string) {
		if err := w.c.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
			return false, err.Error()
		}
		return p.Status.PodIP != "", "no IP"
	})
	return p
}

// nodeState is node's part of st.
func nodeState(st simdataplane.State, node string) simdataplane.NodeState {
	for _, n := range st.Nodes {
		if n.Name == node {
			return n
		}
	}
	return simdataplane.NodeState{}
}

// netnsOf lists the pods of namespace ns that have a network namespace on node.
func netnsOf(st simdataplane.State, node, ns string) []string {
	var out []string
	for _, p := range nodeState(st, node).Pods {
		if p.Namespace == ns {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	sort.Strings(out)
	return out
}

// capture reads node's NodeCapture (nil if none yet).
func (w *world) capture(t *testing.T, node string) *ztv1.NodeCapture {
	t.Helper()
	var nc ztv1.NodeCapture
	if err := w.c.Get(context.Background(), client.ObjectKey{Name: node}, &nc); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil
		}
		t.Fatal(err)
	}
	return &nc
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		ok, msg := cond()
		last = msg
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v; last: %s", what, err, last)
	}
}

// capturedBy checks that node's agent reports exactly the node's ambient pods, each
// captured by rev alone (state Single, every port listening), with verdict Match.
func (w *world) capturedBy(t *testing.T, node, rev string) (bool, string) {
	nc := w.capture(t, node)
	if nc == nil || nc.Status.ObservedAt == nil {
		return false, "no NodeCapture for " + node
	}
	want := w.ambientOn(t, node)
	var got []string
	for _, p := range nc.Status.Pods {
		got = append(got, p.Namespace+"/"+p.Name)
		if p.State != ztv1.CaptureSingle || p.CapturedBy != rev {
			return false, fmt.Sprintf("%s: pod %s/%s %s(%s)", node, p.Namespace, p.Name, p.State, p.CapturedBy)
		}
	}
	sort.Strings(got)
	if len(want) == 0 || !slices.Equal(got, want) {
		return false, fmt.Sprintf("%s reports pods %v, the API places %v there", node, got, want)
	}
	if nc.Status.Verdict != ztv1.VerdictMatch {
		return false, fmt.Sprintf("%s: verdict %s: %s", node, nc.Status.Verdict, nc.Status.Message)
	}
	return true, ""
}

func TestDataPlane(t *testing.T) {
	w := newWorld(t, 3) // the control plane and two workers
	ctx := context.Background()

	t.Run("agents report every ambient pod of their own node captured by its ztunnel", func(t *testing.T) {
		dp := w.start(t, simdataplane.Config{})
		for _, n := range w.workers {
			eventually(t, "the agent of "+n+" to report Single("+revA+")", time.Minute, func() (bool, string) { return w.capturedBy(t, n, revA) })
		}
		st := dp.State()
		pods := 0
		for _, n := range st.Nodes {
			if len(n.Ztunnels) != 1 || n.Ztunnels[0].Revision != revA || len(n.Ztunnels[0].Serving) != len(n.Pods) || n.AgentPID == 0 {
				t.Errorf("node %s: ztunnels %+v for %d pods, agent %d; want one %s ztunnel serving every pod, an agent", n.Name, n.Ztunnels, len(n.Pods), n.AgentPID, revA)
			}
			pods += len(n.Pods)
		}
		if want := len(seed.Apps) * seed.AppReplicas; pods != want {
			t.Errorf("%d pod namespaces, want %d", pods, want)
		}

		// Connections made in a pod are counted for the ztunnel that accepted them.
		for _, n := range w.workers {
			pod := w.ambientOn(t, n)[0]
			ns, name, _ := strings.Cut(pod, "/")
			if err := dp.Connect(ctx, ns, name, 15006, 7); err != nil {
				t.Fatal(err)
			}
			eventually(t, "7 accepted connections on "+pod, 30*time.Second, func() (bool, string) {
				nc := w.capture(t, n)
				for _, p := range nc.Status.Pods {
					if p.Namespace+"/"+p.Name != pod {
						continue
					}
					for _, port := range p.Ports {
						for _, l := range port.Listeners {
							if port.Port == 15006 && l.Revision == revA && l.Accepted == 7 {
								return true, ""
							}
						}
					}
					return false, fmt.Sprintf("%+v", p.Ports)
				}
				return false, "pod not reported"
			})
		}

		// A ztunnel pod deleted: its stand-in closes, the DaemonSet's new pod gets a
		// new stand-in that binds in every pod of the node.
		node := w.workers[0]
		old := w.capture(t, node).Status.Ztunnels[0]
		if err := w.c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: old.Namespace, Name: old.Name}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the new ztunnel of "+node+" to capture its pods", time.Minute, func() (bool, string) {
			nc := w.capture(t, node)
			if len(nc.Status.Ztunnels) != 1 || nc.Status.Ztunnels[0].Name == old.Name {
				return false, fmt.Sprintf("ztunnels %+v", nc.Status.Ztunnels)
			}
			for _, p := range nc.Status.Pods {
				for _, port := range p.Ports {
					for _, l := range port.Listeners {
						if l.Listening && l.Ztunnel != nc.Status.Ztunnels[0].Name {
							return false, fmt.Sprintf("pod %s port %d still held by %s", p.Name, port.Port, l.Ztunnel)
						}
					}
				}
			}
			return w.capturedBy(t, node, revA)
		})
		if err := dp.Err(); err != nil {
			t.Errorf("data plane: %v", err)
		}
	})

	t.Run("a pod labelled ambient in a namespace not enrolled is captured and reported", func(t *testing.T) {
		// istio-cni enrols a pod labelled istio.io/dataplane-mode=ambient whatever its
		// namespace's labels, and never a pod with a sidecar; the data plane and the
		// agent must both follow it (mesh.Ambient), not the namespace's label alone.
		dp := w.start(t, simdataplane.Config{})
		node := w.workers[0]
		const ns = "not-enrolled"
		ambient := map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}
		pods := []*corev1.Pod{
			w.newPod(t, ns, "opted-in", ambient, nil, node),
			w.newPod(t, ns, "plain", nil, nil, node),
			w.newPod(t, ns, "with-sidecar", ambient, map[string]string{mesh.AnnotationSidecarStatus: `{"containers":["istio-proxy"],"revision":"` + revA + `"}`}, node),
		}
		t.Cleanup(func() {
			// Later subtests expect the seed's pods alone on the node.
			for _, p := range pods {
				if err := w.c.Delete(ctx, p, client.GracePeriodSeconds(0)); client.IgnoreNotFound(err) != nil {
					t.Errorf("delete pod %s: %v", p.Name, err)
				}
			}
			eventually(t, "the data plane to drop "+ns+"/opted-in", 30*time.Second, func() (bool, string) {
				got := netnsOf(dp.State(), node, ns)
				return len(got) == 0, fmt.Sprintf("namespaces of %v", got)
			})
		})
		want := append(w.ambientOn(t, node), ns+"/opted-in")
		sort.Strings(want)

		eventually(t, "a network namespace for "+ns+"/opted-in only", 30*time.Second, func() (bool, string) {
			got := netnsOf(dp.State(), node, ns)
			return slices.Equal(got, []string{ns + "/opted-in"}), fmt.Sprintf("namespaces of %v", got)
		})
		eventually(t, "the agent of "+node+" to report "+ns+"/opted-in captured by "+revA, time.Minute, func() (bool, string) {
			nc := w.capture(t, node)
			if nc == nil {
				return false, "no NodeCapture"
			}
			var got []string
			for _, p := range nc.Status.Pods {
				got = append(got, fmt.Sprintf("%s/%s=%s(%s)", p.Namespace, p.Name, p.State, p.CapturedBy))
				if p.State != ztv1.CaptureSingle || p.CapturedBy != revA {
					return false, strings.Join(got, " ")
				}
			}
			var names []string
			for _, p := range nc.Status.Pods {
				names = append(names, p.Namespace+"/"+p.Name)
			}
			sort.Strings(names)
			if !slices.Equal(names, want) {
				return false, fmt.Sprintf("reports %v, want %v", names, want)
			}
			return nc.Status.Verdict == ztv1.VerdictMatch, fmt.Sprintf("verdict %s: %s", nc.Status.Verdict, nc.Status.Message)
		})
		for _, z := range nodeState(dp.State(), node).Ztunnels {
			if !slices.Contains(z.Serving, ns+"/opted-in") {
				t.Errorf("ztunnel %s serves %v, not %s/opted-in", z.Name, z.Serving, ns)
			}
		}
		if err := dp.Err(); err != nil {
			t.Errorf("data plane: %v", err)
		}
	})

	t.Run("a NoListen revision leaves every pod uncaptured", func(t *testing.T) {
		dp := w.start(t, simdataplane.Config{NoListen: []string{revA}})
		for _, n := range w.workers {
			eventually(t, "the agent of "+n+" to report no capture", time.Minute, func() (bool, string) {
				nc := w.capture(t, n)
				if nc == nil {
					return false, "no NodeCapture"
				}
				if nc.Status.Verdict != ztv1.VerdictMismatch {
					return false, fmt.Sprintf("verdict %s: %s", nc.Status.Verdict, nc.Status.Message)
				}
				for _, p := range nc.Status.Pods {
					if p.State != ztv1.CaptureNone {
						return false, fmt.Sprintf("pod %s %s(%s)", p.Name, p.State, p.CapturedBy)
					}
				}
				return len(nc.Status.Pods) > 0, "no pods reported"
			})
		}
		pod := w.ambientOn(t, w.workers[0])[0]
		ns, name, _ := strings.Cut(pod, "/")
		err := dp.Connect(ctx, ns, name, 15001, 1)
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("connect with nobody listening: %v, want connection refused", err)
		}
	})

	t.Run("Close removes every process, mount, cgroup and pin", func(t *testing.T) {
		dp := w.start(t, simdataplane.Config{})
		eventually(t, "a report", time.Minute, func() (bool, string) { return w.capturedBy(t, w.workers[0], revA) })
		st := dp.State()
		dir := dp.Dir()
		if err := dp.Close(); err != nil {
			t.Fatal(err)
		}
		assertClean(t, dir, st)
	})

	t.Run("the leftovers of a killed run are swept by the next start", func(t *testing.T) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+w.cl.Kubeconfig, childEnv+"_AGENT="+w.agent, childEnv+"_NODES="+strings.Join(w.workers, ","))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		dir := strings.TrimSpace(line)
		_ = cmd.Process.Kill() // by PID: no Close runs
		_ = cmd.Wait()
		if !strings.HasPrefix(dir, "/") {
			t.Fatalf("the child did not start a data plane: %q", line)
		}
		left := func() []string {
			var out []string
			ms, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/unified/ztcanary-simdataplane-%d-*", cmd.Process.Pid))
			out = append(out, ms...)
			mi, _ := os.ReadFile("/proc/self/mountinfo")
			for _, l := range strings.Split(string(mi), "\n") {
				if strings.Contains(l, dir) {
					out = append(out, l)
				}
			}
			if _, err := os.Stat(dir); err == nil {
				out = append(out, dir)
			}
			return out
		}
		if l := left(); len(l) < 3 {
			t.Fatalf("the killed run left only %v; want its cgroups, mounts and folder (else this test proves nothing)", l)
		}
		dp := w.start(t, simdataplane.Config{})
		if l := left(); len(l) > 0 {
			t.Errorf("after the next start, the killed run's leftovers remain: %v", l)
		}
		eventually(t, "the new data plane to serve", time.Minute, func() (bool, string) { return w.capturedBy(t, w.workers[0], revA) })
		if err := dp.Err(); err != nil {
			t.Error(err)
		}
	})

	t.Run("bad input is refused with a clear message and changes nothing", func(t *testing.T) {
		before := leftovers(t)
		for _, tc := range []struct {
			name  string
			cfg   simdataplane.Config
			nodes []string
			want  string
		}{
			{"no kubeconfig", simdataplane.Config{}, w.workers, "Config.Kubeconfig is empty"},
			{"no nodes", simdataplane.Config{Kubeconfig: w.cl.Kubeconfig}, nil, "no nodes given"},
			{"a node twice", simdataplane.Config{Kubeconfig: w.cl.Kubeconfig}, []string{w.workers[0], w.workers[0]}, "node " + w.workers[0] + " is given twice"},
			{"an unknown node", simdataplane.Config{Kubeconfig: w.cl.Kubeconfig}, []string{"ambient-worker99"}, "node ambient-worker99 is not in the cluster"},
			{"a missing agent binary", simdataplane.Config{Kubeconfig: w.cl.Kubeconfig, AgentBinary: "/nonexistent/ztcanary-agent"}, w.workers, "Config.AgentBinary"},
			{"port 0", simdataplane.Config{Kubeconfig: w.cl.Kubeconfig, Ports: []uint16{15001, 0}}, w.workers, "Config.Ports holds port 0"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dp, err := simdataplane.Start(ctx, tc.cfg, tc.nodes)
				if err == nil {
					dp.Close()
					t.Fatal("accepted")
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not say %q", err, tc.want)
				}
			})
		}
		if after := leftovers(t); !slices.Equal(before, after) {
			t.Errorf("refused starts left %v (before: %v)", after, before)
		}
	})

	t.Run("a start that fails midway removes what it made", func(t *testing.T) {
		before := leftovers(t)
		notAgent := filepath.Join(t.TempDir(), "not-an-agent")
		if err := os.WriteFile(notAgent, []byte("not a program"), 0o644); err != nil {
			t.Fatal(err)
		}
		// The namespaces and stand-ins are made before the agents start, so this
		// fails after them.
		dp, err := simdataplane.Start(ctx, simdataplane.Config{Kubeconfig: w.cl.Kubeconfig, AgentBinary: notAgent, Log: zaptest.NewLogger(t)}, w.workers)
		if err == nil {
			dp.Close()
			t.Fatal("started with an agent binary that is not a program")
		}
		if !strings.Contains(err.Error(), "start the agent of "+w.workers[0]) {
			t.Errorf("error %q does not name the agent", err)
		}
		if after := leftovers(t); !slices.Equal(before, after) {
			t.Errorf("a failed start left %v (before: %v)", after, before)
		}
	})
}

// leftovers lists what data planes of this process left on the host: cgroups,
// folders and mounts.
func leftovers(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		ms, _ := filepath.Glob(filepath.Join(root, fmt.Sprintf("ztcanary-simdataplane-%d-*", os.Getpid())))
		out = append(out, ms...)
	}
	ents, _ := os.ReadDir(filepath.Join(os.TempDir(), "ztcanary-simdataplane"))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, "ztcanary-simdataplane") {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// assertClean checks that nothing of a closed data plane remains.
func assertClean(t *testing.T, dir string, st simdataplane.State) {
	t.Helper()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("folder %s remains: %v", dir, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), dir) {
		t.Errorf("mounts under %s remain", dir)
	}
	for _, n := range st.Nodes {
		pids := []int{n.AgentPID}
		for _, z := range n.Ztunnels {
			pids = append(pids, z.PID)
			if _, err := os.Stat(z.Cgroup); !os.IsNotExist(err) {
				t.Errorf("cgroup %s remains", z.Cgroup)
			}
		}
		for _, pid := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				t.Errorf("process %d of node %s still runs", pid, n.Name)
			}
		}
		if len(n.Ztunnels) == 0 || n.AgentPID == 0 {
			t.Errorf("node %s had no ztunnel or agent to check: %+v", n.Name, n)
		}
	}
	if ms, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/unified", fmt.Sprintf("ztcanary-simdataplane-%d-*", os.Getpid()))); len(ms) > 0 {
		t.Errorf("cgroups remain: %v", ms)
	}
}
