package orchestrator_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// handoffLabel is the transitional node label of a Handoff (the default of
// spec.ztunnel.handoffLabel).
const handoffLabel = "ztcanary.io/handoff"

// maxViolations bounds the violations a watcher keeps (it counts them all): on a
// 1000-node cluster a broken invariant may repeat on every event.
const maxViolations = 20

// watcher checks the ztunnel invariants (DESIGN.md invariant 1) on every pod and
// node event of a run, not only at the end. It keeps, per node, the ztunnel
// revisions, Ready ztunnels and ambient pods, updated from each event's object, so
// one event costs the same on a 5-node cluster as on a 1000-node one with 10,000
// pods: the pods it changes are the only ones it looks at. Pod events arrive in the
// order of one watch stream, so the counts are always those of one moment of the
// cluster.
type watcher struct {
	mu       sync.Mutex
	strategy ztv1.NodeStrategy
	workers  map[string]bool

	pods     map[string]podFacts       // namespace/name → what the pod counts for
	revs     map[string]map[string]int // node → ztunnel revision → pods (terminating too)
	ready    map[string]int            // node → Ready ztunnel pods
	ambient  map[string]int            // node → running ambient pods
	nodes    map[string]nodeFacts      // node → labels the invariants read
	twoSince map[string]time.Time      // node → since when it runs two ztunnel revisions
	maxTwo   time.Duration
	// synced: the initial list of pods is counted. Before, a node may show its
	// ambient pods and not yet its ztunnel (the list comes in name order), so
	// nothing is judged until then.
	synced bool

	// started counts the ztunnel pods created, by revision, after the watcher
	// began: a forward upgrade starts only to ztunnels, so a from one is a restart.
	started map[string]int

	events     int
	violated   int
	violations []string
}

// podFacts is what one pod contributes to the per-node counts.
type podFacts struct {
	node    string
	rev     string // ztunnel pods only
	ztunnel bool
	ready   bool
	ambient bool
}

type nodeFacts struct {
	rev, handoff string
	cordoned     bool
}

// watchInvariants starts informers on the cluster and checks, after each event, that
// every worker holding ambient pods has a Ready ztunnel (with Handoff) or exactly one
// ztunnel revision, Ready (with Drain), and how long two revisions share a node.
func (e *env) watchInvariants(strategy ztv1.NodeStrategy) *watcher {
	w := newWatcher(strategy, e.workers())
	f := informers.NewSharedInformerFactory(e.cluster.Client, 0)
	pods := f.Core().V1().Pods().Informer()
	nodes := f.Core().V1().Nodes().Informer()
	// The watcher reads a few fields: keeping only those makes 10,000 cached pods
	// cheap for the test process, which shares the machine with what it measures.
	if err := pods.SetTransform(slimWatchedPod); err != nil {
		e.t.Fatal(err)
	}
	if err := nodes.SetTransform(slimWatchedNode); err != nil {
		e.t.Fatal(err)
	}
	reg, err := pods.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc:    func(o any, initial bool) { w.pod(o, false, initial) },
		UpdateFunc: func(_, o any) { w.pod(o, false, false) },
		DeleteFunc: func(o any) { w.pod(o, true, false) },
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.node(o, false) },
		UpdateFunc: func(_, o any) { w.node(o, false) },
		DeleteFunc: func(o any) { w.node(o, true) },
	}); err != nil {
		e.t.Fatal(err)
	}
	stop := make(chan struct{})
	f.Start(stop)
	e.t.Cleanup(func() { close(stop); f.Shutdown() })
	f.WaitForCacheSync(stop)
	// The handler has counted the initial list once its registration has synced.
	if !cache.WaitForCacheSync(stop, reg.HasSynced) {
		e.t.Fatal("the invariant watcher's pod handler did not sync")
	}
	w.mu.Lock()
	w.startChecking()
	w.mu.Unlock()
	return w
}

// startChecking judges every worker once the initial pods are counted, then each
// node as its events come; w.mu is held.
func (w *watcher) startChecking() {
	if w.synced {
		return
	}
	w.synced = true
	for n := range w.workers {
		w.checkNode(n)
	}
}

func newWatcher(strategy ztv1.NodeStrategy, workers []string) *watcher {
	w := &watcher{
		strategy: strategy, workers: map[string]bool{},
		pods: map[string]podFacts{}, revs: map[string]map[string]int{}, ready: map[string]int{},
		ambient: map[string]int{}, nodes: map[string]nodeFacts{}, twoSince: map[string]time.Time{},
		started: map[string]int{},
	}
	for _, n := range workers {
		w.workers[n] = true
	}
	return w
}

