package deploy

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/internal/mesh"
	"github.com/ztcanary/ztcanary/kind/seed"
	"github.com/ztcanary/ztcanary/kind/sim"
	"github.com/ztcanary/ztcanary/kind/sim/simdataplane"
	"github.com/ztcanary/ztcanary/kind/sim/simtest"
)

const agentAccount = "ztcanary-agent"

// requireDataPlane skips without root, cgroup v2 or BTF, except under CI=true where
// it fails. Under -short it skips.
func requireDataPlane(t *testing.T) {
	t.Helper()
	simtest.SkipShort(t, "needs root, cgroup v2 and BTF")
	if err := simdataplane.Check(true); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skip(err)
	}
}

// refusals are what a log line says when the kernel or the API server refused the
// process something.
var refusals = regexp.MustCompile(`(?i)forbidden|permission denied|operation not permitted|read-only file system`)

// agentWorld is a simulated cluster with deploy/ applied and the seed topology of two
// revisions on its workers.
type agentWorld struct {
	cl      *sim.Cluster
	admin   client.Client
	objs    []*unstructured.Unstructured
	ds      appsv1.DaemonSet
	workers []string
	agent   string
}

func newAgentWorld(t *testing.T, nodes int) *agentWorld {
	t.Helper()
	requireDataPlane(t)
	ctx := context.Background()
	w := &agentWorld{cl: simtest.Start(t, sim.Options{Nodes: nodes})}
	w.admin = newClient(t, w.cl.Kubeconfig)
	w.objs = build(t, ".")
	apply(t, w.admin, w.objs)
	typed(t, find(t, w.objs, "DaemonSet", "ztcanary-agent"), &w.ds)
	for i := 1; i < nodes; i++ {
		w.workers = append(w.workers, sim.NodeName(i))
	}
	if err := seed.Install(ctx, w.admin, w.workers, fromRev, toRev); err != nil {
		t.Fatal(err)
	}
	var err error
	if w.agent, err = simdataplane.BuildAgent(ctx, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	return w
}

// startAgents runs the data plane with one agent per worker, each as ds says.
func (w *agentWorld) startAgents(t *testing.T, ds *appsv1.DaemonSet) *simdataplane.DataPlane {
	t.Helper()
	dp, err := simdataplane.Start(context.Background(), simdataplane.Config{
		Kubeconfig: w.cl.Kubeconfig, AgentBinary: w.agent, AgentDaemonSet: ds, Log: zaptest.NewLogger(t),
	}, w.workers)
	if err != nil {
		t.Fatalf("start the simulated data plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range w.workers {
				if log, err := dp.AgentLog(n); err == nil {
					t.Logf("agent of %s, last lines:\n%s", n, lastLines(log, 15))
				}
			}
		}
		if err := dp.Close(); err != nil {
			t.Errorf("close the data plane: %v", err)
		}
	})
	return dp
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// matches reports whether node's NodeCapture says Match for rev with every ambient
// pod the API places there (mesh.Ambient) captured by rev alone.
func (w *agentWorld) matches(ctx context.Context, node, rev string) (bool, string) {
	var nc ztv1.NodeCapture
	if err := w.admin.Get(ctx, client.ObjectKey{Name: node}, &nc); err != nil {
		return false, err.Error()
	}
	st := nc.Status
	if st.ObservedAt == nil || st.Verdict != ztv1.VerdictMatch || st.NodeRevision != rev {
		return false, fmt.Sprintf("verdict %s, node revision %s: %s", st.Verdict, st.NodeRevision, st.Message)
	}
	var nss corev1.NamespaceList
	if err := w.admin.List(ctx, &nss, client.MatchingLabels{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}); err != nil {
		return false, err.Error()
	}
	nsLabels := map[string]map[string]string{}
	for _, ns := range nss.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	var pods corev1.PodList
	if err := w.admin.List(ctx, &pods, client.MatchingFields{"spec.nodeName": node}); err != nil {
		return false, err.Error()
	}
	want := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if !mesh.IsZtunnelPod(seed.IstioNamespace, p) && mesh.Ambient(nsLabels[p.Namespace], p) {
			want++
		}
	}
	for _, p := range st.Pods {
		if p.State != ztv1.CaptureSingle || p.CapturedBy != rev {
			return false, fmt.Sprintf("pod %s/%s %s(%s)", p.Namespace, p.Name, p.State, p.CapturedBy)
		}
	}
	if len(st.Pods) != want {
		return false, fmt.Sprintf("%d pods reported, the API places %d ambient pods there", len(st.Pods), want)
	}
	return true, ""
}

