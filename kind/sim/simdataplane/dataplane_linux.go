//go:build linux

package simdataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ztcanary/ztcanary/internal/mesh"
)

// DataPlane is the simulated data plane of some nodes of a cluster.
type DataPlane struct {
	cfg   Config
	log   *zap.Logger
	dirs  dirs
	nodes map[string]*node
	order []string

	cancel  context.CancelFunc
	running bool          // the reconcile loop runs
	loop    chan struct{} // closed when the reconcile loop ended
	kick    chan struct{}
	pods    listersv1.PodLister
	nss     listersv1.NamespaceLister

	// agentKubeconfig impersonates the agents' ServiceAccount (with AgentDaemonSet).
	agentKubeconfig string

	mu       sync.Mutex // guards nodes, seq, failures and lastErr
	seq      int
	failures []error // processes that exited on their own
	lastErr  error   // of the last reconcile
	closed   bool
}

// node is one simulated node's data plane.
type node struct {
	name     string
	pods     map[string]*podNetns // by pod UID
	ztunnels map[string]*ztunnel  // by pod UID
	agent    *agentProc
}

// podRef names a pod the data plane acts for.
type podRef struct {
	namespace, name, uid, node, revision string
}

func (p podRef) key() string { return p.namespace + "/" + p.name }

// podNetns is an ambient pod's network namespace.
type podNetns struct {
	podRef
	ips  []string
	fd   int    // holds the namespace
	path string // its published bind mount
}

// fdPath opens the namespace from another process (root may open our descriptors).
func (p *podNetns) fdPath() string {
	return "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(p.fd)
}

// Start checks the configuration and the nodes, sweeps what killed runs left behind,
// follows the cluster's pods, and returns once the namespaces and stand-in ztunnels
// of the pods that exist now are in place and the agents (if any) started. When it
// fails, everything it made is removed.
func Start(ctx context.Context, cfg Config, nodes []string) (_ *DataPlane, err error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(nodes); err != nil {
		return nil, err
	}
	if cfg.AgentBinary != "" {
		if _, err := os.Stat(cfg.AgentBinary); err != nil {
			return nil, fmt.Errorf("simdataplane: Config.AgentBinary: %w (build it with `make build` or BuildAgent)", err)
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("simdataplane: load kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("simdataplane: api client: %w", err)
	}
	for _, n := range nodes {
		if _, err := cs.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{}); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("simdataplane: node %s is not in the cluster", n)
			}
			return nil, fmt.Errorf("simdataplane: get node %s: %w", n, err)
		}
	}
	if err := Check(cfg.AgentBinary != ""); err != nil {
		return nil, err
	}
	sweepStale(cfg.Log)

	d := &DataPlane{cfg: cfg, log: cfg.Log.Named("simdataplane"), nodes: map[string]*node{}, order: slices.Clone(nodes),
		kick: make(chan struct{}, 1), loop: make(chan struct{})}
	for _, n := range nodes {
		d.nodes[n] = &node{name: n, pods: map[string]*podNetns{}, ztunnels: map[string]*ztunnel{}}
	}
	if d.dirs, err = makeDirs(cfg.Dir, cfg.AgentBinary != "", cfg.AgentDaemonSet != nil); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.Close())
		}
	}()
	if cfg.AgentDaemonSet != nil {
		if d.agentKubeconfig, err = writeImpersonating(cfg.Kubeconfig, cfg.AgentDaemonSet, d.dirs.root); err != nil {
			return d, err
		}
	}

	lctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	f := informers.NewSharedInformerFactory(cs, 0)
	podInf, nsInf := f.Core().V1().Pods(), f.Core().V1().Namespaces()
	d.pods, d.nss = podInf.Lister(), nsInf.Lister()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { d.poke() },
		UpdateFunc: func(any, any) { d.poke() },
		DeleteFunc: func(any) { d.poke() },
	}
	if _, err := podInf.Informer().AddEventHandler(h); err != nil {
		return d, fmt.Errorf("simdataplane: watch pods: %w", err)
	}
	if _, err := nsInf.Informer().AddEventHandler(h); err != nil {
		return d, fmt.Errorf("simdataplane: watch namespaces: %w", err)
	}
	f.Start(lctx.Done())
	go func() {
		<-lctx.Done()
		f.Shutdown()
	}()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return d, fmt.Errorf("simdataplane: sync %v informer: %w", typ, context.Cause(ctx))
		}
	}
	// The pods of now are in place before the agents start: their first scan (iter/tcp)
	// must find listeners bound before they attached.
	if err := d.reconcile(); err != nil {
		return d, err
	}
	if cfg.AgentBinary != "" {
		for _, n := range d.order {
			a, err := startAgent(d, n)
			if err != nil {
				return d, err
			}
			d.mu.Lock()
			d.nodes[n].agent = a
			d.mu.Unlock()
		}
	}
	if err := d.dirs.writeState(d.agentProcs()); err != nil {
		return d, err
	}
	d.running = true
	go d.run(lctx)
	d.log.Info("simulated data plane started", zap.Strings("nodes", d.order), zap.String("dir", d.dirs.root),
		zap.Bool("agents", cfg.AgentBinary != ""))
	return d, nil
}

