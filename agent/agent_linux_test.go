package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

const agentUser = "system:serviceaccount:ztcanary-system:ztcanary-agent"

// TestAgentWritesNodeCapture runs the agent against a simulated cluster with the RBAC of
// deploy/agent: ztunnel and ambient pods are API objects on a kwok node, their network
// namespaces and processes are real on this host.
func TestAgentWritesNodeCapture(t *testing.T) {
	requirePrivileges(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := simtest.Start(t, sim.Options{Nodes: 2, SkipCRDs: true})
	crds, err := sim.ReadCRDs(filepath.Join("..", "deploy", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.InstallCRDs(ctx, crds); err != nil {
		t.Fatal(err)
	}
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cl.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	applyRBAC(t, ctx, admin)
	agentCfg := rest.CopyConfig(cl.Config)
	agentCfg.Impersonate = rest.ImpersonationConfig{UserName: agentUser}
	agentClient, err := client.New(agentCfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}

	node := sim.NodeName(1)
	create := func(obj client.Object) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for { // new namespaces get their default ServiceAccount a moment later
			err := admin.Create(ctx, obj)
			if err == nil || apierrors.IsAlreadyExists(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}})
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookinfo", Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}})
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}})
	newAPIPod := func(ns, name string, labels, annotations map[string]string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "fake"}},
				AutomountServiceAccountToken: new(bool)},
		}
		create(p)
		var got corev1.Pod
		deadline := time.Now().Add(30 * time.Second)
		for {
			if err := admin.Get(ctx, client.ObjectKeyFromObject(p), &got); err != nil {
				t.Fatal(err)
			}
			if got.Status.PodIP != "" {
				return &got
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod %s/%s got no IP from kwok", ns, name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	zt1 := newAPIPod("istio-system", "ztunnel-1-18-0-abcde", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-0"})
	podA := newAPIPod("bookinfo", "reviews-a", nil, nil)
	podB := newAPIPod("bookinfo", "ratings-b", nil, nil)
	_ = newAPIPod("plain", "not-ambient", nil, nil)
	labelNode(t, ctx, admin, node, "1-18-0")

	// The pods' network namespaces, holding their API IPs, bind-mounted like the CRI does.
	netnsDir := t.TempDir()
	a, b := newPod(t, "bookinfo/reviews-a"), newPod(t, "bookinfo/ratings-b")
	givePodIP(t, a, podA.Status.PodIP, netnsDir)
	givePodIP(t, b, podB.Status.PodIP, netnsDir)

	tree := newCgroupTree(t)
	z1 := startZtunnelPod(t, tree, "1-18-0", string(zt1.UID), []*pod{a, b}, DefaultPorts)
	z1.listen(t) // before the agent: found by its scan

	p, _ := newProbe(t)
	reg := prometheus.NewRegistry()
	ag, err := New(zaptest.NewLogger(t), agentClient, p, NewMetrics(reg), Options{
		DiscoveryOptions: DiscoveryOptions{Node: node},
		Cgroup2Root:      tree.root, NetnsDirs: []string{netnsDir},
		PollInterval: 50 * time.Millisecond, SyncInterval: 200 * time.Millisecond,
		MinWriteInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent run: %v", err)
		}
	})

	var nc ztv1.NodeCapture
	eventually := func(what string, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := admin.Get(ctx, client.ObjectKey{Name: node}, &nc)
			if err == nil {
				if ok, _ := cond(); ok {
					return
				}
			}
			if time.Now().After(deadline) {
				_, state := cond()
				t.Fatalf("%s: not within 20s (get: %v); %s", what, err, state)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	summary := func() string {
		var parts []string
		for _, p := range nc.Status.Pods {
			parts = append(parts, fmt.Sprintf("%s/%s=%s(%s)", p.Namespace, p.Name, p.State, p.CapturedBy))
		}
		return fmt.Sprintf("verdict %s (%s); pods %s", nc.Status.Verdict, nc.Status.Message, strings.Join(parts, " "))
	}

	eventually("Match with both pods on 1-18-0", func() (bool, string) {
		return nc.Status.Verdict == ztv1.VerdictMatch && summary() ==
			"verdict Match (all 2 ambient pods captured by 1-18-0); pods bookinfo/ratings-b=Single(1-18-0) bookinfo/reviews-a=Single(1-18-0)", summary()
	})
	cgID, err := CgroupID(filepath.Dir(z1.cgroup))
	if err != nil {
		t.Fatal(err)
	}
	if zs := nc.Status.Ztunnels; len(zs) != 1 || zs[0].Name != zt1.Name || zs[0].Revision != "1-18-0" || zs[0].CgroupID != int64(cgID) {
		t.Errorf("ztunnels = %+v, want %s rev 1-18-0 cgroup %d", zs, zt1.Name, cgID)
	}
	if c := meta.FindStatusCondition(nc.Status.Conditions, ConditionVerified); c == nil || c.Status != metav1.ConditionTrue || c.Reason != "Match" {
		t.Errorf("Verified condition = %+v, want True/Match", c)
	}
	if len(nc.OwnerReferences) != 1 || nc.OwnerReferences[0].Kind != "Node" {
		t.Errorf("owner references = %+v, want the Node", nc.OwnerReferences)
	}

	// Traffic shows up as accepts of the ztunnel's listener.
	a.dial(t, 15006, 5)
	eventually("5 accepts on reviews-a:15006", func() (bool, string) {
		for _, p := range nc.Status.Pods {
			for _, port := range p.Ports {
				for _, l := range port.Listeners {
					if p.Name == "reviews-a" && port.Port == 15006 && l.Accepted == 5 && l.Ztunnel == zt1.Name && l.Listening {
						return true, ""
					}
				}
			}
		}
		return false, fmt.Sprintf("%+v", nc.Status.Pods)
	})
	if got := testutil.ToFloat64(ag.metrics.accepted.WithLabelValues("1-18-0", "15006")); got != 5 {
		t.Errorf("metric accepted{1-18-0,15006} = %v, want 5", got)
	}

	// A ztunnel of another revision takes pod b: two revisions on one node.
	zt2 := newAPIPod("istio-system", "ztunnel-1-18-1-fghij", map[string]string{"app": "ztunnel"}, map[string]string{LabelRevision: "1-18-1"})
	z2 := startZtunnelPod(t, tree, "1-18-1", string(zt2.UID), []*pod{b}, DefaultPorts)
	z2.listen(t)
	eventually("both on b", func() (bool, string) {
		return strings.Contains(summary(), "bookinfo/ratings-b=Both(1-18-0,1-18-1)") && nc.Status.Verdict == ztv1.VerdictMultipleRevisions, summary()
	})
	if c := meta.FindStatusCondition(nc.Status.Conditions, ConditionVerified); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "MultipleRevisions" {
		t.Errorf("Verified condition = %+v, want False/MultipleRevisions", c)
	}
	z1.close(t)
	eventually("a uncaptured, b on 1-18-1", func() (bool, string) {
		return strings.Contains(summary(), "bookinfo/ratings-b=Single(1-18-1) bookinfo/reviews-a=None()") && nc.Status.Verdict == ztv1.VerdictMultipleRevisions, summary()
	})

	// The agent's identity can do what it needs and no more.
	if err := agentClient.Delete(ctx, &nc); !apierrors.IsForbidden(err) {
		t.Errorf("agent deleting a NodeCapture: %v, want Forbidden", err)
	}
	var secrets corev1.SecretList
	if err := agentClient.List(ctx, &secrets); !apierrors.IsForbidden(err) {
		t.Errorf("agent listing secrets: %v, want Forbidden", err)
	}
	var n corev1.Node
	if err := agentClient.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
		t.Fatal(err)
	}
	n.Labels["x"] = "y"
	if err := agentClient.Update(ctx, &n); !apierrors.IsForbidden(err) {
		t.Errorf("agent updating its node: %v, want Forbidden", err)
	}
}