func (w *agentWorld) waitMatch(t *testing.T, node, rev string, timeout time.Duration) {
	t.Helper()
	why := ""
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ok, now := w.matches(ctx, node, rev)
		if ctx.Err() == nil {
			why = now // not the deadline's own error
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("the agent of %s did not report %s: %v; last: %s", node, rev, err, why)
	}
}

// TestSimAgentsRunAsDeployed runs the node agents exactly as deploy/ installs them
// and the orchestrator as its own ServiceAccount: each agent as the agent's
// ServiceAccount (bound only by deploy/agent/rbac.yaml as applied), with the
// DaemonSet's args and env, only its capabilities, no_new_privs, a read-only root
// filesystem and its hostPath mounts. A Handoff upgrade with agentVerification
// Required succeeds on their NodeCaptures, which only they wrote, and neither they
// nor the orchestrator were refused anything. Then it shows the restriction is real:
// the running agents' credentials and mounts, a write under / refused in an agent's
// mount namespace, and the API refusing the agent's account a Node patch.
func TestSimAgentsRunAsDeployed(t *testing.T) {
	w := newAgentWorld(t, 4) // the control plane and three workers
	ctx := context.Background()
	dp := w.startAgents(t, &w.ds)
	for _, n := range w.workers {
		w.waitMatch(t, n, fromRev, 2*time.Minute)
	}

	kubeconfig := impersonating(t, w.cl.Kubeconfig)
	orchestratorLogs, _, _ := startOrchestratorAsDeployed(t, w.objs, kubeconfig)
	u := &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: "verified"},
		Spec: ztv1.RevisionUpgradeSpec{
			From: fromRev, To: toRev, NodeStrategy: ztv1.NodeStrategyHandoff,
			Workloads:   []ztv1.WorkloadPin{{Namespace: seed.AppNamespace(fromRev), Revision: fromRev}, {Namespace: seed.AppNamespace(toRev), Revision: toRev}},
			Steps:       []ztv1.Step{{Nodes: intstr.FromInt32(1)}, {Nodes: intstr.FromString("100%")}},
			Analysis:    ztv1.Analysis{AgentVerification: ztv1.AgentVerificationRequired},
			StepTimeout: &metav1.Duration{Duration: 3 * time.Minute},
		},
	}
	if err := w.admin.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, w.admin, u.Name, 5*time.Minute, func(u *ztv1.RevisionUpgrade) bool {
		switch u.Status.Phase {
		case ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed:
			return true
		}
		return false
	})
	if err := w.admin.Get(ctx, client.ObjectKey{Name: u.Name}, u); err != nil {
		t.Fatal(err)
	}
	if u.Status.Phase != ztv1.PhaseSucceeded {
		t.Fatalf("upgrade %s: phase %s: %s", u.Name, u.Status.Phase, u.Status.Message)
	}
	if c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionVerified); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Verified condition %+v, want True", c)
	}
	proved := 0
	for _, n := range u.Status.Nodes {
		if !n.Verified || (n.CapturedBy != toRev && n.CapturedBy != "") {
			t.Errorf("node %s: verified %v, captured by %q; want verified by the agent, %s", n.Name, n.Verified, n.CapturedBy, toRev)
		}
		if n.CapturedBy == toRev {
			proved++
		}
	}
	if proved == 0 {
		t.Error("no node proved captured by " + toRev + " (every node without ambient pods?)")
	}
	for _, n := range w.workers {
		w.waitMatch(t, n, toRev, time.Minute)
		// Only the agents wrote the NodeCaptures: every field manager is theirs.
		var nc ztv1.NodeCapture
		if err := w.admin.Get(ctx, client.ObjectKey{Name: n}, &nc); err != nil {
			t.Fatal(err)
		}
		for _, m := range nc.ManagedFields {
			if m.Manager != "ztcanary-agent" {
				t.Errorf("NodeCapture %s has fields managed by %q (%s %s)", n, m.Manager, m.Operation, m.Subresource)
			}
		}
	}
	if err := dp.Err(); err != nil {
		t.Errorf("data plane: %v", err)
	}
	for _, n := range w.workers {
		log, err := dp.AgentLog(n)
		if err != nil {
			t.Fatal(err)
		}
		if l := refusals.FindAllString(log, -1); len(l) > 0 || !strings.Contains(log, "capture status written") {
			t.Errorf("the agent of %s was refused something %d times, or wrote nothing:\n%s", n, len(l), lastLines(grepLines(log, refusals), 5))
		}
	}
	if l := grepLines(orchestratorLogs(), refusals); l != "" {
		t.Errorf("the orchestrator was refused something:\n%s", lastLines(l, 5))
	}

	t.Run("the agents run restricted", func(t *testing.T) {
		want, err := simdataplane.CapabilityMask(w.ds.Spec.Template.Spec.Containers[0].SecurityContext)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range dp.State().Nodes {
			if !n.AgentSandboxed || n.AgentPID == 0 {
				t.Fatalf("node %s: agent pid %d, sandboxed %v", n.Name, n.AgentPID, n.AgentSandboxed)
			}
			st := procStatus(t, n.AgentPID)
			hex := fmt.Sprintf("%016x", want)
			for k, v := range map[string]string{"CapEff": hex, "CapPrm": hex, "CapBnd": hex, "CapInh": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"} {
				if st[k] != v {
					t.Errorf("agent of %s (pid %d): %s %s, want %s", n.Name, n.AgentPID, k, st[k], v)
				}
			}
			if mnt, self := nsLink(t, n.AgentPID, "mnt"), nsLink(t, os.Getpid(), "mnt"); mnt == self {
				t.Errorf("agent of %s shares the test's mount namespace %s", n.Name, mnt)
			}
		}
		node := w.workers[0]
		out, err := dp.AgentExec(node, "/bin/sh", "-c", `(: > /ztcanary-probe); (: > /tmp/ztcanary-probe); mkdir /sys/fs/bpf/ztcanary-probe && rmdir /sys/fs/bpf/ztcanary-probe && echo bpffs writable; ls /sys/fs/bpf/ztcanary; grep CapEff /proc/self/status`)
		t.Logf("in the agent's mount namespace:\n%s", out)
		for _, want := range []string{"/ztcanary-probe: Read-only file system", "/tmp/ztcanary-probe: Read-only file system", "bpffs writable", "capture-v1", fmt.Sprintf("%016x", want)} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the agent's mount namespace: output lacks %q (exec error %v)", want, err)
			}
		}
		for _, p := range []string{"/ztcanary-probe", "/tmp/ztcanary-probe"} {
			if _, err := os.Stat(p); err == nil {
				os.Remove(p)
				t.Errorf("%s was written on the host", p)
			}
		}
		as := newClient(t, dp.AgentKubeconfig())
		patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"istio.io/rev":"`+fromRev+`"}}}`))
		if err := as.Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, patch); !apierrors.IsForbidden(err) {
			t.Errorf("the agent's account may patch node %s (err %v)", node, err)
		}
		if err := as.Delete(ctx, &ztv1.NodeCapture{ObjectMeta: metav1.ObjectMeta{Name: node}}); !apierrors.IsForbidden(err) {
			t.Errorf("the agent's account may delete NodeCapture %s (err %v)", node, err)
		}
		var secrets corev1.SecretList
		if err := as.List(ctx, &secrets); !apierrors.IsForbidden(err) {
			t.Errorf("the agent's account may list secrets (err %v)", err)
		}
	})
}

func grepLines(s string, re *regexp.Regexp) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// procStatus reads /proc/<pid>/status as key → value.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func nsLink(t *testing.T, pid int, ns string) string {
	t.Helper()
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestSimNoSecretsRead asks the API server (SubjectAccessReview) whether the
// orchestrator's and the agent's ServiceAccounts, with deploy/ applied, may read
// Secrets in any namespace or reach them another way (a token for another account,
// impersonation): never. A right each does hold is allowed, so the reviews do see
// their bindings. And the roles bound to them, as stored, are deploy/'s, without a
// wildcard.
func TestSimNoSecretsRead(t *testing.T) {
	cl := simtest.Start(t, sim.Options{Nodes: 1})
	admin := newClient(t, cl.Kubeconfig)
	ctx := context.Background()
	apply(t, admin, build(t, "."))
	allowed := func(t *testing.T, sa string, a authorizationv1.ResourceAttributes) bool {
		t.Helper()
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:" + namespace + ":" + sa,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
			ResourceAttributes: &a,
		}}
		if err := admin.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	for _, sa := range []struct {
		name string
		can  authorizationv1.ResourceAttributes
	}{
		{account, authorizationv1.ResourceAttributes{Verb: "patch", Resource: "nodes"}},
		{agentAccount, authorizationv1.ResourceAttributes{Verb: "create", Group: "ztcanary.io", Resource: "nodecaptures"}},
	} {
		t.Run(sa.name, func(t *testing.T) {
			if !allowed(t, sa.name, sa.can) {
				t.Fatalf("%s may not %s %s: the reviews do not see its bindings", sa.name, sa.can.Verb, sa.can.Resource)
			}
			for _, ns := range []string{"", namespace, "kube-system", seed.IstioNamespace, "default"} {
				for _, verb := range []string{"get", "list", "watch"} {
					if allowed(t, sa.name, authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Resource: "secrets"}) {
						t.Errorf("%s may %s secrets in namespace %q", sa.name, verb, ns)
					}
				}
				if allowed(t, sa.name, authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Resource: "serviceaccounts", Subresource: "token"}) {
					t.Errorf("%s may request tokens for service accounts in namespace %q", sa.name, ns)
				}
			}
			for _, res := range []string{"users", "groups", "serviceaccounts"} {
				if allowed(t, sa.name, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: res}) {
					t.Errorf("%s may impersonate %s", sa.name, res)
				}
			}
			// The roles bound to the account by name are deploy/'s, without wildcards.
			var crbs rbacv1.ClusterRoleBindingList
			var rbs rbacv1.RoleBindingList
			if err := admin.List(ctx, &crbs); err != nil {
				t.Fatal(err)
			}
			if err := admin.List(ctx, &rbs); err != nil {
				t.Fatal(err)
			}
			var bound []string
			check := func(kind, ns, name string, rules []rbacv1.PolicyRule) {
				bound = append(bound, kind+" "+name)
				for _, r := range rules {
					for _, f := range [][]string{r.Verbs, r.Resources, r.APIGroups} {
						for _, v := range f {
							if strings.Contains(v, "*") {
								t.Errorf("%s %s/%s has a wildcard: %+v", kind, ns, name, r)
							}
						}
					}
					if len(r.NonResourceURLs) > 0 {
						t.Errorf("%s %s/%s has a non-resource rule: %+v", kind, ns, name, r)
					}
				}
			}
			names := func(subjects []rbacv1.Subject) bool {
				for _, s := range subjects {
					if s.Kind == rbacv1.ServiceAccountKind && s.Name == sa.name && s.Namespace == namespace {
						return true
					}
				}
				return false
			}
			for _, b := range crbs.Items {
				if names(b.Subjects) {
					var r rbacv1.ClusterRole
					if err := admin.Get(ctx, client.ObjectKey{Name: b.RoleRef.Name}, &r); err != nil {
						t.Fatal(err)
					}
					check("ClusterRole", "", r.Name, r.Rules)
				}
			}
			for _, b := range rbs.Items {
				if !names(b.Subjects) {
					continue
				}
				if b.RoleRef.Kind == "ClusterRole" {
					var r rbacv1.ClusterRole
					if err := admin.Get(ctx, client.ObjectKey{Name: b.RoleRef.Name}, &r); err != nil {
						t.Fatal(err)
					}
					check("ClusterRole", "", r.Name, r.Rules)
					continue
				}
				var r rbacv1.Role
				if err := admin.Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: b.RoleRef.Name}, &r); err != nil {
					t.Fatal(err)
				}
				check("Role", b.Namespace, r.Name, r.Rules)
			}
			want := map[string][]string{
				account:      {"ClusterRole ztcanary-orchestrator", "Role ztcanary-orchestrator-leader-election"},
				agentAccount: {"ClusterRole ztcanary-agent"},
			}[sa.name]
			if strings.Join(bound, ",") != strings.Join(want, ",") {
				t.Errorf("roles bound to %s: %v, want %v", sa.name, bound, want)
			}
		})
	}
}

// TestSimAgentCapabilities runs the agent as deployed with each capability of the
// DaemonSet left out in turn, to show which ones the agent really needs on a node:
// whether it still proves its pods' capture (a NodeCapture with verdict Match), and
// what it logs when it cannot.
func TestSimAgentCapabilities(t *testing.T) {
	w := newAgentWorld(t, 2) // the control plane and one worker
	node := w.workers[0]
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		drop  string
		works bool
	}{
		{"with the DaemonSet's capabilities it proves the capture", "", true},
		{"without SYS_ADMIN it cannot enter the pods' namespaces", "SYS_ADMIN", false},
		{"without BPF it works: SYS_ADMIN covers bpf()", "BPF", true},
		{"without PERFMON it works: SYS_ADMIN covers tracing", "PERFMON", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := w.ds.DeepCopy()
			c := ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
			if tc.drop != "" {
				if !slices.Contains(c.Add, corev1.Capability(tc.drop)) {
					t.Fatalf("the DaemonSet does not add %s: %v", tc.drop, c.Add)
				}
				c.Add = slices.DeleteFunc(c.Add, func(x corev1.Capability) bool { return string(x) == tc.drop })
			}
			if err := w.admin.Delete(ctx, &ztv1.NodeCapture{ObjectMeta: metav1.ObjectMeta{Name: node}}); client.IgnoreNotFound(err) != nil {
				t.Fatal(err)
			}
			dp := w.startAgents(t, ds)
			timeout := 45 * time.Second
			if !tc.works {
				timeout = 20 * time.Second
			}
			why := ""
			err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
				ok, now := w.matches(ctx, node, fromRev)
				if ctx.Err() == nil {
					why = now // not the deadline's own error
				}
				return ok, nil
			})
			log, lerr := dp.AgentLog(node)
			if lerr != nil {
				t.Fatal(lerr)
			}
			refused := lastLines(grepLines(log, refusals), 3)
			t.Logf("capabilities %v: proved %v (%s); refusals logged:\n%s", c.Add, err == nil, why, refused)
			switch {
			case tc.works && err != nil:
				t.Errorf("the agent with %v did not prove the capture: %s", c.Add, why)
			case tc.works && refused != "":
				t.Errorf("the agent with %v was refused something", c.Add)
			case !tc.works && err == nil:
				t.Errorf("the agent with %v proved the capture: %s is not needed", c.Add, tc.drop)
			case !tc.works && refused == "":
				t.Errorf("the agent with %v failed without logging a refusal", c.Add)
			}
			if err := dp.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}