// poke asks the reconcile loop for a pass.
func (d *DataPlane) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// run reconciles on every change, and again a second after a failed pass.
func (d *DataPlane) run(ctx context.Context) {
	defer close(d.loop)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-retry.C:
		}
		if err := d.reconcile(); err != nil {
			d.log.Warn("reconcile failed; retrying", zap.Error(err))
			retry.Reset(time.Second)
		}
	}
}

// wanted is what the API says should run on one node.
type wanted struct {
	ambient  map[string]*corev1.Pod // by UID
	ztunnels map[string]*corev1.Pod // by UID, not terminating
}

// want reads the informers' caches. Which pods get a namespace is istio-cni's rule
// (mesh.Enrolled): a pod labelled istio.io/dataplane-mode=ambient in any namespace, a pod
// of a namespace labelled so unless it opts out; never a hostNetwork pod, a pod with a
// sidecar or a pod of kube-system. Only the ambient namespaces are listed (by label, from
// the cache), which is all mesh.Enrolled reads.
func (d *DataPlane) want() (map[string]*wanted, error) {
	nss, err := d.nss.List(labels.SelectorFromSet(labels.Set{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}))
	if err != nil {
		return nil, err
	}
	nsLabels := make(map[string]map[string]string, len(nss))
	for _, ns := range nss {
		nsLabels[ns.Name] = ns.Labels
	}
	pods, err := d.pods.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	w := map[string]*wanted{}
	for _, n := range d.order {
		w[n] = &wanted{ambient: map[string]*corev1.Pod{}, ztunnels: map[string]*corev1.Pod{}}
	}
	for _, p := range pods {
		nw, ok := w[p.Spec.NodeName]
		if !ok || mesh.Finished(p) {
			continue
		}
		switch {
		case mesh.IsZtunnelPod(d.cfg.ZtunnelNamespace, p):
			if !mesh.Terminating(p) {
				nw.ztunnels[string(p.UID)] = p
			}
		case mesh.Enrolled(nsLabels[p.Namespace], p) && len(mesh.PodIPs(p)) > 0:
			// Not mesh.Ambient: a terminating pod keeps its namespace until the API
			// forgets it, as its sandbox lives until its containers stopped (istio-cni
			// removes it from ztunnel when the sandbox goes).
			nw.ambient[string(p.UID)] = p
		}
	}
	return w, nil
}

func refOf(p *corev1.Pod) podRef {
	return podRef{namespace: p.Namespace, name: p.Name, uid: string(p.UID), node: p.Spec.NodeName, revision: mesh.Revision(p)}
}