func labelNode(t *testing.T, ctx context.Context, c client.Client, node, rev string) {
	t.Helper()
	var n corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(n.DeepCopy())
	n.Labels[LabelRevision] = rev
	if err := c.Patch(ctx, &n, patch); err != nil {
		t.Fatal(err)
	}
}

// givePodIP puts the pod's API address on an interface inside its namespace (no
// traffic leaves it) and bind-mounts the namespace into dir, as the CRI does.
func givePodIP(t *testing.T, p *pod, ip, dir string) {
	t.Helper()
	h, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// A veth pair with both ends inside the namespace (this kernel has no dummy driver).
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
	if err := h.LinkAdd(dummy); err != nil {
		t.Fatalf("add eth0: %v", err)
	}
	addr, err := netlink.ParseAddr(ip + "/32")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(dummy, addr); err != nil {
		t.Fatalf("add %s: %v", ip, err)
	}
	target := filepath.Join(dir, "cni-"+randHex(8))
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(p.ns))
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount netns: %v", err)
	}
	t.Cleanup(func() {
		// EINVAL: the test unmounted it already.
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount netns: %v", err)
		}
	})
}

// applyRBAC creates the objects of deploy/agent/rbac.yaml.
func applyRBAC(t *testing.T, ctx context.Context, c client.Client) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "deploy", "agent", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ztcanary-system"}}); err != nil {
		t.Fatal(err)
	}
	decoder := serializer.NewCodecFactory(c.Scheme()).UniversalDeserializer()
	for _, doc := range strings.Split(string(data), "\n---\n") {
		obj, _, err := decoder.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decode rbac.yaml: %v", err)
		}
		co, ok := obj.(client.Object)
		if !ok {
			t.Fatalf("rbac.yaml: %T is not an object", obj)
		}
		if err := c.Create(ctx, co); err != nil {
			t.Fatalf("create %T: %v", obj, err)
		}
	}
	_ = rbacv1.SchemeGroupVersion
}

func TestResolverFindsNamespacesByIPAndForgetsVanishedOnes(t *testing.T) {
	requirePrivileges(t)
	dir := t.TempDir()
	a, b := newPod(t, "x/a"), newPod(t, "x/b")
	givePodIP(t, a, "10.250.0.1", dir)
	givePodIP(t, b, "10.250.0.2", dir)
	r := NetnsResolver{Dirs: []string{dir}}
	fresh, err := r.Refresh()
	if err != nil {
		t.Fatal(err)
	}
	byIP := r.ByIP()
	if len(fresh) != 2 || byIP["10.250.0.1"] == nil || byIP["10.250.0.1"].Cookie != a.cookie || byIP["10.250.0.2"].Cookie != b.cookie {
		t.Fatalf("fresh %d, by IP %v; want a and b", len(fresh), byIP)
	}
	if fresh, _ := r.Refresh(); len(fresh) != 0 {
		t.Errorf("second refresh found %d new namespaces, want 0", len(fresh))
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents { // the CRI removes a dead pod's bind mount
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil && r.ByIP()["10.250.0.2"] != nil {
			if id := (nsID{st.Dev, st.Ino}); r.known[id] != nil && r.known[id].Cookie == b.cookie {
				if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if _, err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	if c := r.Cookies(); !c[a.cookie] || c[b.cookie] {
		t.Errorf("cookies after b vanished = %v, want only a's %d", c, a.cookie)
	}
}
