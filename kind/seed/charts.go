package seed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/ztcanary/ztcanary/kind/sim"
)

// Istio's charts as istio-render names them (kind/tools/istiocharts).
const (
	ChartBase    = "base"
	ChartIstiod  = "istiod"
	ChartZtunnel = "ztunnel"
	ChartCNI     = "cni"
	ChartGateway = "gateway"
)

// FieldManager is the field manager the seed applies Istio's manifests with: the one
// Helm uses, since the seed stands for an operator's `helm install`.
const FieldManager = "helm"

// Release is one of Istio's charts with the values an operator would pass to `helm
// install`: what `helm template` renders.
type Release struct {
	// Chart is one of ChartBase, ChartIstiod, ChartZtunnel, ChartCNI, ChartGateway.
	Chart string
	// Namespace is the release namespace (default IstioNamespace).
	Namespace string
	// Revision is the chart's revision value.
	Revision string
	// ResourceName is the ztunnel chart's resourceName value: the name of the
	// DaemonSet and of its ServiceAccount.
	ResourceName string
	// NodeSelector is merged into the pods' nodeSelector (charts add
	// kubernetes.io/os=linux themselves).
	NodeSelector map[string]string
	// Set holds further values, as `helm --set` takes them (e.g. "profile=ambient").
	Set []string
}

func (r Release) namespace() string {
	if r.Namespace == "" {
		return IstioNamespace
	}
	return r.Namespace
}

func (r Release) args() []string {
	args := []string{"-chart", r.Chart, "-namespace", r.namespace()}
	if r.Revision != "" {
		args = append(args, "-revision", r.Revision)
	}
	if r.ResourceName != "" {
		args = append(args, "-resource-name", r.ResourceName)
	}
	keys := make([]string, 0, len(r.NodeSelector))
	for k := range r.NodeSelector {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-node-selector", k+"="+r.NodeSelector[k])
	}
	for _, s := range r.Set {
		args = append(args, "-set", s)
	}
	return args
}

// renders caches what istio-render produced, per process: a test package renders each
// release once however many clusters it seeds.
var renders struct {
	sync.Mutex
	binary string
	out    map[string][]*unstructured.Unstructured
}

// Render renders a release with istio-render (built on first use, then cached by
// package sim) and decodes its manifests, in Helm's install order. The result is the
// caller's to modify.
func Render(ctx context.Context, r Release) ([]*unstructured.Unstructured, error) {
	renders.Lock()
	defer renders.Unlock()
	args := r.args()
	key := strings.Join(args, "\x00")
	objs, ok := renders.out[key]
	if !ok {
		if renders.binary == "" {
			bin, err := sim.EnsureIstioRender(ctx, os.Stderr)
			if err != nil {
				return nil, err
			}
			renders.binary = bin
		}
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, renders.binary, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("render Istio chart %s (%s): %w: %s", r.Chart, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		var err error
		if objs, err = decode(stdout.Bytes()); err != nil {
			return nil, fmt.Errorf("decode Istio chart %s: %w", r.Chart, err)
		}
		if renders.out == nil {
			renders.out = map[string][]*unstructured.Unstructured{}
		}
		renders.out[key] = objs
	}
	out := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		out[i] = o.DeepCopy()
	}
	return out, nil
}

// decode reads multi-document YAML into objects, skipping empty documents.
func decode(b []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("a document without kind or apiVersion: %.200s", doc)
		}
		out = append(out, u)
	}
}

// Find returns the object of that kind and name, or nil.
func Find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	i := slices.IndexFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == kind && o.GetName() == name })
	if i < 0 {
		return nil
	}
	return objs[i]
}

// InstallRelease renders a release and applies what Install would of it (see
// Installed), creating its namespace first, like `helm install --create-namespace`.
func InstallRelease(ctx context.Context, c client.Client, r Release) error {
	objs, err := Render(ctx, r)
	if err != nil {
		return err
	}
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName(r.namespace())
	out := []*unstructured.Unstructured{ns}
	for _, o := range objs {
		if Installed(o) {
			out = append(out, o)
		}
	}
	return Apply(ctx, c, out)
}

// Apply writes objects with server-side apply as FieldManager, in order, taking over
// fields another manager set (as `helm upgrade` would).
func Apply(ctx context.Context, c client.Client, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
			return fmt.Errorf("apply %s %s: %w", o.GetKind(), objectName(o), err)
		}
	}
	return nil
}

func objectName(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return o.GetName()
	}
	return o.GetNamespace() + "/" + o.GetName()
}
