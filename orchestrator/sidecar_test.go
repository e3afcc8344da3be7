package orchestrator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
	"github.com/ztcanary/ztcanary/orchestrator"
)

// The sidecar fixture: the from revision serves the default injection (tag
// "default", so istio-injection=enabled namespaces use it); three namespaces use it
// three ways, one namespace is not in the mesh.
const (
	nsInjection = "shop"  // istio-injection=enabled
	nsRevision  = "cart"  // istio.io/rev=from
	nsTrap      = "trap"  // both: istio-injection takes precedence
	nsOutside   = "other" // no injection label: never touched
	statusKey   = "sidecar.istio.io/status"
)

var sidecarNamespaces = map[string]map[string]string{
	nsInjection: {"istio-injection": "enabled"},
	nsRevision:  {revKey: fromRev},
	nsTrap:      {revKey: fromRev, "istio-injection": "enabled"},
	nsOutside:   nil,
}

// newSidecarEnv starts a cluster with the real Gateway API and Istio CRDs, the
// istiod Deployments both revisions' preflight looks for, the real istiod of each
// revision out of cluster (their injection webhooks called by the API server over
// loopback), and the namespaces with their workloads, every pod injected by from.
func newSidecarEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cl := simtest.Start(t, sim.Options{Nodes: 3})
	crds, err := sim.ReadCRDs(filepath.Join("..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.InstallCRDs(ctx, crds); err != nil {
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
	e := &env{t: t, cluster: cl, c: c}
	bin, err := sim.EnsureIstiod(ctx, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []sim.IstiodOptions{{Revision: fromRev, DefaultTag: true}, {Revision: toRev}} {
		if _, err := cl.StartIstiod(ctx, bin, o); err != nil {
			t.Fatal(err)
		}
	}
	// The in-cluster istiod Deployments preflight checks (kwok makes them Available), as
	// Istio's chart renders them, with their ServiceAccounts. The rest of each release
	// (its ConfigMaps, the injector webhook) is what StartIstiod made for the real istiod.
	for _, rev := range []string{fromRev, toRev} {
		objs, err := seed.Render(ctx, seed.Release{Chart: seed.ChartIstiod, Revision: rev})
		if err != nil {
			t.Fatal(err)
		}
		istiod := []*unstructured.Unstructured{seed.Find(objs, "ServiceAccount", "istiod-"+rev), seed.Find(objs, "Deployment", "istiod-"+rev)}
		if istiod[0] == nil || istiod[1] == nil {
			t.Fatalf("the istiod chart of %s renders no ServiceAccount and Deployment istiod-%s", rev, rev)
		}
		if err := seed.Apply(ctx, c, istiod); err != nil {
			t.Fatal(err)
		}
	}
	// A gateway outside the scope, injected by from through its pod label.
	gw := seed.Deployment(istioNS, "istio-ingressgateway", 1)
	gw.Spec.Template.Labels = map[string]string{"app": "istio-ingressgateway", "istio": "ingressgateway", revKey: fromRev}
	gw.Spec.Selector.MatchLabels = map[string]string{"app": "istio-ingressgateway"}
	gw.Spec.Template.Annotations = map[string]string{"inject.istio.io/templates": "gateway"}
	e.create(gw)
	for name, labels := range sidecarNamespaces {
		e.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})
		e.create(seed.Deployment(name, "web", 2), seed.Deployment(name, "api", 1))
	}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: nsInjection, Name: "db"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "db"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "example/db"}}},
			},
		},
	}
	e.create(sts)
	e.eventually("every workload's pods to run, injected by "+fromRev, 3*time.Minute, func() (bool, string) {
		for ns := range sidecarNamespaces {
			want := fromRev
			if ns == nsOutside {
				want = ""
			}
			n := 0
			for _, p := range e.livePods(ns) {
				if p.Status.Phase != corev1.PodRunning {
					return false, fmt.Sprintf("%s/%s is %s", ns, p.Name, p.Status.Phase)
				}
				if got := podProxy(&p); got != want {
					return false, fmt.Sprintf("%s/%s carries proxy %q, want %q", ns, p.Name, got, want)
				}
				n++
			}
			if want := map[bool]int{true: 5, false: 3}[ns == nsInjection]; n != want {
				return false, fmt.Sprintf("%d pods in %s, want %d", n, ns, want)
			}
		}
		return true, ""
	})
	return e
}