// reconcile brings the namespaces and stand-ins in line with the API: gone pods
// first (their addresses may be reused by new pods), then ztunnels, then new pods.
func (d *DataPlane) reconcile() error {
	w, err := d.want()
	if err != nil {
		return fmt.Errorf("simdataplane: read the informers' caches: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	var errs []error
	for _, name := range d.order {
		n, nw := d.nodes[name], w[name]
		for uid, p := range n.pods {
			if _, ok := nw.ambient[uid]; !ok {
				errs = append(errs, d.removePod(n, p))
			}
		}
	}
	for _, name := range d.order {
		errs = append(errs, d.reconcileZtunnels(d.nodes[name], w[name]))
	}
	for _, name := range d.order {
		n, nw := d.nodes[name], w[name]
		uids := make([]string, 0, len(nw.ambient))
		for uid := range nw.ambient {
			if _, ok := n.pods[uid]; !ok {
				uids = append(uids, uid)
			}
		}
		sort.Strings(uids)
		for _, uid := range uids {
			errs = append(errs, d.addPod(n, nw.ambient[uid]))
		}
	}
	d.lastErr = errors.Join(errs...)
	return d.lastErr
}

// reconcileZtunnels terminates the stand-ins whose pod terminates or went away,
// forgets those that exited, and starts one for each new ztunnel pod, which binds in
// every ambient pod of the node at once (beside an older ztunnel during a handoff).
func (d *DataPlane) reconcileZtunnels(n *node, nw *wanted) error {
	var errs []error
	for uid, z := range n.ztunnels {
		_, want := nw.ztunnels[uid]
		if !want {
			if !z.terminating {
				d.log.Info("ztunnel pod leaves: SIGTERM", zap.String("node", n.name), zap.String("pod", z.pod.key()), zap.String("revision", z.pod.revision))
			}
			z.terminate()
		}
		if z.done() {
			if want && !z.terminating {
				err := fmt.Errorf("stand-in ztunnel %s on %s exited on its own: %v", z.pod.key(), n.name, z.exitErr)
				d.failures = append(d.failures, err)
				d.log.Error("stand-in ztunnel exited; starting another", zap.Error(err))
			}
			errs = append(errs, z.removeCgroups())
			delete(n.ztunnels, uid)
		}
	}
	uids := make([]string, 0, len(nw.ztunnels))
	for uid := range nw.ztunnels {
		if _, ok := n.ztunnels[uid]; !ok {
			uids = append(uids, uid)
		}
	}
	sort.Slice(uids, func(i, j int) bool {
		return nw.ztunnels[uids[i]].CreationTimestamp.Before(&nw.ztunnels[uids[j]].CreationTimestamp)
	})
	for _, uid := range uids {
		ref := refOf(nw.ztunnels[uid])
		d.seq++
		z, err := startZtunnel(d.dirs.cgroup, ref, d.seq, d.cfg, d.dirs.log("ztunnel-"+ref.name+"-"+ref.uid[:8]))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n.ztunnels[uid] = z
		go d.wait(z)
		for _, p := range n.sortedPods() {
			if err := z.serve(p); err != nil {
				d.failures = append(d.failures, err) // the pod stays unserved: no retry
				errs = append(errs, err)
			}
		}
		d.log.Info("ztunnel started", zap.String("node", n.name), zap.String("pod", ref.key()), zap.String("revision", ref.revision),
			zap.Int("pid", z.cmd.Process.Pid), zap.Int("pods", len(z.serving)), zap.Bool("listening", !z.noListen))
	}
	return errors.Join(errs...)
}

// wait reaps a stand-in and asks for a pass, which forgets it.
func (d *DataPlane) wait(z *ztunnel) {
	err := z.cmd.Wait()
	z.in.Close()
	z.out.Close()
	z.exitErr = err
	close(z.exited)
	d.poke()
}

// newest is the ztunnel istio-cni hands new pods to: the latest to connect (start)
// that does not terminate. Pods it was handed stay with it alone: istio-cni sends
// adds to the latest connection only and never re-sends them when it goes away.
func (n *node) newest() *ztunnel {
	var best *ztunnel
	for _, z := range n.ztunnels {
		if z.terminating || z.done() {
			continue
		}
		if best == nil || z.seq > best.seq {
			best = z
		}
	}
	return best
}

func (n *node) sortedPods() []*podNetns {
	ps := make([]*podNetns, 0, len(n.pods))
	for _, p := range n.pods {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].key() < ps[j].key() })
	return ps
}

// addPod creates a pod's namespace with its addresses, hands it to the node's newest
// ztunnel, and only then publishes it where the agent looks: istio-cni holds a pod
// until ztunnel has it.
func (d *DataPlane) addPod(n *node, pod *corev1.Pod) error {
	ips := mesh.PodIPs(pod)
	for _, other := range d.nodes {
		for _, p := range other.pods {
			for _, ip := range p.ips {
				if slices.Contains(ips, ip) {
					// kwok reuses the address of a deleted pod; the old namespace is stale.
					d.log.Info("address reused: dropping the stale namespace", zap.String("ip", ip), zap.String("pod", p.key()))
					if err := d.removePod(other, p); err != nil {
						return err
					}
				}
			}
		}
	}
	fd, err := newNetns()
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	p := &podNetns{podRef: refOf(pod), ips: ips, fd: fd, path: filepath.Join(d.dirs.netns, "cni-"+string(pod.UID))}
	if err := configureNetns(fd, ips); err != nil {
		unix.Close(fd)
		return fmt.Errorf("pod %s: %w", p.key(), err)
	}
	var serveErr error
	if z := n.newest(); z != nil {
		if serveErr = z.serve(p); serveErr != nil {
			d.failures = append(d.failures, serveErr) // the pod stays unserved: no retry
		}
	}
	if err := publish(fd, p.path); err != nil {
		for _, z := range n.ztunnels {
			_ = z.forget(p.uid)
		}
		unix.Close(fd)
		return errors.Join(serveErr, fmt.Errorf("pod %s: %w", p.key(), err))
	}
	n.pods[p.uid] = p
	d.log.Info("pod namespace ready", zap.String("node", n.name), zap.String("pod", p.key()), zap.Strings("ips", ips))
	return serveErr
}

