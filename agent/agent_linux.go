package agent

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Agent follows the node's pods and ztunnels, reads the probe's maps and writes the node's
// NodeCapture.
type Agent struct {
	log     *zap.Logger
	c       client.Client
	probe   *Probe
	opts    Options
	metrics *Metrics

	resolver  NetnsResolver
	view      NodeView
	nodeUID   types.UID
	attr      Attribution
	pods      map[uint64]string // netns cookie -> namespace/name of ambient pods
	scanned   map[uint64]bool
	lastSync  time.Time
	lastWrite time.Time
	last      *ztv1.NodeCaptureStatus
	tgidCache map[uint32]string
}

// New wires an agent; the probe is loaded by the caller.
func New(log *zap.Logger, c client.Client, probe *Probe, m *Metrics, opts Options) (*Agent, error) {
	opts = opts.WithDefaults()
	if opts.Cgroup2Root == "" {
		root, err := FindCgroup2Root()
		if err != nil {
			return nil, err
		}
		opts.Cgroup2Root = root
	}
	a := &Agent{
		log: log.Named("agent").With(zap.String("node", opts.Node)), c: c, probe: probe, opts: opts, metrics: m,
		resolver: NetnsResolver{Dirs: opts.NetnsDirs, ProcRoot: opts.ProcRoot},
		scanned:  map[uint64]bool{}, tgidCache: map[uint32]string{},
	}
	a.resolver.Refused = func(path string, err error) { a.fail("netns", fmt.Errorf("network namespace %s: %w", path, err)) }
	return a, nil
}

