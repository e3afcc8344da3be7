// Package kind holds the configurations and scripts for clusters: the real kind
// cluster of the seed topology (this folder), the simulated cluster (sim) and the
// tool modules that build the simulated cluster's binaries (tools).
package kind

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

func TestKindConfigIsTheSeedTopology(t *testing.T) {
	b, err := os.ReadFile("ambient-cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		t.Fatalf("kind config does not parse as kind's v1alpha4 Cluster: %v", err)
	}
	if cfg.Kind != "Cluster" || cfg.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Errorf("kind/apiVersion = %s/%s", cfg.Kind, cfg.APIVersion)
	}
	if cfg.Name != "ambient" {
		t.Errorf("name = %q, want ambient (node names ambient-control-plane, ambient-worker...)", cfg.Name)
	}
	roles := map[v1alpha4.NodeRole]int{}
	for _, n := range cfg.Nodes {
		roles[n.Role]++
	}
	if len(cfg.Nodes) != 3 || roles[v1alpha4.ControlPlaneRole] != 1 || roles[v1alpha4.WorkerRole] != 2 {
		t.Errorf("nodes = %v, want one control plane and two workers", roles)
	}
}

func TestScriptsParse(t *testing.T) {
	scripts, err := filepath.Glob("*.sh")
	if err != nil {
		t.Fatal(err)
	}
	if len(scripts) == 0 {
		t.Fatal("no scripts found in kind/")
	}
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
	}
}