func slimWatchedPod(o any) (any, error) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return o, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, Annotations: p.Annotations, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase, Conditions: p.Status.Conditions},
	}, nil
}

func slimWatchedNode(o any) (any, error) {
	n, ok := o.(*corev1.Node)
	if !ok {
		return o, nil
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, ResourceVersion: n.ResourceVersion, Labels: n.Labels},
		Spec:       corev1.NodeSpec{Unschedulable: n.Spec.Unschedulable},
	}, nil
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func factsOf(p *corev1.Pod) podFacts {
	f := podFacts{node: p.Spec.NodeName}
	switch {
	case f.node == "":
	case p.Namespace == istioNS && p.Labels["app"] == "ztunnel":
		f.ztunnel, f.rev, f.ready = true, p.Annotations[revKey], podReady(p)
	case strings.HasPrefix(p.Namespace, "bookinfo-") && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning:
		f.ambient = true
	}
	return f
}

// count adds (sign 1) or removes (sign -1) a pod's contribution to its node's counts.
func (w *watcher) count(f podFacts, sign int) {
	switch {
	case f.ztunnel:
		if w.revs[f.node] == nil {
			w.revs[f.node] = map[string]int{}
		}
		if w.revs[f.node][f.rev] += sign; w.revs[f.node][f.rev] == 0 {
			delete(w.revs[f.node], f.rev)
		}
		if f.ready {
			w.ready[f.node] += sign
		}
	case f.ambient:
		w.ambient[f.node] += sign
	}
}

func (w *watcher) pod(o any, deleted, initial bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o, deleted = t.Obj, true
	}
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	key := p.Namespace + "/" + p.Name
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	old, had := w.pods[key]
	if had {
		w.count(old, -1)
		delete(w.pods, key)
	}
	var now podFacts
	if !deleted {
		now = factsOf(p)
		w.count(now, 1)
		w.pods[key] = now
		if !had && !initial && p.Namespace == istioNS && p.Labels["app"] == "ztunnel" {
			w.started[p.Annotations[revKey]]++
		}
	}
	if initial {
		return
	}
	w.startChecking()
	if had && old.node != "" && old.node != now.node {
		w.checkNode(old.node)
	}
	if now.node != "" {
		w.checkNode(now.node)
	}
}

func (w *watcher) node(o any, deleted bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o, deleted = t.Obj, true
	}
	n, ok := o.(*corev1.Node)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	if deleted {
		delete(w.nodes, n.Name)
	} else {
		w.nodes[n.Name] = nodeFacts{rev: n.Labels[revKey], handoff: n.Labels[handoffLabel], cordoned: n.Spec.Unschedulable}
	}
	w.checkNode(n.Name)
}

func (w *watcher) violate(format string, args ...any) {
	w.violated++
	if len(w.violations) < maxViolations {
		w.violations = append(w.violations, fmt.Sprintf(format, args...))
	}
}

// checkNode checks one worker's invariants; w.mu is held.
func (w *watcher) checkNode(n string) {
	if !w.synced || !w.workers[n] {
		return
	}
	ambient, ready, revs := w.ambient[n], w.ready[n], len(w.revs[n])
	if ambient > 0 && ready == 0 {
		w.violate("%s: %d ambient pods and no Ready ztunnel", n, ambient)
	}
	if w.strategy == ztv1.NodeStrategyDrain && ambient > 0 && revs > 1 {
		w.violate("%s: ztunnel swapped under %d ambient pods (Drain)", n, ambient)
	}
	if revs > 1 {
		if _, ok := w.twoSince[n]; !ok {
			w.twoSince[n] = time.Now()
		}
	} else if since, ok := w.twoSince[n]; ok {
		w.maxTwo = max(w.maxTwo, time.Since(since))
		delete(w.twoSince, n)
	}
}

// Started is how many ztunnel pods of revision rev were created since the watcher
// began.
func (w *watcher) Started(rev string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.started[rev]
}

// Events is how many pod and node events the watcher checked.
func (w *watcher) Events() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events
}

// LongestOverlap is the longest time a worker ran two ztunnel revisions, so far.
func (w *watcher) LongestOverlap() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	longest := w.maxTwo
	for _, since := range w.twoSince {
		longest = max(longest, time.Since(since))
	}
	return longest
}

// Err reports the invariant violations seen so far, nil if none.
func (w *watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.violated == 0 {
		return nil
	}
	return fmt.Errorf("%d invariant violations, first: %s", w.violated, strings.Join(w.violations[:min(5, len(w.violations))], "; "))
}

