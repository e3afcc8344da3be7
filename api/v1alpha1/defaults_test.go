package v1alpha1_test

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// crdDefaults walks a schema and returns each default by its JSON path (dotted),
// skipping object defaults ({}), which only make their children's defaults apply.
func crdDefaults(t *testing.T, s apiextensionsv1.JSONSchemaProps, path string, out map[string]any) {
	t.Helper()
	if s.Default != nil && s.Type != "object" {
		var v any
		if err := json.Unmarshal(s.Default.Raw, &v); err != nil {
			t.Fatalf("default of %s: %v", path, err)
		}
		out[path] = v
	}
	for name, p := range s.Properties {
		crdDefaults(t, p, path+"."+name, out)
	}
}

// leaves flattens a JSON document into dotted paths of its scalar values.
func leaves(prefix string, v any, out map[string]any) {
	if m, ok := v.(map[string]any); ok {
		for k, c := range m {
			leaves(prefix+"."+k, c, out)
		}
		return
	}
	out[prefix] = v
}

func specLeaves(t *testing.T, u *ztv1.RevisionUpgrade) map[string]any {
	t.Helper()
	b, err := json.Marshal(u.Spec)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	leaves(".spec", doc, out)
	return out
}

// sameDefault compares a CRD default with the value SetDefaults wrote; durations
// compare by value ("10m" and "10m0s").
func sameDefault(crd, got any) bool {
	if reflect.DeepEqual(crd, got) {
		return true
	}
	cs, ok1 := crd.(string)
	gs, ok2 := got.(string)
	if !ok1 || !ok2 {
		return false
	}
	cd, err1 := time.ParseDuration(cs)
	gd, err2 := time.ParseDuration(gs)
	return err1 == nil && err2 == nil && cd == gd
}

// TestSetDefaultsMatchesTheCRD checks that SetDefaults fills in exactly the defaults
// of the generated CRD: every default of the schema (under an object that is there),
// and nothing the schema does not default.
func TestSetDefaultsMatchesTheCRD(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/crds/ztcanary.io_revisionupgrades.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{}
	crdDefaults(t, crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"], ".spec", want)

	u := &ztv1.RevisionUpgrade{Spec: ztv1.RevisionUpgradeSpec{
		Analysis: ztv1.Analysis{TrafficTest: &ztv1.TrafficTest{URL: "http://gw/"}},
	}}
	before := specLeaves(t, u)
	ztv1.SetDefaults(u)
	after := specLeaves(t, u)

	for path, v := range want {
		if got, ok := after[path]; !ok || !sameDefault(v, got) {
			t.Errorf("%s: the CRD defaults it to %v, SetDefaults gave %v", path, v, got)
		}
	}
	for path, v := range after {
		if _, was := before[path]; was {
			continue
		}
		if _, ok := want[path]; !ok {
			t.Errorf("%s: SetDefaults sets %v, the CRD has no default there", path, v)
		}
	}
	again := u.DeepCopy()
	ztv1.SetDefaults(again)
	if !reflect.DeepEqual(u, again) {
		t.Error("SetDefaults is not idempotent")
	}
}