type testLog struct{ t testing.TB }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// podProxy is the revision of the sidecar really in the pod's spec (an istio-proxy
// container or native sidecar), as the injector's status annotation and its
// istio.io/rev annotation name it; "" without one, "inconsistent" when they disagree.
func podProxy(p *corev1.Pod) string {
	has := false
	for _, c := range append(append([]corev1.Container{}, p.Spec.Containers...), p.Spec.InitContainers...) {
		if c.Name == "istio-proxy" && strings.Contains(c.Image, "proxyv2") {
			has = true
		}
	}
	raw, annotated := p.Annotations[statusKey]
	if !has && !annotated {
		return ""
	}
	var st struct{ Revision string }
	if !has || json.Unmarshal([]byte(raw), &st) != nil || st.Revision == "" || p.Annotations[revKey] != st.Revision {
		return "inconsistent"
	}
	return st.Revision
}

func (e *env) livePods(ns string) []corev1.Pod {
	e.t.Helper()
	var pods corev1.PodList
	if err := e.c.List(context.Background(), &pods, client.InNamespace(ns)); err != nil {
		e.t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out
}

// sidecarSnapshot is what a Sidecar rollback must restore: each namespace's labels
// and each workload's pod template annotations.
func (e *env) sidecarSnapshot() map[string]string {
	e.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for ns := range sidecarNamespaces {
		var n corev1.Namespace
		if err := e.c.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
			e.t.Fatal(err)
		}
		b, _ := json.Marshal(n.Labels)
		out["namespace/"+ns] = string(b)
		var deps appsv1.DeploymentList
		if err := e.c.List(ctx, &deps, client.InNamespace(ns)); err != nil {
			e.t.Fatal(err)
		}
		for _, d := range deps.Items {
			b, _ := json.Marshal(d.Spec.Template.Annotations)
			out["Deployment/"+ns+"/"+d.Name] = string(b)
		}
		var stss appsv1.StatefulSetList
		if err := e.c.List(ctx, &stss, client.InNamespace(ns)); err != nil {
			e.t.Fatal(err)
		}
		for _, s := range stss.Items {
			b, _ := json.Marshal(s.Spec.Template.Annotations)
			out["StatefulSet/"+ns+"/"+s.Name] = string(b)
		}
	}
	return out
}

func diffSnapshots(before, after map[string]string) []string {
	var out []string
	for k, v := range before {
		if after[k] != v {
			out = append(out, fmt.Sprintf("%s: %s, was %s", k, after[k], v))
		}
	}
	sort.Strings(out)
	return out
}

// sidecarWatcher checks, on every pod event, that at most one namespace in scope is
// part-way between the revisions (namespaces move one at a time, each verified
// before the next) and that no namespace restarts more workloads at once than the
// bound (a workload is part-way while its pods come from two templates).
type sidecarWatcher struct {
	mu         sync.Mutex
	violations []string
	events     int
	maxMixedNS int
	maxRolling int
}

func (e *env) watchSidecar(scope []string, maxRestarts int) *sidecarWatcher {
	w := &sidecarWatcher{}
	f := informers.NewSharedInformerFactory(e.cluster.Client, 0)
	pods := f.Core().V1().Pods().Informer()
	check := func(any) { w.check(pods.GetStore(), scope, maxRestarts) }
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: check, UpdateFunc: func(_, o any) { check(o) }, DeleteFunc: check}); err != nil {
		e.t.Fatal(err)
	}
	stop := make(chan struct{})
	f.Start(stop)
	f.WaitForCacheSync(stop)
	e.t.Cleanup(func() { close(stop); f.Shutdown() })
	return w
}

func (w *sidecarWatcher) check(store cache.Store, scope []string, maxRestarts int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	revs := map[string]map[string]bool{}      // namespace → proxy revisions of live pods
	templates := map[string]map[string]bool{} // namespace/owner → restart annotation values
	for _, o := range store.List() {
		p := o.(*corev1.Pod)
		if p.DeletionTimestamp != nil || !strings.Contains(strings.Join(scope, ","), p.Namespace) {
			continue
		}
		if revs[p.Namespace] == nil {
			revs[p.Namespace] = map[string]bool{}
		}
		revs[p.Namespace][podProxy(p)] = true
		owner := p.Labels["app"]
		key := p.Namespace + "/" + owner
		if templates[key] == nil {
			templates[key] = map[string]bool{}
		}
		templates[key][p.Annotations[ztv1.AnnotationRestart]] = true
	}
	mixed := 0
	for _, r := range revs {
		if len(r) > 1 {
			mixed++
		}
	}
	w.maxMixedNS = max(w.maxMixedNS, mixed)
	if mixed > 1 {
		w.violations = append(w.violations, fmt.Sprintf("%d namespaces part-way between revisions at once", mixed))
	}
	rolling := map[string]int{}
	for key, vals := range templates {
		if len(vals) > 1 {
			rolling[strings.SplitN(key, "/", 2)[0]]++
		}
	}
	for ns, n := range rolling {
		w.maxRolling = max(w.maxRolling, n)
		if n > maxRestarts {
			w.violations = append(w.violations, fmt.Sprintf("%s: %d workloads restarting at once, bound %d", ns, n, maxRestarts))
		}
	}
}