// assert fails the test if an invariant broke during the run, if a worker still runs
// two ztunnel revisions, or if one ran two for longer than bound.
func (w *watcher) assert(t testing.TB, bound time.Duration) {
	t.Helper()
	if err := w.Err(); err != nil {
		t.Error(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.events == 0 {
		t.Fatal("the invariant watcher saw no event")
	}
	for _, n := range slices.Sorted(maps.Keys(w.twoSince)) {
		w.maxTwo = max(w.maxTwo, time.Since(w.twoSince[n]))
		t.Errorf("node %s still runs two ztunnel revisions", n)
	}
	if w.maxTwo > bound {
		t.Errorf("a node ran two ztunnel revisions for %s, more than %s", w.maxTwo, bound)
	}
	t.Logf("invariant watcher: %d events, longest two-revision overlap %s", w.events, w.maxTwo.Round(time.Millisecond))
}

// onRevision reports, from the watcher's view, the workers that are not yet fully on
// rev: labelled rev, no handoff label, schedulable, one ztunnel pod, of rev, Ready.
func (w *watcher) onRevision(rev string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var off []string
	for n := range w.workers {
		nf, revs := w.nodes[n], w.revs[n]
		if nf.rev != rev || nf.handoff != "" || nf.cordoned || len(revs) != 1 || revs[rev] != 1 || w.ready[n] != 1 {
			off = append(off, fmt.Sprintf("%s (label %q, handoff %q, cordoned %v, ztunnels %v, %d Ready)", n, nf.rev, nf.handoff, nf.cordoned, revs, w.ready[n]))
		}
	}
	slices.Sort(off)
	return off
}

// waitOn waits until every worker is fully on rev in the watcher's view
// (invariant 2's end state: the nodes and the ztunnels serving them).
func (w *watcher) waitOn(ctx context.Context, rev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		off := w.onRevision(rev)
		if len(off) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d workers not on %s after %s: %s", len(off), rev, timeout, summarizeList(off))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func summarizeList(items []string) string {
	if len(items) > 3 {
		return fmt.Sprintf("%s and %d more", strings.Join(items[:3], "; "), len(items)-3)
	}
	return strings.Join(items, "; ")
}

// pinnedRevisions returns the revisions a pod template's pinning selects on the
// revision label: its nodeSelector's value, or the values of the required node
// affinity terms (ORed, as a Handoff pins ztunnel DaemonSets).
func pinnedRevisions(t *corev1.PodTemplateSpec) []string {
	if v, ok := t.Spec.NodeSelector[revKey]; ok {
		return []string{v}
	}
	a := t.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return nil
	}
	var out []string
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, req := range term.MatchExpressions {
			if req.Key == revKey && req.Operator == corev1.NodeSelectorOpIn {
				out = append(out, req.Values...)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkPinning checks invariant 4's pinning after an upgrade: each ztunnel DaemonSet
// is pinned to the nodes of its own revision, and every Deployment of a workload
// namespace to the nodes of that namespace's revision.
func checkPinning(ctx context.Context, c client.Client, u *ztv1.RevisionUpgrade) error {
	var errs []error
	pinned := func(kind, ns, name, rev string, t *corev1.PodTemplateSpec) {
		if got := pinnedRevisions(t); len(got) != 1 || got[0] != rev {
			errs = append(errs, fmt.Errorf("%s %s/%s is pinned to %v, want [%s]", kind, ns, name, got, rev))
		}
	}
	var dss appsv1.DaemonSetList
	if err := c.List(ctx, &dss, client.InNamespace(istioNS)); err != nil {
		return err
	}
	seen := 0
	for i := range dss.Items {
		ds := &dss.Items[i]
		rev := ds.Annotations[revKey]
		if ds.Spec.Template.Labels["app"] != "ztunnel" || (rev != u.Spec.From && rev != u.Spec.To) {
			continue
		}
		seen++
		pinned("DaemonSet", ds.Namespace, ds.Name, rev, &ds.Spec.Template)
		// Held at OnDelete while pinned, it has the seed's strategy back at the end.
		if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
			errs = append(errs, fmt.Errorf("DaemonSet %s/%s has update strategy %s, want its own (RollingUpdate) back", ds.Namespace, ds.Name, ds.Spec.UpdateStrategy.Type))
		}
	}
	if seen != 2 {
		errs = append(errs, fmt.Errorf("%d ztunnel DaemonSets of %s and %s, want 2", seen, u.Spec.From, u.Spec.To))
	}
	for _, wl := range u.Spec.Workloads {
		var deps appsv1.DeploymentList
		if err := c.List(ctx, &deps, client.InNamespace(wl.Namespace)); err != nil {
			return err
		}
		for i := range deps.Items {
			d := &deps.Items[i]
			pinned("Deployment", d.Namespace, d.Name, wl.Revision, &d.Spec.Template)
		}
	}
	return errors.Join(errs...)
}
