package sim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Options shape a simulated cluster. The zero value is the seed topology: three nodes
// and the standard Gateway API channel, in a fresh folder removed by Stop.
type Options struct {
	// Nodes is how many kwok nodes to create (default 3): ambient-control-plane,
	// ambient-worker, ambient-worker2, ambient-worker3...
	Nodes int
	// Dir holds the cluster's data, logs, certificates and kubeconfig. Empty: a new
	// folder under the system temp directory, removed by Stop.
	Dir string
	// Progress receives one line per stage (build, start, ready). Default: discard.
	Progress io.Writer
	// Detach lets the processes outlive the caller (make sim-up); Stop them later
	// through Attach.
	Detach bool
	// GatewayAPIChannel picks the Gateway API CRDs: "standard" (default: the standard
	// CRDs plus the experimental-only kinds) or "experimental" (every CRD from the
	// experimental channel).
	GatewayAPIChannel string
	// SkipCRDs leaves out the Gateway API and Istio CRDs.
	SkipCRDs bool
}

// Cluster is a running simulated cluster.
type Cluster struct {
	// Dir holds the cluster's data and logs.
	Dir string
	// Kubeconfig is the path of an admin kubeconfig.
	Kubeconfig string
	// Config is the admin REST config.
	Config *rest.Config
	// Client is an admin clientset.
	Client kubernetes.Interface

	state    state
	children []*exec.Cmd
	ownDir   bool
}

// state is what Stop needs, written to Dir/state.json so another process (make
// sim-down) or a later Start (sweeping after a killed test) can clean up.
type state struct {
	Owner     int       `json:"owner"`    // PID of the process that started the cluster
	Detached  bool      `json:"detached"` // processes outlive the owner
	RemoveDir bool      `json:"removeDir"`
	Processes []process `json:"processes"`
}

type process struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Exe  string `json:"exe"`
}

const stateFile = "state.json"

// tempRoot is where clusters without an explicit Dir live, so Start can find and
// sweep the leftovers of killed runs. One per user: a folder root made could not be
// written by another user, and each sweeps only its own clusters.
func tempRoot() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("ztcanary-sim-%d", os.Getuid()))
}