func (w *sidecarWatcher) assert(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.events == 0 {
		t.Fatal("the sidecar watcher saw no event")
	}
	if len(w.violations) > 0 {
		t.Errorf("%d violations, first: %s", len(w.violations), strings.Join(w.violations[:min(5, len(w.violations))], "; "))
	}
	t.Logf("sidecar watcher: %d events, at most %d namespace part-way, at most %d workloads restarting in a namespace", w.events, w.maxMixedNS, w.maxRolling)
}

func sidecarUpgrade(name string, steps ...ztv1.Step) *ztv1.RevisionUpgrade {
	return &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: ztv1.RevisionUpgradeSpec{
			Mode:        ztv1.ModeSidecar,
			From:        fromRev,
			To:          toRev,
			Sidecar:     ztv1.SidecarSpec{MaxConcurrentRestarts: 1},
			Steps:       steps,
			StepTimeout: &metav1.Duration{Duration: 3 * time.Minute},
		},
	}
}

func nsStep(n intstr.IntOrString, pause *ztv1.Pause) ztv1.Step {
	return ztv1.Step{Namespaces: &n, Pause: pause}
}

// assertNamespaceOn checks a namespace's labels and that every pod carries rev's
// sidecar.
func (e *env) assertNamespaceOn(ns, rev string, labels map[string]string) {
	e.t.Helper()
	var n corev1.Namespace
	if err := e.c.Get(context.Background(), client.ObjectKey{Name: ns}, &n); err != nil {
		e.t.Fatal(err)
	}
	for _, k := range []string{revKey, "istio-injection"} {
		if n.Labels[k] != labels[k] {
			e.t.Errorf("namespace %s: label %s=%q, want %q (labels %v)", ns, k, n.Labels[k], labels[k], n.Labels)
		}
	}
	pods := e.livePods(ns)
	if len(pods) == 0 {
		e.t.Errorf("namespace %s has no pods", ns)
	}
	for _, p := range pods {
		if got := podProxy(&p); got != rev {
			e.t.Errorf("pod %s/%s carries proxy %q, want %q", ns, p.Name, got, rev)
		}
	}
}