// Run loops until ctx ends: sync with the API every SyncInterval, read the maps every
// PollInterval, write the status on change (at most every MinWriteInterval) or every
// ResyncInterval.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("agent running", zap.Duration("poll", a.opts.PollInterval), zap.Duration("sync", a.opts.SyncInterval))
	t := time.NewTicker(a.opts.PollInterval)
	defer t.Stop()
	defer a.resolver.Close()
	for {
		a.step(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (a *Agent) fail(stage string, err error) {
	a.metrics.errors.WithLabelValues(stage).Inc()
	a.log.Warn("agent step failed", zap.String("stage", stage), zap.Error(err))
}

func (a *Agent) step(ctx context.Context) {
	now := time.Now()
	synced := false
	if a.pods == nil || now.Sub(a.lastSync) >= a.opts.SyncInterval {
		if err := a.sync(ctx); err != nil {
			return // logged by sync
		}
		a.lastSync, synced = now, true
	}
	st, ok := a.observe(now)
	if !ok {
		return
	}
	changed := a.last == nil || !sameStatus(*a.last, st)
	// Judge the node against a fresh view before reporting a new fault: a pod deleted
	// since the last sync has closed its listeners and would read as uncaptured. (Once
	// per new fault: a lasting one costs no more API requests.)
	newFault := a.last == nil || faultKey(*a.last) != faultKey(st)
	if newFault && !synced && faultKey(st) != "" {
		if err := a.sync(ctx); err != nil {
			return
		}
		a.lastSync = now
		if st, ok = a.observe(now); !ok {
			return
		}
		changed = a.last == nil || !sameStatus(*a.last, st)
	}
	a.metrics.observe(st)
	since := now.Sub(a.lastWrite)
	if !(changed && since >= a.opts.MinWriteInterval) && since < a.opts.ResyncInterval {
		return
	}
	if err := a.write(ctx, st); err != nil {
		a.fail("write", err)
		return
	}
	a.metrics.writes.Inc()
	if changed {
		a.log.Info("capture status written", zap.String("verdict", string(st.Verdict)), zap.String("message", st.Message))
	}
	a.last, a.lastWrite = &st, now
}

// observe reads the maps and builds the node's status from the last sync's view.
func (a *Agent) observe(now time.Time) (ztv1.NodeCaptureStatus, bool) {
	owners, err := a.probe.Snapshot()
	if err != nil {
		a.fail("maps", err)
		return ztv1.NodeCaptureStatus{}, false
	}
	a.metrics.mapEntries.Set(float64(len(owners)))
	rep := BuildReport(owners, a.attr.RevisionOf(), a.pods, a.probe.opts.Ports)
	return BuildStatus(a.view, rep, a.attr, now), true
}

// faultKey names what a status finds wrong: a verdict against the node, or pods that
// no ztunnel captures ("" when nothing).
func faultKey(st ztv1.NodeCaptureStatus) string {
	var b strings.Builder
	switch st.Verdict {
	case ztv1.VerdictMismatch, ztv1.VerdictNoZtunnel, ztv1.VerdictMultipleRevisions:
		b.WriteString(string(st.Verdict) + ": " + st.Message)
	}
	for _, p := range st.Pods {
		if p.State == ztv1.CaptureNone {
			b.WriteString(" none: " + p.Namespace + "/" + p.Name)
		}
	}
	return b.String()
}

// sync reads the API, the cgroup tree and the namespaces, scans new namespaces for
// listeners bound before the agent saw them and collects garbage.
func (a *Agent) sync(ctx context.Context) error {
	view, err := Discover(ctx, a.c, a.opts.DiscoveryOptions)
	if err != nil {
		a.fail("discover", err)
		return err
	}
	var node corev1.Node
	if err := a.c.Get(ctx, client.ObjectKey{Name: a.opts.Node}, &node); err == nil {
		a.nodeUID = node.UID
	}
	ix, err := PodCgroups(a.opts.Cgroup2Root)
	if err != nil {
		a.fail("cgroups", err)
		return err
	}
	byUID := map[string]ZtunnelPod{}
	for _, z := range view.Ztunnels {
		byUID[z.UID] = z
	}
	attr := Attribution{ZtunnelOf: map[uint64]ZtunnelPod{}, PodCgroup: map[string]uint64{}}
	for id, uid := range ix.PodOf {
		if z, ok := byUID[uid]; ok {
			attr.ZtunnelOf[id] = z
		}
	}
	for uid := range byUID {
		attr.PodCgroup[uid] = ix.PodDir[uid]
	}
	attr.ByTGID = func(tgid uint32) (ZtunnelPod, bool) {
		uid, ok := a.tgidCache[tgid]
		if !ok {
			uid, _ = ProcessPodUID(a.opts.ProcRoot, tgid)
			a.tgidCache[tgid] = uid
		}
		z, ok := byUID[uid]
		return z, ok
	}
	clear(a.tgidCache) // processes come and go; re-read once per sync

	if _, err := a.resolver.Refresh(); err != nil {
		a.fail("netns", err)
		return err
	}
	byIP := a.resolver.ByIP()
	pods := map[uint64]string{}
	var fresh []*Netns
	for _, p := range view.Ambient {
		for _, ip := range p.IPs {
			n, ok := byIP[ip]
			if !ok {
				continue
			}
			pods[n.Cookie] = p.Key()
			if !a.scanned[n.Cookie] {
				fresh = append(fresh, n)
			}
			break
		}
	}
	if err := a.scan(fresh); err != nil {
		a.fail("scan", err)
	}
	live := a.resolver.Cookies()
	for c := range a.scanned {
		if !live[c] {
			delete(a.scanned, c)
		}
	}
	if n, err := a.probe.GC(live, time.Now().Add(-a.opts.ClosedRetention)); err != nil {
		a.fail("gc", err)
	} else if n > 0 {
		a.log.Info("owners collected", zap.Int("deleted", n))
	}
	a.view, a.attr, a.pods = view, attr, pods
	return nil
}

// scan reconciles the maps with the listeners of namespaces seen for the first time.
func (a *Agent) scan(fresh []*Netns) error {
	var handles []netns.NsHandle
	defer func() {
		for _, h := range handles {
			h.Close()
		}
	}()
	for _, n := range fresh {
		h, err := n.Open()
		if err != nil {
			return err
		}
		handles = append(handles, h)
	}
	if len(handles) == 0 {
		return nil
	}
	if _, err := a.probe.Reconcile(handles...); err != nil {
		return err
	}
	for _, n := range fresh {
		a.scanned[n.Cookie] = true
	}
	return nil
}

// write creates the node's NodeCapture if needed (owned by the Node, so it goes with it)
// and updates its status.
func (a *Agent) write(ctx context.Context, st ztv1.NodeCaptureStatus) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var nc ztv1.NodeCapture
		err := a.c.Get(ctx, client.ObjectKey{Name: a.opts.Node}, &nc)
		if apierrors.IsNotFound(err) {
			nc = ztv1.NodeCapture{ObjectMeta: metav1.ObjectMeta{Name: a.opts.Node}}
			if a.nodeUID != "" {
				nc.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: a.opts.Node, UID: a.nodeUID}}
			}
			if err := a.c.Create(ctx, &nc); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create NodeCapture %s: %w", a.opts.Node, err)
			}
			if err := a.c.Get(ctx, client.ObjectKey{Name: a.opts.Node}, &nc); err != nil {
				return fmt.Errorf("get NodeCapture %s: %w", a.opts.Node, err)
			}
		} else if err != nil {
			return fmt.Errorf("get NodeCapture %s: %w", a.opts.Node, err)
		}
		// Keep the conditions' transition times across writes and agent restarts.
		conds := nc.Status.Conditions
		meta.SetStatusCondition(&conds, VerifiedCondition(st))
		nc.Status = st
		nc.Status.Conditions = conds
		if err := a.c.Status().Update(ctx, &nc); err != nil {
			return fmt.Errorf("update NodeCapture %s status: %w", a.opts.Node, err)
		}
		return nil
	})
}

// sameStatus compares two statuses but their observation time and conditions (which
// follow from the verdict and message).
func sameStatus(a, b ztv1.NodeCaptureStatus) bool {
	a.ObservedAt, b.ObservedAt = nil, nil
	a.Conditions, b.Conditions = nil, nil
	return reflect.DeepEqual(a, b)
}
