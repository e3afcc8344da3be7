// Command istio-render renders one of Istio's Helm charts, as embedded in the
// istio.io/istio module pinned in go.mod, with the Helm Go library (what `helm
// template` does), and writes the manifests to stdout as multi-document YAML in
// Helm's install order. The simulated cluster's seed topology installs its output.
//
//	istio-render -chart ztunnel -revision 1-18-1 -resource-name ztunnel-1-18-1 \
//	    -node-selector istio.io/rev=1-18-1 -namespace istio-system
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/strvals"
	"istio.io/istio/manifests"
)

// charts maps the names users give to the chart folders under manifests/charts.
var charts = map[string]string{
	"base":    "base",
	"istiod":  "istio-control/istio-discovery",
	"ztunnel": "ztunnel",
	"cni":     "istio-cni",
	"gateway": "gateway",
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "istio-render:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	flags := flag.NewFlagSet("istio-render", flag.ContinueOnError)
	name := flags.String("chart", "", "chart to render: "+strings.Join(chartNames(), ", "))
	release := flags.String("release", "", "Helm release name (default: the chart name, with -<revision> when a revision is given)")
	namespace := flags.String("namespace", "istio-system", "release namespace")
	revision := flags.String("revision", "", "the revision value (istio.io/rev)")
	resourceName := flags.String("resource-name", "", "the resourceName value (ztunnel: names the DaemonSet and its ServiceAccount)")
	kubeVersion := flags.String("kube-version", "v1.36.3", "Kubernetes version the chart renders for (.Capabilities.KubeVersion)")
	var nodeSelector, sets stringList
	flags.Var(&nodeSelector, "node-selector", "key=value added to the nodeSelector value (repeatable)")
	flags.Var(&sets, "set", "extra values, as helm --set (repeatable)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flags.Args())
	}
	dir, ok := charts[*name]
	if !ok {
		return fmt.Errorf("-chart %q: want one of %s", *name, strings.Join(chartNames(), ", "))
	}
	vals := map[string]any{}
	if *revision != "" {
		vals["revision"] = *revision
	}
	if *resourceName != "" {
		vals["resourceName"] = *resourceName
	}
	if len(nodeSelector) > 0 {
		sel := map[string]any{}
		for _, kv := range nodeSelector {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return fmt.Errorf("-node-selector %q: want key=value", kv)
			}
			sel[k] = v
		}
		vals["nodeSelector"] = sel
	}
	for _, s := range sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return fmt.Errorf("-set %q: %w", s, err)
		}
	}
	if *release == "" {
		// One release per revision, as `helm install istiod-1-18-1 istio/istiod` does.
		*release = *name
		if *revision != "" {
			*release += "-" + *revision
		}
	}
	ch, err := loadChart(dir)
	if err != nil {
		return err
	}
	kv, err := chartutil.ParseKubeVersion(*kubeVersion)
	if err != nil {
		return fmt.Errorf("-kube-version %q: %w", *kubeVersion, err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: *release, Namespace: *namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return fmt.Errorf("values for chart %s: %w", *name, err)
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return fmt.Errorf("render chart %s: %w", *name, err)
	}
	for f := range files {
		// Partials render empty; NOTES.txt is for humans.
		if strings.HasSuffix(f, "NOTES.txt") || strings.TrimSpace(files[f]) == "" {
			delete(files, f)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return fmt.Errorf("sort manifests of chart %s: %w", *name, err)
	}
	if len(hooks) > 0 {
		names := make([]string, 0, len(hooks))
		for _, h := range hooks {
			names = append(names, h.Path)
		}
		return fmt.Errorf("chart %s renders hooks (%s), which istio-render does not run", *name, strings.Join(names, ", "))
	}
	for _, m := range manifests {
		if m.Head == nil || m.Head.Kind == "" {
			continue // only comments (zzz_profile.yaml)
		}
		if _, err := fmt.Fprintf(out, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content)); err != nil {
			return err
		}
	}
	return nil
}

func chartNames() []string {
	out := make([]string, 0, len(charts))
	for n := range charts {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// loadChart reads a chart folder out of the FS that istio.io/istio/manifests embeds.
func loadChart(dir string) (*chart.Chart, error) {
	root := path.Join("charts", dir)
	var files []*loader.BufferedFile
	err := fs.WalkDir(manifests.FS, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(manifests.FS, p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(p, root+"/"), Data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read chart %s: %w", root, err)
	}
	if len(files) == 0 {
		return nil, errors.New("chart " + root + " is empty")
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", root, err)
	}
	return ch, nil
}
