package sim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Where the real CRDs live inside their modules.
const (
	gatewayAPIModule = "sigs.k8s.io/gateway-api"
	istioAPIModule   = "istio.io/api"
	istioCRDFile     = "kubernetes/customresourcedefinitions.gen.yaml"
)

// installCRDs installs the Gateway API CRDs of the chosen channel and Istio's CRDs,
// straight from their modules, and waits until all are Established.
func (c *Cluster) installCRDs(ctx context.Context, channel string) error {
	crds, err := LoadCRDs(ctx, channel)
	if err != nil {
		return err
	}
	return c.InstallCRDs(ctx, crds)
}

// LoadCRDs reads the Gateway API CRDs (the standard channel plus the kinds only the
// experimental channel has, or the whole experimental channel) and the Istio CRDs
// from the module cache, downloading the pinned modules if needed.
func LoadCRDs(ctx context.Context, gatewayChannel string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	gw, err := moduleDir(ctx, root, gatewayAPIModule+"@"+GatewayAPIVersion)
	if err != nil {
		return nil, err
	}
	istio, err := moduleDir(ctx, root, istioAPIModule+"@"+IstioAPIVersion)
	if err != nil {
		return nil, err
	}
	experimental, err := ReadCRDs(filepath.Join(gw, "config", "crd", "experimental"))
	if err != nil {
		return nil, err
	}
	byName := map[string]*apiextensionsv1.CustomResourceDefinition{}
	for _, crd := range experimental {
		byName[crd.Name] = crd
	}
	if gatewayChannel != "experimental" {
		standard, err := ReadCRDs(filepath.Join(gw, "config", "crd", "standard"))
		if err != nil {
			return nil, err
		}
		for _, crd := range standard {
			byName[crd.Name] = crd
		}
	}
	istioCRDs, err := crdsInFile(filepath.Join(istio, istioCRDFile))
	if err != nil {
		return nil, err
	}
	for _, crd := range istioCRDs {
		byName[crd.Name] = crd
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*apiextensionsv1.CustomResourceDefinition, 0, len(names))
	for _, n := range names {
		out = append(out, byName[n])
	}
	return out, nil
}

// ReadCRDs reads every CustomResourceDefinition in the YAML files of dir.
func ReadCRDs(dir string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no CRD files in %s", dir)
	}
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		crds, err := crdsInFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, crds...)
	}
	return out, nil
}

// crdsInFile decodes every CustomResourceDefinition of a multi-document YAML file and
// skips the other kinds (the Gateway API ships a ValidatingAdmissionPolicy and a
// kustomization beside its CRDs).
func crdsInFile(path string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CRDs: %w", err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []*apiextensionsv1.CustomResourceDefinition
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		if meta.Kind != "CustomResourceDefinition" {
			continue
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(doc, crd); err != nil {
			return nil, fmt.Errorf("decode CRD in %s: %w", path, err)
		}
		out = append(out, crd)
	}
	return out, nil
}

// InstallCRDs creates (or updates) the CRDs and waits until every one is Established.
func (c *Cluster) InstallCRDs(ctx context.Context, crds []*apiextensionsv1.CustomResourceDefinition) error {
	client, err := apiextensionsclient.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	api := client.ApiextensionsV1().CustomResourceDefinitions()
	for _, crd := range crds {
		_, err := api.Create(ctx, crd, metav1.CreateOptions{FieldManager: "ztcanary-sim"})
		if apierrors.IsAlreadyExists(err) {
			cur, gerr := api.Get(ctx, crd.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			crd = crd.DeepCopy()
			crd.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, crd, metav1.UpdateOptions{FieldManager: "ztcanary-sim"})
		}
		if err != nil {
			return fmt.Errorf("install CRD %s: %w", crd.Name, err)
		}
	}
	if err := c.poll(ctx, fmt.Sprintf("%d CRDs to be Established", len(crds)), time.Minute, func() (bool, error) {
		for _, crd := range crds {
			cur, err := api.Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if !established(cur) {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	// Established does not mean discovery lists the kind yet: a client built right
	// after this call would answer "no matches for kind". Wait for discovery too.
	return c.poll(ctx, fmt.Sprintf("%d CRDs to be listed by discovery", len(crds)), time.Minute, func() (bool, error) {
		for _, crd := range crds {
			for _, v := range crd.Spec.Versions {
				if !v.Served {
					continue
				}
				res, err := client.Discovery().ServerResourcesForGroupVersion(crd.Spec.Group + "/" + v.Name)
				if err != nil {
					if apierrors.IsNotFound(err) {
						return false, nil
					}
					return false, err
				}
				if !slices.ContainsFunc(res.APIResources, func(r metav1.APIResource) bool { return r.Name == crd.Spec.Names.Plural }) {
					return false, nil
				}
			}
		}
		return true, nil
	})
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}
