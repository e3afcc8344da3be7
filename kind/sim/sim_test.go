package sim_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

// cluster is shared by the tests of this package: the seed topology of three nodes.
var cluster *sim.Cluster

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helperStartAndHang()
		return
	}
	simtest.Main(m, sim.Options{}, &cluster)
}

// helperEnv makes the test binary a stand-in for a test that starts a cluster and is
// then killed (see TestClusterOfAKilledTestIsSweptAway).
const helperEnv = "ZTCANARY_SIM_TEST_HELPER"

func helperStartAndHang() {
	c, err := sim.Start(context.Background(), sim.Options{Nodes: 1, SkipCRDs: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(c.Dir)
	select {}
}

const revLabel = "istio.io/rev"

func testNamespace(t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	ns, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "simtest-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = c.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

func labelNode(t *testing.T, c kubernetes.Interface, node, key string, value *string) {
	t.Helper()
	var patch string
	if value == nil {
		patch = `{"metadata":{"labels":{"` + key + `":null}}}`
	} else {
		patch = `{"metadata":{"labels":{"` + key + `":"` + *value + `"}}}`
	}
	if _, err := c.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("label node %s: %v", node, err)
	}
	t.Cleanup(func() {
		_, _ = c.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"`+key+`":null}}}`), metav1.PatchOptions{})
	})
}

// applyZtunnel installs Istio's ztunnel chart of revision rev, restricted to the nodes
// labelled with it, in the test's namespace (what the seed topology installs per
// revision in istio-system).
func applyZtunnel(t *testing.T, ns, rev string) {
	t.Helper()
	c, err := client.New(cluster.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := seed.ZtunnelRelease(rev)
	r.Namespace = ns
	if err := seed.InstallRelease(context.Background(), c, r); err != nil {
		t.Fatal(err)
	}
}

// podNodes returns the nodes of the Running, Ready pods of a DaemonSet.
func podNodes(ctx context.Context, c kubernetes.Interface, ns string) (map[string]bool, error) {
	pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		return nil, err
	}
	nodes := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		nodes[p.Spec.NodeName] = true
	}
	return nodes, nil
}

func waitPodNodes(t *testing.T, c kubernetes.Interface, ns string, want ...string) {
	t.Helper()
	var got map[string]bool
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		got, err = podNodes(ctx, c, ns)
		if err != nil || len(got) != len(want) {
			return false, err
		}
		for _, w := range want {
			if !got[w] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("ztunnel pods on nodes %v, want exactly %v: %v", keys(got), want, err)
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestSeedTopology(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	nodes, err := cluster.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes.Items {
		names = append(names, n.Name)
		if n.Labels["kubernetes.io/os"] != "linux" {
			t.Errorf("node %s lacks kubernetes.io/os=linux, which Istio's charts select on", n.Name)
		}
	}
	if got, want := strings.Join(names, ","), "ambient-control-plane,ambient-worker,ambient-worker2"; got != want {
		t.Errorf("nodes = %s, want %s", got, want)
	}
	cp, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), "ambient-control-plane", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.Spec.Taints) != 1 || cp.Spec.Taints[0].Key != sim.ControlPlaneRole {
		t.Errorf("control-plane taints = %v, want kind's %s:NoSchedule", cp.Spec.Taints, sim.ControlPlaneRole)
	}
}

func TestDaemonSetWithNodeSelectorLandsOnlyOnLabelledNodes(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	c := cluster.Client
	ns := testNamespace(t, c)
	rev := "1-18-0-alpha-0"
	labelNode(t, c, "ambient-worker", revLabel, &rev)
	applyZtunnel(t, ns, rev)
	waitPodNodes(t, c, ns, "ambient-worker")
	// Stay settled: no pod shows up on an unlabelled node a moment later either.
	time.Sleep(time.Second)
	waitPodNodes(t, c, ns, "ambient-worker")
}

func TestRelabellingANodeMovesTheDaemonSetPod(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	c := cluster.Client
	ns := testNamespace(t, c)
	rev := "1-18-1"
	labelNode(t, c, "ambient-worker", revLabel, &rev)
	applyZtunnel(t, ns, rev)
	waitPodNodes(t, c, ns, "ambient-worker")

	other := "1-18-0-alpha-0"
	labelNode(t, c, "ambient-worker", revLabel, &other)
	labelNode(t, c, "ambient-worker2", revLabel, &rev)
	waitPodNodes(t, c, ns, "ambient-worker2")
}

func TestHTTPRouteWithNegativeWeightIsRefusedByTheRealSchema(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	gw, err := gatewayclient.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := testNamespace(t, cluster.Client)
	route := func(weight int32) *gatewayv1.HTTPRoute {
		return &gatewayv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: ns},
			Spec: gatewayv1.HTTPRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Name: "bookinfo-gateway"}}},
				Rules: []gatewayv1.HTTPRouteRule{{
					BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
						BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews-v1", Port: ptr.To[gatewayv1.PortNumber](9080)},
						Weight:                 ptr.To(weight),
					}}},
				}},
			},
		}
	}
	_, err = gw.GatewayV1().HTTPRoutes(ns).Create(context.Background(), route(-1), metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Fatalf("create HTTPRoute with weight -1: err = %v, want Invalid", err)
	}
	if !regexp.MustCompile(`weight.*should be greater than or equal to 0`).MatchString(err.Error()) {
		t.Errorf("error does not name the weight and its bound: %v", err)
	}
	if _, err := gw.GatewayV1().HTTPRoutes(ns).Get(context.Background(), "reviews", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("refused route was stored: get err = %v", err)
	}
	// The same route with a valid weight is accepted, so the refusal above was the
	// weight's doing.
	if _, err := gw.GatewayV1().HTTPRoutes(ns).Create(context.Background(), route(90), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create valid HTTPRoute: %v", err)
	}
}

func TestIstioCRDsAreInstalledAndJudgeWrites(t *testing.T) {
	simtest.SkipShort(t, "needs the shared simulated cluster")
	dyn, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := testNamespace(t, cluster.Client)
	vs := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	obj := func(spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
			"metadata": map[string]any{"name": "reviews", "namespace": ns},
			"spec":     spec,
		}}
	}
	_, err = dyn.Resource(vs).Namespace(ns).Create(context.Background(), obj(map[string]any{
		"hosts": []any{"reviews"},
		"http":  []any{map[string]any{"route": "not-a-list"}},
	}), metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Fatalf("VirtualService with a malformed route: err = %v, want Invalid from the Istio CRD schema", err)
	}
	_, err = dyn.Resource(vs).Namespace(ns).Create(context.Background(), obj(map[string]any{
		"hosts": []any{"reviews"},
		"http": []any{map[string]any{"route": []any{
			map[string]any{"destination": map[string]any{"host": "reviews", "subset": "v1"}, "weight": int64(90)},
			map[string]any{"destination": map[string]any{"host": "reviews", "subset": "v2"}, "weight": int64(10)},
		}}},
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create valid VirtualService: %v", err)
	}
}

func TestFiftyNodesComeUpReady(t *testing.T) {
	c := simtest.Start(t, sim.Options{Nodes: 50, SkipCRDs: true})
	nodes, err := c.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := 0
	for _, n := range nodes.Items {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready++
			}
		}
	}
	if len(nodes.Items) != 50 || ready != 50 {
		t.Fatalf("%d nodes, %d Ready; want 50 and 50", len(nodes.Items), ready)
	}
	if sim.NodeName(49) != "ambient-worker49" {
		t.Errorf("NodeName(49) = %s", sim.NodeName(49))
	}
}

func TestStopEndsEveryProcessAndRemovesItsData(t *testing.T) {
	simtest.SkipShort(t, "starts a simulated cluster")
	c, err := sim.Start(context.Background(), sim.Options{Nodes: 1, SkipCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	pids := c.PIDs()
	if len(pids) != 5 {
		t.Errorf("processes = %v, want etcd, apiserver, controller manager, scheduler, kwok", pids)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
			if strings.Contains(string(b), name) {
				t.Errorf("%s (pid %d) still runs after Stop", name, pid)
			}
		}
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("data folder %s still exists after Stop (err %v)", c.Dir, err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestClusterOfAKilledTestIsSweptAway(t *testing.T) {
	simtest.SkipShort(t, "starts a simulated cluster")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper did not report its cluster: %v", err)
	}
	dir := strings.TrimSpace(line)
	state, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatalf("helper's cluster has no state: %v", err)
	}
	var pids []int
	for _, m := range regexp.MustCompile(`"pid": (\d+)`).FindAllStringSubmatch(string(state), -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	if len(pids) != 5 {
		t.Fatalf("helper's cluster has %d processes, want 5", len(pids))
	}

	// SIGKILL: the helper gets no chance to clean up, as when go test times out.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		for _, pid := range pids {
			if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "exe")); err == nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("control-plane processes outlived the test that started them: %v", err)
	}
	sim.SweepStale()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("folder %s of the killed test's cluster survived SweepStale (err %v)", dir, err)
	}
}

func TestPinnedVersionsMatchTheToolModules(t *testing.T) {
	root, err := sim.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{"kind/tools/kube/go.mod", "k8s.io/kubernetes " + sim.KubernetesVersion},
		{"kind/tools/etcd/go.mod", "go.etcd.io/etcd/server/v3 " + sim.EtcdVersion},
		{"kind/tools/kwok/go.mod", "sigs.k8s.io/kwok " + sim.KwokVersion},
		{"go.mod", "sigs.k8s.io/gateway-api " + sim.GatewayAPIVersion},
		{"go.mod", "k8s.io/client-go v0" + strings.TrimPrefix(sim.KubernetesVersion, "v1")},
	} {
		b, err := os.ReadFile(filepath.Join(root, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), tc.want) {
			t.Errorf("%s does not require %q: keep the sim constants and the module pins in step", tc.file, tc.want)
		}
	}
}

// BenchmarkWarmStart measures starting a simulated cluster of the seed topology with
// every CRD installed, and stopping it, once the binaries are cached.
func BenchmarkWarmStart(b *testing.B) {
	if _, err := sim.EnsureBinaries(context.Background(), io.Discard); err != nil {
		b.Fatal(err)
	}
	var start, stop time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c, err := sim.Start(context.Background(), sim.Options{})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := c.Stop(); err != nil {
			b.Fatal(err)
		}
		start += t1.Sub(t0)
		stop += time.Since(t1)
	}
	b.ReportMetric(start.Seconds()/float64(b.N), "s-start/op")
	b.ReportMetric(stop.Seconds()/float64(b.N), "s-stop/op")
}
