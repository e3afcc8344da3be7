package cli

import (
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func intOrStr(s string) intstr.IntOrString { return intstr.Parse(s) }

func TestPlanGolden(t *testing.T) {
	for _, tc := range []struct {
		name, golden string
		world        func() *fakeCluster
		args         []string
		wantErr      string
	}{
		{name: "the seed flow with a route skips the cordoned node and shows each route change", golden: "plan/seed-route.txt", world: seedWorld,
			args: append([]string{"plan"}, seedFlags...)},
		{name: "default steps without a route", golden: "plan/no-route.txt", world: seedWorld,
			args: []string{"plan", "--from", fromRev, "--to", toRev, "--strategy", "Handoff", "--agent-verification", "Required"}},
		{name: "a missing istiod is the orchestrator's refusal, after the plan", golden: "plan/no-istiod.txt",
			world: func() *fakeCluster {
				f := seedWorld()
				var kept []client.Object
				for _, o := range f.objs {
					if d, ok := o.(*appsv1.Deployment); ok && d.Name == "istiod-"+toRev {
						continue
					}
					kept = append(kept, o)
				}
				f.objs = kept
				return f
			},
			args:    []string{"plan", "--from", fromRev, "--to", toRev},
			wantErr: `refused: the orchestrator would not start revisionupgrade "1-18-0-to-1-18-1" now (IstiodMissing): spec.to: no istiod Deployment istio-system/istiod-1-18-1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, _ := tc.world().env(t)
			out, err := run(t, env, tc.args...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("plan: %v\n%s", err, out)
			case tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			golden(t, tc.golden, out)
		})
	}
}

func TestPlanWritesNothing(t *testing.T) {
	env, c := seedWorld().env(t)
	if _, err := run(t, env, append([]string{"plan"}, seedFlags...)...); err != nil {
		t.Fatal(err)
	}
	var list ztv1.RevisionUpgradeList
	if err := c.List(t.Context(), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("plan created %d RevisionUpgrades", len(list.Items))
	}
	cl, _ := env.NewClients()
	route, err := cl.Gateway.GatewayV1().HTTPRoutes("bookinfo-"+fromRev).Get(t.Context(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(route.Spec.Rules[0].BackendRefs); n != 1 || route.Spec.Rules[0].BackendRefs[0].Weight != nil {
		t.Errorf("plan changed the route: %+v", route.Spec.Rules)
	}
}

func TestPlanOutputsTheObject(t *testing.T) {
	env, _ := seedWorld().env(t)
	out, err := run(t, env, "plan", "--from", fromRev, "--to", toRev, "--step", "nodes=2,pause=1m", "--step", "nodes=100%", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "plan/object.yaml", out)
}

func TestPlanRefusesBadInput(t *testing.T) {
	env, _ := seedWorld().env(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a step without nodes", []string{"--from", "a", "--to", "b", "--step", "weight=10"}, `--step "weight=10": nodes=N|P% (or, in Sidecar mode, namespaces=N|P%) is required`},
		{"a step with weight and header", []string{"--from", "a", "--to", "b", "--step", "nodes=1,weight=10,header=a:b"}, "give weight or header, not both"},
		{"an unknown step key", []string{"--from", "a", "--to", "b", "--step", "nodes=1,wait=3s"}, `unknown key "wait"`},
		{"a malformed pause", []string{"--from", "a", "--to", "b", "--step", "nodes=1,pause=soon"}, `pause "soon" is not a duration`},
		{"a workload without revision", []string{"--from", "a", "--to", "b", "--workload", "bookinfo"}, `--workload "bookinfo": want NAMESPACE=REVISION`},
		{"a backend without port", []string{"--from", "a", "--to", "b", "--httproute", "r", "--stable", "svc", "--canary", "svc2:80"}, `--stable "svc": want [NAMESPACE/]SERVICE:PORT`},
		{"a route without backends", []string{"--from", "a", "--to", "b", "--httproute", "r"}, "a route needs --stable and --canary"},
		{"two routes", []string{"--from", "a", "--to", "b", "--httproute", "r", "--virtual-service", "v"}, "give one route"},
		{"no revisions", nil, "--from and --to are required"},
		{"a file and flags", []string{"-f", "x.yaml", "--from", "a"}, "-f x.yaml and --from: give the upgrade either as a file or as flags"},
		{"a name that is not a DNS name", []string{"--from", "a", "--to", "b", "--name", "Bad_Name"}, `name "Bad_Name"`},
		{"steps the planner refuses", []string{"--from", fromRev, "--to", toRev, "--step", "nodes=1"},
			`the orchestrator would refuse revisionupgrade "1-18-0-to-1-18-1": spec.steps: the last step moves 1 of 4 nodes; end with nodes: 100% so the upgrade completes`},
		{"a scope of no node", []string{"--from", "1-17-0", "--to", toRev},
			"spec.nodeSelector: no node in scope (no node is labelled istio.io/rev=1-17-0, or the selector matches none)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, env, append([]string{"plan"}, tc.args...)...)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrRefused saying %q", err, tc.want)
			}
		})
	}
}

func TestDiffJSON(t *testing.T) {
	got := diffJSON("spec", []byte(`{"a":1,"b":[1,2],"c":{"d":"x"}}`), []byte(`{"a":2,"b":[1],"c":{"d":"x","e":true},"f":null}`))
	want := []string{"~ spec.a: 1 → 2", "- spec.b[1]: 2", "+ spec.c.e: true", "+ spec.f: null"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d := diffJSON("spec", []byte(`[1]`), []byte(`[1]`)); len(d) != 0 {
		t.Errorf("equal values differ: %v", d)
	}
}