// removePod closes the pod in every ztunnel and removes its namespace.
func (d *DataPlane) removePod(n *node, p *podNetns) error {
	errs := []error{unpublish(p.path)}
	for _, z := range n.ztunnels {
		errs = append(errs, z.forget(p.uid))
	}
	unix.Close(p.fd)
	delete(n.pods, p.uid)
	d.log.Info("pod namespace removed", zap.String("node", n.name), zap.String("pod", p.key()))
	return errors.Join(errs...)
}

// State returns what the data plane has materialized now.
func (d *DataPlane) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	var s State
	for _, name := range d.order {
		n := d.nodes[name]
		ns := NodeState{Name: name}
		if n.agent != nil {
			ns.AgentPID = n.agent.cmd.Process.Pid
			ns.AgentSandboxed = n.agent.sandbox != nil
		}
		for _, p := range n.sortedPods() {
			ns.Pods = append(ns.Pods, PodState{Namespace: p.namespace, Name: p.name, UID: p.uid, IPs: slices.Clone(p.ips), Netns: p.path})
		}
		for _, z := range n.ztunnels {
			if z.done() {
				continue
			}
			zs := z.state()
			for uid := range z.serving {
				if p, ok := n.pods[uid]; ok {
					zs.Serving = append(zs.Serving, p.key())
				}
			}
			sort.Strings(zs.Serving)
			ns.Ztunnels = append(ns.Ztunnels, zs)
		}
		sort.Slice(ns.Ztunnels, func(i, j int) bool { return ns.Ztunnels[i].PID < ns.Ztunnels[j].PID })
		s.Nodes = append(s.Nodes, ns)
	}
	return s
}

// Connect makes n TCP connections to port of the ambient pod namespace/name, from
// inside the pod's network namespace to its own address (where a ztunnel captures
// them), and closes them: the agents count them as accepted by the listening revision.
func (d *DataPlane) Connect(ctx context.Context, namespace, name string, port, n int) error {
	d.mu.Lock()
	var (
		fd   = -1
		addr string
	)
	for _, nd := range d.nodes {
		for _, p := range nd.pods {
			if p.namespace == namespace && p.name == name {
				var err error
				if fd, err = unix.Dup(p.fd); err != nil {
					d.mu.Unlock()
					return fmt.Errorf("simdataplane: connect to %s/%s: %w", namespace, name, err)
				}
				unix.CloseOnExec(fd)
				addr = net.JoinHostPort(p.ips[0], strconv.Itoa(port))
			}
		}
	}
	d.mu.Unlock()
	if fd < 0 {
		return fmt.Errorf("simdataplane: connect to %s/%s: no such ambient pod on the simulated nodes", namespace, name)
	}
	defer unix.Close(fd)
	if err := dialIn(ctx, fd, addr, n); err != nil {
		return fmt.Errorf("simdataplane: connect to %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Err reports processes that exited on their own (a crashed agent or stand-in), pods
// a stand-in failed to take, and the error of the last reconcile pass, if it failed.
func (d *DataPlane) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return errors.Join(append(slices.Clone(d.failures), d.lastErr)...)
}

// Dir is the folder holding the data plane's mounts, logs and state.
func (d *DataPlane) Dir() string { return d.dirs.root }

// AgentLog returns what the agent of node logged so far.
func (d *DataPlane) AgentLog(node string) (string, error) {
	b, err := os.ReadFile(d.dirs.log("agent-" + node))
	if err != nil {
		return "", fmt.Errorf("simdataplane: agent log of %s: %w", node, err)
	}
	return string(b), nil
}

// Close stops the agents and the stand-in ztunnels (by PID) and removes the
// namespaces, cgroups and bpffs it made. Closing twice is harmless.
func (d *DataPlane) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	if d.cancel != nil {
		d.cancel()
	}
	if d.running {
		<-d.loop
	}
	var errs []error
	for _, name := range d.order {
		if a := d.nodes[name].agent; a != nil {
			errs = append(errs, a.stop(&d.mu))
		}
	}
	for _, name := range d.order {
		n := d.nodes[name]
		for _, z := range n.ztunnels {
			z.kill()
			errs = append(errs, z.removeCgroups())
		}
		for _, p := range n.pods {
			errs = append(errs, unpublish(p.path))
			unix.Close(p.fd)
		}
		n.ztunnels, n.pods = map[string]*ztunnel{}, map[string]*podNetns{}
	}
	errs = append(errs, d.dirs.remove())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("simdataplane: close: %w", err)
	}
	d.log.Info("simulated data plane stopped")
	return nil
}

func (d *DataPlane) agentProcs() []process {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ps []process
	for _, n := range d.nodes {
		if n.agent != nil {
			ps = append(ps, process{PID: n.agent.cmd.Process.Pid, Exe: n.agent.exe})
		}
	}
	return ps
}
