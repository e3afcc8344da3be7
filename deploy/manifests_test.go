// Package deploy holds ztcanary's manifests (CRDs, orchestrator, node agent,
// kustomize bases, sample upgrades); its tests build them with kustomize, pin the
// exact RBAC rules and the orchestrator's hardening, and apply them all to the
// simulated cluster.
package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// build runs kustomize on dir, as `kubectl apply -k dir` would.
func build(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(b); err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		out = append(out, u)
	}
	return out
}

// typed decodes u strictly into a typed object: a misspelt field fails.
func typed(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	b, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the build", kind, name)
	return nil
}

func TestKustomizeBuildHoldsEveryPart(t *testing.T) {
	var got []string
	for _, o := range build(t, ".") {
		got = append(got, fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName()))
	}
	sort.Strings(got)
	want := []string{
		"ClusterRole /ztcanary-agent",
		"ClusterRole /ztcanary-orchestrator",
		"ClusterRoleBinding /ztcanary-agent",
		"ClusterRoleBinding /ztcanary-orchestrator",
		"CustomResourceDefinition /nodecaptures.ztcanary.io",
		"CustomResourceDefinition /revisionupgrades.ztcanary.io",
		"DaemonSet ztcanary-system/ztcanary-agent",
		"Deployment ztcanary-system/ztcanary-orchestrator",
		"Namespace /ztcanary-system",
		"PodDisruptionBudget ztcanary-system/ztcanary-orchestrator",
		"Role ztcanary-system/ztcanary-orchestrator-leader-election",
		"RoleBinding ztcanary-system/ztcanary-orchestrator-leader-election",
		"ServiceAccount ztcanary-system/ztcanary-agent",
		"ServiceAccount ztcanary-system/ztcanary-orchestrator",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("kustomize build deploy/ gives:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// rules renders RBAC rules as "group/resource: verbs" lines, sorted, so a test can
// hold them exactly.
func rules(rs []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rs {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				group := g
				if group == "" {
					group = "core"
				}
				out = append(out, fmt.Sprintf("%s/%s: %s", group, res, strings.Join(r.Verbs, ",")))
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestRBACRules holds the exact permissions: widening one is a visible diff here.
// The orchestrator's are derived from its calls (see deploy/orchestrator/rbac.yaml);
// TestSimOrchestratorRunsWithItsRBAC proves they are enough.
func TestRBACRules(t *testing.T) {
	objs := build(t, ".")
	for _, tc := range []struct {
		kind, name string
		want       []string
	}{
		{"ClusterRole", "ztcanary-orchestrator", []string{
			"admissionregistration.k8s.io/mutatingwebhookconfigurations: list,watch",
			"apps/daemonsets: list,watch,patch",
			"apps/deployments: list,watch,patch",
			"apps/replicasets: list,watch",
			"apps/statefulsets: list,watch,patch",
			"core/events: create,patch",
			"core/namespaces: list,watch,patch",
			"core/nodes: list,watch,patch",
			"core/pods/eviction: create",
			"core/pods: list,watch",
			"core/serviceaccounts: list,watch",
			"core/services: get,list,watch",
			"discovery.k8s.io/endpointslices: list",
			"gateway.networking.k8s.io/httproutes: get,patch",
			"gateway.networking.k8s.io/referencegrants: list",
			"networking.istio.io/destinationrules: get",
			"networking.istio.io/virtualservices: get,patch",
			"ztcanary.io/nodecaptures: list,watch",
			"ztcanary.io/revisionupgrades/status: patch",
			"ztcanary.io/revisionupgrades: list,watch,patch",
		}},
		{"Role", "ztcanary-orchestrator-leader-election", []string{
			"coordination.k8s.io/leases: get,create,update",
		}},
		{"ClusterRole", "ztcanary-agent", []string{
			"core/namespaces: list",
			"core/nodes: get",
			"core/pods: list",
			"ztcanary.io/nodecaptures/status: update",
			"ztcanary.io/nodecaptures: get,create",
		}},
	} {
		t.Run(tc.kind+" "+tc.name, func(t *testing.T) {
			var role rbacv1.ClusterRole // a Role has the same shape
			typed(t, find(t, objs, tc.kind, tc.name), &role)
			if got := rules(role.Rules); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
	t.Run("no wildcard and no rule by name anywhere", func(t *testing.T) {
		for _, o := range objs {
			if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
				continue
			}
			var role rbacv1.ClusterRole
			typed(t, o, &role)
			for _, r := range role.Rules {
				if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") || len(r.NonResourceURLs) > 0 {
					t.Errorf("%s %s has a wildcard or non-resource rule: %+v", o.GetKind(), o.GetName(), r)
				}
			}
			if role.AggregationRule != nil {
				t.Errorf("%s %s aggregates other roles", o.GetKind(), o.GetName())
			}
		}
	})
	t.Run("each binding grants its role to its own account only", func(t *testing.T) {
		for _, b := range []struct{ kind, name, role, account string }{
			{"ClusterRoleBinding", "ztcanary-orchestrator", "ztcanary-orchestrator", "ztcanary-orchestrator"},
			{"RoleBinding", "ztcanary-orchestrator-leader-election", "ztcanary-orchestrator-leader-election", "ztcanary-orchestrator"},
			{"ClusterRoleBinding", "ztcanary-agent", "ztcanary-agent", "ztcanary-agent"},
		} {
			var rb rbacv1.RoleBinding
			typed(t, find(t, objs, b.kind, b.name), &rb)
			if rb.RoleRef.Name != b.role || len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" ||
				rb.Subjects[0].Name != b.account || rb.Subjects[0].Namespace != "ztcanary-system" {
				t.Errorf("%s %s: role %s, subjects %+v", b.kind, b.name, rb.RoleRef.Name, rb.Subjects)
			}
		}
	})
}

func TestOrchestratorDeployment(t *testing.T) {
	objs := build(t, ".")
	var d appsv1.Deployment
	typed(t, find(t, objs, "Deployment", "ztcanary-orchestrator"), &d)
	spec := d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
	}
	if spec.ServiceAccountName != "ztcanary-orchestrator" || len(spec.Containers) != 1 {
		t.Fatalf("serviceAccountName %q, %d containers", spec.ServiceAccountName, len(spec.Containers))
	}
	c := spec.Containers[0]
	if !slices.Contains(c.Args, "--leader-elect=true") {
		t.Errorf("args %v lack --leader-elect=true", c.Args)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["metrics"] != 8080 || ports["health"] != 8081 || !slices.Contains(c.Args, "--metrics-bind-address=:8080") || !slices.Contains(c.Args, "--health-probe-bind-address=:8081") {
		t.Errorf("ports %v and args %v disagree: metrics on 8080, health on 8081", ports, c.Args)
	}
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.LivenessProbe, "/healthz"}, {c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.StrVal != "health" {
			t.Errorf("probe %+v, want GET %s on port health", p.probe, p.path)
		}
	}
	psc, sc := spec.SecurityContext, c.SecurityContext
	switch {
	case psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0:
		t.Errorf("pod securityContext %+v: want non-root with a non-zero uid", psc)
	case psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("seccomp %+v, want RuntimeDefault", psc.SeccompProfile)
	case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("root filesystem is writable")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("privilege escalation allowed")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("capabilities %+v, want drop ALL and add none", sc.Capabilities)
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("privileged")
	}
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("resources %+v: want a memory limit and a cpu request", c.Resources)
	}
}

// TestSamplesAreRevisionUpgrades checks each sample decodes strictly as the API's
// RevisionUpgrade (TestSimApplyEverything then has the API server judge them).
func TestSamplesAreRevisionUpgrades(t *testing.T) {
	for _, path := range samples(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var u ztv1.RevisionUpgrade
		if err := yaml.UnmarshalStrict(b, &u); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		if u.APIVersion != ztv1.GroupVersion.String() || u.Kind != "RevisionUpgrade" || u.Name == "" {
			t.Errorf("%s: %s %s %q, want a named %s RevisionUpgrade", path, u.APIVersion, u.Kind, u.Name, ztv1.GroupVersion)
		}
	}
}

func samples(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("samples", "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	return paths
}