// TestSidecarUpgradeMovesNamespacesOneAtATime runs a Sidecar upgrade with the real
// injector: one namespace, a manual promote, then the rest, with the orchestrator
// killed (SIGKILL) while a namespace's workloads restart. Every namespace ends with
// only istio.io/rev=to (istio-injection, which takes precedence, removed), every pod
// carries the to sidecar, namespaces move one at a time with at most one restart at
// a time, and no workload is restarted twice.
func TestSidecarUpgradeMovesNamespacesOneAtATime(t *testing.T) {
	e := newSidecarEnv(t)
	scope := []string{nsRevision, nsInjection, nsTrap}
	w := e.watchSidecar(scope, 1)
	p := e.startOrchestrator()
	e.create(sidecarUpgrade("sidecar", nsStep(intstr.FromInt32(1), &ztv1.Pause{}), nsStep(intstr.FromString("100%"), nil)))

	u := e.waitPhase("sidecar", 4*time.Minute, ztv1.PhasePaused, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhasePaused {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	if u.Status.TotalNamespaces != 3 || u.Status.CanaryNamespaces != 1 {
		t.Errorf("status: %d of %d namespaces moved, want 1 of 3", u.Status.CanaryNamespaces, u.Status.TotalNamespaces)
	}
	// Namespaces move in name order: cart first.
	e.assertNamespaceOn(nsRevision, toRev, map[string]string{revKey: toRev})
	e.assertNamespaceOn(nsInjection, fromRev, sidecarNamespaces[nsInjection])
	e.assertNamespaceOn(nsTrap, fromRev, sidecarNamespaces[nsTrap])
	gw := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionGateways)
	if gw == nil || !strings.Contains(gw.Message, "istio-system/istio-ingressgateway runs "+fromRev+" (1 pods, not in scope") {
		t.Errorf("Gateways condition %+v does not report the ingress gateway on %s", gw, fromRev)
	}

	e.annotate("sidecar", ztv1.AnnotationPromote, "0")
	// Kill the orchestrator while the next namespace's workloads restart.
	e.eventually("a restart in flight in step 1", 3*time.Minute, func() (bool, string) {
		u := e.upgrade("sidecar")
		for _, n := range u.Status.Namespaces {
			if n.Step == 1 && n.Phase == ztv1.NodeMoving && len(n.Workloads) > 0 {
				return true, ""
			}
		}
		return false, u.Status.Message
	})
	p.kill()
	e.startOrchestrator()

	u = e.waitPhase("sidecar", 6*time.Minute, ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	for _, ns := range scope {
		e.assertNamespaceOn(ns, toRev, map[string]string{revKey: toRev})
	}
	e.assertNamespaceOn(nsOutside, "", nil)
	if !meta.IsStatusConditionTrue(u.Status.Conditions, ztv1.ConditionComplete) || u.Status.CanaryNamespaces != 3 {
		t.Errorf("not complete: %d namespaces, conditions %+v", u.Status.CanaryNamespaces, u.Status.Conditions)
	}
	// One restart per Deployment: its first ReplicaSet and one more.
	for _, ns := range scope {
		var rss appsv1.ReplicaSetList
		if err := e.c.List(context.Background(), &rss, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		per := map[string]int{}
		for _, rs := range rss.Items {
			per[metav1.GetControllerOf(&rs).Name]++
		}
		for dep, n := range per {
			if n != 2 {
				t.Errorf("Deployment %s/%s has %d ReplicaSets, want 2 (restarted exactly once)", ns, dep, n)
			}
		}
	}
	w.assert(t)
}

// TestSidecarRollbackRestoresExactLabels aborts after the first step moved two
// namespaces: their labels come back exactly (istio-injection=enabled included),
// the workloads' templates are as before, and every pod carries the from sidecar.
func TestSidecarRollbackRestoresExactLabels(t *testing.T) {
	e := newSidecarEnv(t)
	before := e.sidecarSnapshot()
	e.startOrchestrator()
	e.create(sidecarUpgrade("back", nsStep(intstr.FromInt32(2), &ztv1.Pause{}), nsStep(intstr.FromString("100%"), nil)))
	u := e.waitPhase("back", 4*time.Minute, ztv1.PhasePaused, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhasePaused || u.Status.CanaryNamespaces != 2 {
		t.Fatalf("phase %s, %d namespaces moved: %s", u.Status.Phase, u.Status.CanaryNamespaces, u.Status.Message)
	}
	e.assertNamespaceOn(nsInjection, toRev, map[string]string{revKey: toRev})
	if d := diffSnapshots(before, e.sidecarSnapshot()); len(d) == 0 {
		t.Fatal("the first step changed nothing")
	}

	e.annotate("back", ztv1.AnnotationAbort, "true")
	u = e.waitPhase("back", 4*time.Minute, ztv1.PhaseRolledBack, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseRolledBack {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	if d := diffSnapshots(before, e.sidecarSnapshot()); len(d) > 0 {
		t.Errorf("rollback left differences:\n%s", strings.Join(d, "\n"))
	}
	for ns, labels := range sidecarNamespaces {
		want := fromRev
		if ns == nsOutside {
			want = ""
		}
		e.assertNamespaceOn(ns, want, labels)
	}
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionRolledBack); c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "aborted by request") {
		t.Errorf("RolledBack condition %+v", c)
	}
}

// TestSidecarBadInputChangesNothing: an unknown revision, or a selector matching no
// namespace, is refused through the Ready condition with a message saying why, and
// no namespace label, template or pod changes.
func TestSidecarBadInputChangesNothing(t *testing.T) {
	e := newSidecarEnv(t)
	e.startOrchestrator()
	cases := []struct {
		name   string
		mutate func(*ztv1.RevisionUpgrade)
		reason string
		msg    string
	}{
		{"an unknown to revision", func(u *ztv1.RevisionUpgrade) { u.Spec.To = "1-99-0" }, "IstiodMissing",
			"spec.to: no istiod Deployment istio-system/istiod-1-99-0: revision 1-99-0 is not installed"},
		{"a selector that matches no namespace", func(u *ztv1.RevisionUpgrade) {
			u.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "nobody"}}
		}, "NoNamespaces", "spec.namespaceSelector: no namespace matches team=nobody; nothing to upgrade"},
		{"an unknown from revision", func(u *ztv1.RevisionUpgrade) { u.Spec.From = "1-17-0" }, "InjectorMissing",
			"spec.from: no sidecar injector of revision 1-17-0"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.sidecarSnapshot()
			podsBefore := e.podNames()
			name := fmt.Sprintf("bad-%d", i)
			u := sidecarUpgrade(name, nsStep(intstr.FromString("100%"), nil))
			tc.mutate(u)
			e.create(u)
			var got *ztv1.RevisionUpgrade
			e.eventually("the refusal", 2*time.Minute, func() (bool, string) {
				got = e.upgrade(name)
				c := meta.FindStatusCondition(got.Status.Conditions, ztv1.ConditionReady)
				if c == nil {
					return false, "no Ready condition yet"
				}
				return c.Status == metav1.ConditionFalse, c.Message
			})
			c := meta.FindStatusCondition(got.Status.Conditions, ztv1.ConditionReady)
			if c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) {
				t.Errorf("Ready=False %s: %s\nwant %s: %s", c.Reason, c.Message, tc.reason, tc.msg)
			}
			if got.Status.Phase != ztv1.PhasePending || len(got.Status.Namespaces) != 0 {
				t.Errorf("phase %s with %d namespaces recorded, want Pending and none", got.Status.Phase, len(got.Status.Namespaces))
			}
			time.Sleep(3 * time.Second) // give a wrong orchestrator time to act
			if d := diffSnapshots(before, e.sidecarSnapshot()); len(d) > 0 {
				t.Errorf("refused upgrade changed:\n%s", strings.Join(d, "\n"))
			}
			if after := e.podNames(); after != podsBefore {
				t.Errorf("pods changed:\nbefore %s\nafter  %s", podsBefore, after)
			}
			if err := e.c.Delete(context.Background(), got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func (e *env) podNames() string {
	var out []string
	for ns := range sidecarNamespaces {
		for _, p := range e.livePods(ns) {
			out = append(out, ns+"/"+p.Name)
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestSidecarPodWithoutTheNewProxyRollsBack makes the to injector skip the pods of
// one Deployment (neverInjectSelector in its real config, reloaded by istiod): its
// restarted pod comes up without a sidecar, the gate fails, and the upgrade rolls
// back to the exact labels with every pod on the from sidecar.
func TestSidecarPodWithoutTheNewProxyRollsBack(t *testing.T) {
	e := newSidecarEnv(t)
	ctx := context.Background()
	var cm corev1.ConfigMap
	if err := e.c.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: "istio-sidecar-injector-" + toRev}, &cm); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["config"]), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["neverInjectSelector"] = []any{map[string]any{"matchLabels": map[string]any{"app": "api"}}}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["config"] = string(b)
	if err := e.c.Update(ctx, &cm); err != nil {
		t.Fatal(err)
	}
	// Wait until istiod reloaded it: a dry-run pod of app=api in a namespace of the to
	// revision goes through the real webhook and comes back without a sidecar.
	probe := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "probe", Labels: map[string]string{revKey: toRev}}}
	e.create(probe)
	e.eventually("the to injector to skip app=api pods", time.Minute, func() (bool, string) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "probe", Name: "api", Labels: map[string]string{"app": "api"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "example/api"}}},
		}
		if err := e.c.Create(ctx, pod, client.DryRunAll); err != nil {
			return false, err.Error()
		}
		return podProxy(pod) == "", "still injected: " + pod.Annotations[statusKey]
	})
	if err := e.c.Delete(ctx, probe); err != nil {
		t.Fatal(err)
	}
	before := e.sidecarSnapshot()
	e.startOrchestrator()
	e.create(sidecarUpgrade("skipped", nsStep(intstr.FromString("100%"), nil)))
	u := e.waitPhase("skipped", 4*time.Minute, ztv1.PhaseRolledBack, ztv1.PhaseSucceeded, ztv1.PhaseFailed)
	if u.Status.Phase != ztv1.PhaseRolledBack {
		t.Fatalf("phase %s: %s", u.Status.Phase, u.Status.Message)
	}
	c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionProgressing)
	if c == nil || c.Reason != "InjectionFailed" || !strings.Contains(c.Message, "namespace "+nsRevision+": Deployment/api: pod api-") ||
		!strings.Contains(c.Message, "carries no injected proxy") {
		t.Errorf("Progressing condition %+v, want InjectionFailed naming the api pod without a proxy", c)
	}
	if d := diffSnapshots(before, e.sidecarSnapshot()); len(d) > 0 {
		t.Errorf("rollback left differences:\n%s", strings.Join(d, "\n"))
	}
	for ns, labels := range sidecarNamespaces {
		want := fromRev
		if ns == nsOutside {
			want = ""
		}
		e.assertNamespaceOn(ns, want, labels)
	}
}
