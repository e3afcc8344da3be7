package orchestrator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
	"github.com/ztcanary/ztcanary/orchestrator"
)

// podNamespaceFile is where a pod finds its namespace: there the Lease goes to the
// pod's namespace, whatever the kubeconfig says.
const podNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func inPod() bool {
	_, err := os.Stat(podNamespaceFile)
	return err == nil
}

// writeKubeconfig writes a kubeconfig whose current context names namespace ns
// ("" for none).
func writeKubeconfig(t *testing.T, ns string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:6443"}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["ctx"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u", Namespace: ns}
	cfg.CurrentContext = "ctx"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLeaseNamespaceOutOfClusterFollowsTheKubeconfig: out of cluster the Lease is in
// the namespace kubectl would use with the same kubeconfig.
func TestLeaseNamespaceOutOfClusterFollowsTheKubeconfig(t *testing.T) {
	if inPod() {
		t.Skip("runs in a pod: the Lease goes to the pod's namespace")
	}
	for _, tc := range []struct{ name, ns, want string }{
		{"a context with a namespace", "team-a", "team-a"},
		{"a context without one", "", "default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := orchestrator.LeaseNamespace(writeKubeconfig(t, tc.ns))
			if err != nil || got != tc.want {
				t.Errorf("LeaseNamespace = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := orchestrator.LeaseNamespace(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing kubeconfig gave a namespace, want an error")
	}
}

// readmeCommand is the README's out-of-cluster command line, as written: it serves
// metrics on :8080 and probes on :8081. Only when one of them is taken on this
// machine (by something outside this repository's tests, which bind neither) are
// free ports added, and the README's ports are then not checked.
func readmeCommand(t *testing.T, kubeconfig string) (args []string, defaultPorts bool) {
	t.Helper()
	args = []string{"--kubeconfig", kubeconfig}
	for _, addr := range []string{":8080", ":8081"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s is taken on this machine (%v): running the README's command with free ports", addr, err)
			return append(args, "--metrics-bind-address=127.0.0.1:0", "--health-probe-bind-address=127.0.0.1:0"), false
		}
		l.Close()
	}
	return args, true
}

// TestREADMECommandRunsOutOfCluster runs `ztcanary-orchestrator --kubeconfig FILE`
// against a simulated cluster with the default flags (leader election on) and checks
// that it takes the Lease in the kubeconfig context's namespace, serves its metrics
// and probes, and reconciles an upgrade.
func TestREADMECommandRunsOutOfCluster(t *testing.T) {
	bin := orchestratorBinary(t)
	cl := simtest.Start(t, sim.Options{Nodes: 1, SkipCRDs: true})
	c := installCRDs(t, cl)
	ctx := context.Background()

	const contextNS = "ztcanary-ops"
	kubeconfig := withContextNamespace(t, cl.Kubeconfig, contextNS)
	leaseNS := contextNS
	if inPod() {
		b, err := os.ReadFile(podNamespaceFile)
		if err != nil {
			t.Fatal(err)
		}
		leaseNS = strings.TrimSpace(string(b))
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	args, defaultPorts := readmeCommand(t, kubeconfig)
	p := startBinary(t, bin, args...)
	waitFor(t, p, "the Lease in namespace "+leaseNS, time.Minute, func() (bool, string) {
		var l coordinationv1.Lease
		if err := c.Get(ctx, client.ObjectKey{Namespace: leaseNS, Name: orchestrator.LeaderElectionID}, &l); err != nil {
			return false, err.Error()
		}
		return ptr.Deref(l.Spec.HolderIdentity, "") != "", "no holder"
	})

	u := &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "out-of-cluster"},
		Spec:       ztv1.RevisionUpgradeSpec{From: fromRev, To: toRev, Steps: []ztv1.Step{{Nodes: intstr.FromString("100%")}}},
	}
	if err := c.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	waitFor(t, p, "the upgrade's status", time.Minute, func() (bool, string) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(u), u); err != nil {
			return false, err.Error()
		}
		return len(u.Status.Conditions) > 0, fmt.Sprintf("status %+v", u.Status)
	})
	// The upgrade's metrics exist once it has been reconciled.
	if defaultPorts {
		checkServes(t, "http://127.0.0.1:8081/healthz", "ok")
		checkServes(t, "http://127.0.0.1:8080/metrics", "ztcanary_")
	}
}

// installCRDs installs ztcanary's CRDs and returns a client of the cluster.
func installCRDs(t *testing.T, cl *sim.Cluster) client.Client {
	t.Helper()
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
	return c
}

// withContextNamespace copies a kubeconfig with its current context set to ns.
func withContextNamespace(t *testing.T, kubeconfig, ns string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Contexts[cfg.CurrentContext].Namespace = ns
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// startBinary runs bin with exactly args; it is killed by PID when the test ends,
// and its logs are shown if the test failed.
func startBinary(t *testing.T, bin string, args ...string) *orchestratorProc {
	t.Helper()
	p := &orchestratorProc{logs: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	w := lockedBuffer{mu: p.mu, buf: p.logs}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("orchestrator (pid %d) logs:\n%s", p.cmd.Process.Pid, tail(p.output(), 60))
		}
	})
	return p
}

// waitFor polls cond until it holds, failing early if the process exited.
func waitFor(t *testing.T, p *orchestratorProc, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		if p.crashed() {
			return false, errors.New("the orchestrator exited on its own")
		}
		ok, msg := cond()
		last = msg
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v; last: %s", what, err, last)
	}
}

// checkServes fails t unless url answers 200 with a body containing want.
func checkServes(t *testing.T, url, want string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
		t.Errorf("GET %s: %d, body without %q:\n%s", url, resp.StatusCode, want, tail(string(b), 10))
	}
}