// Start builds what is missing, starts a simulated cluster and waits until it is
// ready: control plane healthy, nodes Ready, CRDs Established. On error nothing it
// started is left running.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Nodes <= 0 {
		opts.Nodes = 3
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	switch opts.GatewayAPIChannel {
	case "":
		opts.GatewayAPIChannel = "standard"
	case "standard", "experimental":
	default:
		return nil, fmt.Errorf("gateway API channel %q: want standard or experimental", opts.GatewayAPIChannel)
	}
	SweepStale()
	bins, err := EnsureBinaries(ctx, opts.Progress)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: opts.Dir}
	if c.Dir == "" {
		if err := os.MkdirAll(tempRoot(), 0o700); err != nil {
			return nil, err
		}
		if c.Dir, err = os.MkdirTemp(tempRoot(), "cluster-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	} else if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	c.state = state{Owner: os.Getpid(), Detached: opts.Detach, RemoveDir: c.ownDir}
	defer func() {
		if err != nil {
			if serr := c.Stop(); serr != nil {
				err = errors.Join(err, serr)
			}
			c = nil
		}
	}()
	began := time.Now()
	if err := c.startControlPlane(ctx, bins, opts); err != nil {
		return c, err
	}
	fmt.Fprintf(opts.Progress, "sim: control plane ready in %s\n", time.Since(began).Round(10*time.Millisecond))
	if err := c.createNodes(ctx, opts.Nodes); err != nil {
		return c, err
	}
	if !opts.SkipCRDs {
		if err := c.installCRDs(ctx, opts.GatewayAPIChannel); err != nil {
			return c, err
		}
	}
	fmt.Fprintf(opts.Progress, "sim: cluster ready in %s: %d nodes, kubeconfig %s\n", time.Since(began).Round(10*time.Millisecond), opts.Nodes, c.Kubeconfig)
	return c, nil
}

func (c *Cluster) startControlPlane(ctx context.Context, bins *Binaries, opts Options) error {
	p, err := writePKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return fmt.Errorf("write certificates: %w", err)
	}
	ports, err := freePorts(6)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort, kcmPort, schedPort, kwokPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	if err := c.run(bins.Etcd, "etcd", opts.Detach,
		"--name=sim", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=sim="+peerURL,
		// Test data is thrown away: skipping fsync makes etcd several times faster on VMs.
		"--unsafe-no-fsync", "--log-level=warn",
	); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "etcd", etcdURL+"/health", "", 30*time.Second); err != nil {
		return err
	}

	host := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, host, p); err != nil {
		return err
	}
	if err := c.run(bins.APIServer, "kube-apiserver", opts.Detach,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--advertise-address=127.0.0.1",
		"--tls-cert-file="+p.servingCrt, "--tls-private-key-file="+p.servingKey,
		"--service-account-key-file="+p.saPub, "--service-account-signing-key-file="+p.saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--token-auth-file="+p.tokens, "--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		// No real network: the kubernetes Service needs no endpoints.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true", "--profiling=false",
		"--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
	); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-apiserver", host+"/readyz", p.adminToken, 3*time.Minute); err != nil {
		return err
	}
	c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	c.Config.QPS, c.Config.Burst = 200, 400
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}

	// The controllers and kwok talk to many nodes at once; client-go's default of
	// 5-20 requests per second would make a 1000-node cluster crawl.
	if err := c.run(bins.ControllerManager, "kube-controller-manager", opts.Detach,
		"--kubeconfig="+c.Kubeconfig,
		"--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort),
		"--leader-elect=false", "--controllers=*,-nodeipam",
		"--root-ca-file="+p.caCert, "--service-account-private-key-file="+p.saKey,
		"--use-service-account-credentials=false", "--cluster-name=ztcanary-sim",
		"--kube-api-qps=500", "--kube-api-burst=1000",
		// kwok heartbeats lag on a busy machine with many nodes: do not mark nodes
		// (and their pods) NotReady for that.
		"--node-monitor-grace-period=5m",
		"--concurrent-daemonset-syncs=10", "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
	); err != nil {
		return err
	}
	schedConfig := filepath.Join(c.Dir, "scheduler.yaml")
	if err := os.WriteFile(schedConfig, []byte(fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
`, c.Kubeconfig)), 0o644); err != nil {
		return err
	}
	if err := c.run(bins.Scheduler, "kube-scheduler", opts.Detach,
		"--config="+schedConfig,
		"--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", schedPort),
	); err != nil {
		return err
	}
	if err := c.run(bins.Kwok, "kwok", opts.Detach,
		"--kubeconfig="+c.Kubeconfig, "--config="+bins.KwokStages,
		"--manage-all-nodes=true", "--v=WARN",
		fmt.Sprintf("--server-address=127.0.0.1:%d", kwokPort),
		"--cidr=10.244.0.0/16", "--node-ip=10.89.0.1",
	); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-controller-manager", fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort), "", 60*time.Second); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-scheduler", fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort), "", 60*time.Second); err != nil {
		return err
	}
	// Pods need their namespace's default ServiceAccount, which the controller
	// manager creates: wait for it so the first test write does not race it.
	return c.poll(ctx, "the default ServiceAccount", 60*time.Second, func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// run starts one process with its output in Dir/<name>.log and records it.
func (c *Cluster) run(bin, name string, detach bool, args ...string) error {
	logf, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.Dir
	setProcAttrs(cmd, detach)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.children = append(c.children, cmd)
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	if exe == "" {
		exe = bin
	}
	c.state.Processes = append(c.state.Processes, process{Name: name, PID: cmd.Process.Pid, Exe: exe})
	return c.saveState()
}

func (c *Cluster) saveState() error {
	b, err := json.MarshalIndent(c.state, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, stateFile), b, 0o644)
}

// waitHTTP polls url until it answers 200, failing early with the log's tail if the
// process exits.
func (c *Cluster) waitHTTP(ctx context.Context, name, url, token string, timeout time.Duration) error {
	client := &http.Client{
		Timeout: 2 * time.Second,
		// Health endpoints on loopback with the components' own self-signed certificates.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec
	}
	return c.poll(ctx, name, timeout, func() (bool, error) {
		if p := c.process(name); p != nil && !alive(p.PID, p.Exe) {
			return false, fmt.Errorf("%s exited:\n%s", name, c.logTail(name))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

func (c *Cluster) process(name string) *process {
	for i := range c.state.Processes {
		if c.state.Processes[i].Name == name {
			return &c.state.Processes[i]
		}
	}
	return nil
}

// poll calls cond every 100ms until it is true, it fails, or timeout passes.
func (c *Cluster) poll(ctx context.Context, what string, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (logs in %s)", what, ctx.Err(), c.Dir)
		case <-t.C:
		}
	}
}

// logTail returns the last lines of a component's log, for error messages.
func (c *Cluster) logTail(name string) string {
	b, err := os.ReadFile(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// Stop ends every process of the cluster and removes its folder if Start created it.
// The clients of the apiserver go first, then the apiserver, then etcd, each tier
// with SIGTERM and, after 10 s, SIGKILL. It is safe to call twice.
func (c *Cluster) Stop() error {
	var clients, apiserver, store []process
	for _, p := range c.state.Processes {
		switch p.Name {
		case "etcd":
			store = append(store, p)
		case "kube-apiserver":
			apiserver = append(apiserver, p)
		default:
			clients = append(clients, p)
		}
	}
	var err error
	for _, tier := range [][]process{clients, apiserver, store} {
		err = errors.Join(err, stopProcesses(tier, 10*time.Second))
	}
	// Reap our own children so none lingers as a zombie.
	for _, cmd := range c.children {
		_ = cmd.Wait()
	}
	c.children = nil
	c.state.Processes = nil
	if c.state.RemoveDir && c.Dir != "" {
		if rerr := os.RemoveAll(c.Dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	} else if c.Dir != "" {
		_ = os.Remove(filepath.Join(c.Dir, stateFile))
	}
	return err
}

func stopProcesses(procs []process, grace time.Duration) error {
	running := func() []process {
		var out []process
		for _, p := range procs {
			if alive(p.PID, p.Exe) {
				out = append(out, p)
			}
		}
		return out
	}
	for _, p := range running() {
		_ = signal(p.PID, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for len(running()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range running() {
		_ = signal(p.PID, syscall.SIGKILL)
	}
	for i := 0; i < 100 && len(running()) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	var errs []error
	for _, p := range running() {
		errs = append(errs, fmt.Errorf("%s (pid %d) survived SIGKILL", p.Name, p.PID))
	}
	return errors.Join(errs...)
}

// Attach returns the cluster whose folder is dir, as left by a detached Start, so it
// can be used or stopped from another process.
func Attach(dir string) (*Cluster, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("no simulated cluster in %s: %w", dir, err)
	}
	c := &Cluster{Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	if err := json.Unmarshal(b, &c.state); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, stateFile), err)
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, err
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, err
	}
	return c, nil
}

// Running reports whether every process of the cluster is still alive.
func (c *Cluster) Running() bool {
	for _, p := range c.state.Processes {
		if !alive(p.PID, p.Exe) {
			return false
		}
	}
	return len(c.state.Processes) > 0
}

// PIDs returns the process IDs of the cluster's components by name.
func (c *Cluster) PIDs() map[string]int {
	m := map[string]int{}
	for _, p := range c.state.Processes {
		m[p.Name] = p.PID
	}
	return m
}

// SweepStale stops and removes clusters under the temp root whose owner died without
// stopping them (a test binary killed by a timeout). Detached clusters are left alone.
func SweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(tempRoot(), "cluster-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, stateFile))
		if err != nil {
			// A folder without state is either being created right now or was
			// abandoned before its first process: only remove old ones.
			if fi, serr := os.Stat(dir); serr == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		var s state
		if json.Unmarshal(b, &s) != nil || s.Detached || ownerAlive(s.Owner) {
			continue
		}
		c := &Cluster{Dir: dir, state: s}
		_ = c.Stop()
	}
}

func ownerAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// freePorts asks the kernel for n distinct free loopback ports. Another process may
// take one before it is used; Start then fails with the component's log.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// nodeReady reports whether a node's Ready condition is True.
func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
