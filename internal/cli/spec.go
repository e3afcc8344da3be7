package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// specOptions builds a RevisionUpgrade from a file (-f) or from flags.
type specOptions struct {
	file                              string
	name, from, to                    string
	nodeLabel, nodeSelector, strategy string
	ztunnelNamespace                  string
	workloads, steps                  []string
	httpRoute, virtualService         string
	stable, canary                    string
	stableSubset, canarySubset        string
	cleanUp                           bool
	agentVerification                 string
	stepTimeout                       time.Duration
	automaticRollback                 bool
	trafficTestURL, canaryHeader      string
	canaryBodyRegex                   string
	mode, namespaceSelector           string
	istiodNamespace                   string
	maxRestarts                       int32
	destinationRule, vsHost           string
	stdin                             io.Reader
	// specFlags holds the flags above, also added to the command's flags.
	specFlags *pflag.FlagSet
}

// The steps used when none is given.
var (
	defaultSteps        = []string{"nodes=1,pause", "nodes=50%,pause=30s", "nodes=100%"}
	defaultRouteSteps   = []string{"nodes=1,header=traffic:test,pause", "nodes=50%,weight=10,pause=30s", "nodes=50%,weight=50,pause=30s", "nodes=100%,weight=100"}
	defaultSidecarSteps = []string{"namespaces=1,pause", "namespaces=100%"}
)

func (o *specOptions) addFlags(cmdFlags *pflag.FlagSet) {
	fs := pflag.NewFlagSet("spec", pflag.ContinueOnError)
	o.specFlags = fs
	defer cmdFlags.AddFlagSet(fs)
	fs.StringVarP(&o.file, "filename", "f", "", "read the RevisionUpgrade from this YAML or JSON file (- for stdin) instead of the flags")
	fs.StringVar(&o.name, "name", "", "name of the RevisionUpgrade (default FROM-to-TO)")
	fs.StringVar(&o.from, "from", "", "stable revision: the node label's value on the nodes before the upgrade")
	fs.StringVar(&o.to, "to", "", "canary revision (istiod-TO and its ztunnel DaemonSet must exist)")
	fs.StringVar(&o.nodeLabel, "node-label", "", "node label key that pins revisions (default istio.io/rev)")
	fs.StringVar(&o.nodeSelector, "node-selector", "", "label selector of the nodes in scope (default: NODE-LABEL=FROM)")
	fs.StringVar(&o.strategy, "strategy", "", "how each node's ztunnel is swapped: Drain (default) or Handoff")
	fs.StringVar(&o.ztunnelNamespace, "ztunnel-namespace", "", "namespace of the ztunnel DaemonSets and istiod (default istio-system)")
	fs.StringArrayVar(&o.workloads, "workload", nil, "NAMESPACE=REVISION: pin that namespace's Deployments and StatefulSets to REVISION's nodes (repeatable)")
	fs.StringArrayVar(&o.steps, "step", nil, "a step, in order (repeatable): nodes=N|P% (Sidecar mode: namespaces=N|P%) [,weight=W] [,header=NAME:VALUE] [,pause[=DURATION]]; "+
		"pause alone waits for ztcanary promote. Default: "+strings.Join(defaultSteps, " ")+"; with a route: "+strings.Join(defaultRouteSteps, " ")+
		"; Sidecar mode: "+strings.Join(defaultSidecarSteps, " "))
	fs.StringVar(&o.mode, "mode", "", "Ambient (default: node waves, each node's ztunnel) or Sidecar (namespace waves: relabel, restart, verify the proxies)")
	fs.StringVar(&o.namespaceSelector, "namespace-selector", "", "Sidecar mode: label selector of the namespaces in scope (default: those the FROM injector enrols)")
	fs.StringVar(&o.istiodNamespace, "istiod-namespace", "", "Sidecar mode: namespace of istiod and its injector (default istio-system)")
	fs.Int32Var(&o.maxRestarts, "max-concurrent-restarts", 0, "Sidecar mode: workloads of a namespace restarted at once (default 2)")
	fs.StringVar(&o.httpRoute, "httproute", "", "[NAMESPACE/]NAME of the Gateway API HTTPRoute to shift (namespace: -n)")
	fs.StringVar(&o.virtualService, "virtual-service", "", "[NAMESPACE/]NAME of the Istio VirtualService to shift between two subsets (namespace: -n); needs --destination-rule, --stable and both subsets")
	fs.StringVar(&o.destinationRule, "destination-rule", "", "the DestinationRule (in the VirtualService's namespace) defining --stable-subset and --canary-subset")
	fs.StringVar(&o.vsHost, "virtual-service-host", "", "destination host as the VirtualService's routes write it (default: the stable Service's name)")
	fs.StringVar(&o.stable, "stable", "", "[NAMESPACE/]SERVICE:PORT of the stable backend")
	fs.StringVar(&o.canary, "canary", "", "[NAMESPACE/]SERVICE:PORT of the canary backend (with --virtual-service: default --stable)")
	fs.StringVar(&o.stableSubset, "stable-subset", "", "DestinationRule subset of the stable backend (VirtualService routes)")
	fs.StringVar(&o.canarySubset, "canary-subset", "", "DestinationRule subset of the canary backend (VirtualService routes)")
	fs.BoolVar(&o.cleanUp, "clean-up-on-success", false, "leave the route with only the canary backend once the upgrade succeeds")
	fs.StringVar(&o.agentVerification, "agent-verification", "", "Required, Optional (default) or Disabled: whether waves wait for the node agents' eBPF proof")
	fs.DurationVar(&o.stepTimeout, "step-timeout", 0, "bound on each step's waits before it rolls back (default 10m)")
	fs.BoolVar(&o.automaticRollback, "automatic-rollback", true, "roll back when a gate fails or a step times out (false: stop as Failed)")
	fs.StringVar(&o.trafficTestURL, "traffic-test-url", "", "send test requests to this URL after each traffic step (the traffic gate)")
	fs.StringVar(&o.canaryHeader, "canary-response-header", "", "NAME=VALUE of the response header that marks a canary answer (the traffic gate)")
	fs.StringVar(&o.canaryBodyRegex, "canary-response-body-regex", "", "regular expression a canary answer's body matches (the traffic gate; instead of --canary-response-header)")
}

// specFlagsSet lists the spec flags given on the command line, other than -f and
// --name.
func (o *specOptions) specFlagsSet() []string {
	var set []string
	o.specFlags.VisitAll(func(f *pflag.Flag) {
		if f.Changed && f.Name != "filename" && f.Name != "name" {
			set = append(set, "--"+f.Name)
		}
	})
	return set
}

// build returns the upgrade, from the file or from the flags; ns is the namespace of
// route and backend references that name none.
func (o *specOptions) build(ns string) (*ztv1.RevisionUpgrade, error) {
	var u *ztv1.RevisionUpgrade
	var err error
	if o.file != "" {
		if set := o.specFlagsSet(); len(set) > 0 {
			return nil, fmt.Errorf("%w: -f %s and %s: give the upgrade either as a file or as flags", ErrRefused, o.file, strings.Join(set, ", "))
		}
		u, err = o.read()
	} else {
		u, err = o.fromFlags(ns)
	}
	if err != nil {
		return nil, err
	}
	if o.name != "" {
		u.Name = o.name
	}
	if u.Name == "" {
		return nil, fmt.Errorf("%w: the upgrade has no name: set metadata.name or --name", ErrRefused)
	}
	if errs := validation.IsDNS1123Subdomain(u.Name); len(errs) > 0 {
		return nil, fmt.Errorf("%w: name %q: %s", ErrRefused, u.Name, strings.Join(errs, "; "))
	}
	return u, nil
}

func (o *specOptions) read() (*ztv1.RevisionUpgrade, error) {
	var b []byte
	var err error
	if o.file == "-" {
		in := o.stdin
		if in == nil {
			in = os.Stdin
		}
		b, err = io.ReadAll(in)
	} else {
		b, err = os.ReadFile(o.file)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", o.file, err)
	}
	if docs := bytes.Count(append([]byte("\n"), b...), []byte("\n---")); docs > 1 || (docs == 1 && !bytes.HasPrefix(bytes.TrimSpace(b), []byte("---"))) {
		return nil, fmt.Errorf("%w: %s holds several YAML documents: give one RevisionUpgrade per file", ErrRefused, o.file)
	}
	u := &ztv1.RevisionUpgrade{}
	if err := yaml.UnmarshalStrict(b, u); err != nil {
		return nil, fmt.Errorf("%w: %s is not a RevisionUpgrade: %v", ErrRefused, o.file, err)
	}
	if u.APIVersion != ztv1.GroupVersion.String() || u.Kind != "RevisionUpgrade" {
		return nil, fmt.Errorf("%w: %s holds %s %s, want apiVersion %s, kind RevisionUpgrade", ErrRefused, o.file, u.APIVersion, u.Kind, ztv1.GroupVersion)
	}
	u.Status = ztv1.RevisionUpgradeStatus{}
	u.ResourceVersion, u.UID, u.Generation, u.CreationTimestamp, u.ManagedFields = "", "", 0, metav1.Time{}, nil
	return u, nil
}

func (o *specOptions) fromFlags(ns string) (*ztv1.RevisionUpgrade, error) {
	if o.from == "" || o.to == "" {
		return nil, fmt.Errorf("%w: --from and --to are required (or -f FILE)", ErrRefused)
	}
	u := &ztv1.RevisionUpgrade{
		TypeMeta:   metav1.TypeMeta{APIVersion: ztv1.GroupVersion.String(), Kind: "RevisionUpgrade"},
		ObjectMeta: metav1.ObjectMeta{Name: o.from + "-to-" + o.to},
		Spec: ztv1.RevisionUpgradeSpec{
			From: o.from, To: o.to, NodeLabel: o.nodeLabel,
			NodeStrategy: ztv1.NodeStrategy(o.strategy),
			Ztunnel:      ztv1.ZtunnelSpec{Namespace: o.ztunnelNamespace},
			Mode:         ztv1.Mode(o.mode),
			Sidecar:      ztv1.SidecarSpec{IstiodNamespace: o.istiodNamespace, MaxConcurrentRestarts: o.maxRestarts},
		},
	}
	s := &u.Spec
	if o.namespaceSelector != "" {
		sel, err := metav1.ParseToLabelSelector(o.namespaceSelector)
		if err != nil {
			return nil, fmt.Errorf("%w: --namespace-selector %q: %v", ErrRefused, o.namespaceSelector, err)
		}
		s.NamespaceSelector = sel
	}
	if o.nodeSelector != "" {
		sel, err := metav1.ParseToLabelSelector(o.nodeSelector)
		if err != nil {
			return nil, fmt.Errorf("%w: --node-selector %q: %v", ErrRefused, o.nodeSelector, err)
		}
		s.NodeSelector = sel
	}
	for _, w := range o.workloads {
		wns, rev, ok := strings.Cut(w, "=")
		if !ok || wns == "" || rev == "" {
			return nil, fmt.Errorf("%w: --workload %q: want NAMESPACE=REVISION, e.g. bookinfo-%s=%s", ErrRefused, w, o.to, o.to)
		}
		s.Workloads = append(s.Workloads, ztv1.WorkloadPin{Namespace: wns, Revision: rev})
	}
	route, err := o.route(ns)
	if err != nil {
		return nil, err
	}
	s.Route = route
	steps := o.steps
	if len(steps) == 0 {
		switch {
		case s.Mode == ztv1.ModeSidecar:
			steps = defaultSidecarSteps
		case route != nil:
			steps = defaultRouteSteps
		default:
			steps = defaultSteps
		}
	}
	for _, st := range steps {
		step, err := parseStep(st)
		if err != nil {
			return nil, err
		}
		s.Steps = append(s.Steps, step)
	}
	if o.agentVerification != "" {
		s.Analysis.AgentVerification = ztv1.AgentVerification(o.agentVerification)
	}
	if o.trafficTestURL != "" || o.canaryHeader != "" || o.canaryBodyRegex != "" {
		if o.trafficTestURL == "" {
			return nil, fmt.Errorf("%w: --canary-response-header and --canary-response-body-regex need --traffic-test-url", ErrRefused)
		}
		tt := &ztv1.TrafficTest{URL: o.trafficTestURL, CanaryBodyRegex: o.canaryBodyRegex}
		if o.canaryHeader != "" {
			name, value, ok := strings.Cut(o.canaryHeader, "=")
			if !ok || name == "" || value == "" {
				return nil, fmt.Errorf("%w: --canary-response-header %q: want NAME=VALUE, e.g. x-version=v2", ErrRefused, o.canaryHeader)
			}
			tt.CanaryHeader = &ztv1.HeaderMatch{Name: name, Value: value}
		}
		s.Analysis.TrafficTest = tt
	}
	if o.stepTimeout != 0 {
		s.StepTimeout = &metav1.Duration{Duration: o.stepTimeout}
	}
	if !o.automaticRollback {
		s.Rollback.Automatic = ptr.To(false)
	}
	return u, nil
}

func (o *specOptions) route(ns string) (*ztv1.RouteSpec, error) {
	if o.httpRoute == "" && o.virtualService == "" {
		if o.stable != "" || o.canary != "" || o.cleanUp || o.destinationRule != "" {
			return nil, fmt.Errorf("%w: --stable, --canary, --destination-rule and --clean-up-on-success need --httproute or --virtual-service", ErrRefused)
		}
		return nil, nil
	}
	if o.httpRoute != "" && o.virtualService != "" {
		return nil, fmt.Errorf("%w: --httproute and --virtual-service: give one route", ErrRefused)
	}
	canary := o.canary
	if o.virtualService != "" && canary == "" {
		canary = o.stable // two subsets of one Service
	}
	if o.stable == "" || canary == "" {
		return nil, fmt.Errorf("%w: a route needs --stable and --canary ([NAMESPACE/]SERVICE:PORT)", ErrRefused)
	}
	r := &ztv1.RouteSpec{CleanUpOnSuccess: o.cleanUp}
	if o.httpRoute != "" {
		r.HTTPRoute = objectRef(o.httpRoute, ns)
	} else {
		if o.destinationRule == "" {
			return nil, fmt.Errorf("%w: --virtual-service needs --destination-rule (the DestinationRule defining the two subsets)", ErrRefused)
		}
		ref := objectRef(o.virtualService, ns)
		r.VirtualService = &ztv1.VirtualServiceRef{Namespace: ref.Namespace, Name: ref.Name, DestinationRule: o.destinationRule, Host: o.vsHost}
	}
	var err error
	if r.Stable, err = backendRef("--stable", o.stable, ns); err != nil {
		return nil, err
	}
	if r.Canary, err = backendRef("--canary", canary, ns); err != nil {
		return nil, err
	}
	r.Stable.Subset, r.Canary.Subset = o.stableSubset, o.canarySubset
	return r, nil
}

func objectRef(s, ns string) *ztv1.ObjectRef {
	if n, name, ok := strings.Cut(s, "/"); ok {
		return &ztv1.ObjectRef{Namespace: n, Name: name}
	}
	return &ztv1.ObjectRef{Namespace: ns, Name: s}
}

func backendRef(flag, s, ns string) (ztv1.BackendRef, error) {
	ref, port, ok := strings.Cut(s, ":")
	p, err := strconv.ParseInt(port, 10, 32)
	if !ok || err != nil {
		return ztv1.BackendRef{}, fmt.Errorf("%w: %s %q: want [NAMESPACE/]SERVICE:PORT, e.g. bookinfo/reviews:9080", ErrRefused, flag, s)
	}
	o := objectRef(ref, ns)
	return ztv1.BackendRef{Namespace: o.Namespace, Name: o.Name, Port: int32(p)}, nil
}

// parseStep reads nodes=N|P%[,weight=W][,header=NAME:VALUE][,pause[=DURATION]].
// Ranges (weights 0-100, non-decreasing steps) are the CRD's to judge.
func parseStep(s string) (ztv1.Step, error) {
	var st ztv1.Step
	bad := func(format string, args ...any) (ztv1.Step, error) {
		return ztv1.Step{}, fmt.Errorf("%w: --step %q: %s", ErrRefused, s, fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		key, value, hasValue := strings.Cut(strings.TrimSpace(part), "=")
		if seen[key] {
			return bad("%s is given twice", key)
		}
		seen[key] = true
		switch key {
		case "nodes", "namespaces":
			var n intstr.IntOrString
			if strings.HasSuffix(value, "%") {
				n = intstr.FromString(value)
			} else if c, err := strconv.ParseInt(value, 10, 32); err == nil {
				n = intstr.FromInt32(int32(c))
			} else {
				return bad("%s %q is neither a count nor a percentage", key, value)
			}
			if key == "nodes" {
				st.Nodes = n
			} else {
				st.Namespaces = &n
			}
		case "weight":
			w, err := strconv.ParseInt(value, 10, 32)
			if err != nil {
				return bad("weight %q is not a whole number", value)
			}
			if st.Traffic != nil {
				return bad("give weight or header, not both (one traffic change per step)")
			}
			st.Traffic = &ztv1.StepTraffic{Weight: ptr.To(int32(w))}
		case "header":
			name, v, ok := strings.Cut(value, ":")
			if !ok || name == "" || v == "" {
				return bad("header %q: want NAME:VALUE, e.g. header=traffic:test", value)
			}
			if st.Traffic != nil {
				return bad("give weight or header, not both (one traffic change per step)")
			}
			st.Traffic = &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: name, Value: v}}
		case "pause":
			st.Pause = &ztv1.Pause{}
			if hasValue {
				d, err := time.ParseDuration(value)
				if err != nil {
					return bad("pause %q is not a duration like 30s", value)
				}
				st.Pause.Duration = &metav1.Duration{Duration: d}
			}
		default:
			return bad("unknown key %q (want nodes, namespaces, weight, header, pause)", key)
		}
	}
	if !seen["nodes"] && !seen["namespaces"] {
		return bad("nodes=N|P%% (or, in Sidecar mode, namespaces=N|P%%) is required")
	}
	return st, nil
}

// withDefaults returns a copy of u with the CRD's defaults filled in, as the API
// server would store it.
func withDefaults(u *ztv1.RevisionUpgrade) *ztv1.RevisionUpgrade {
	u = u.DeepCopy()
	ztv1.SetDefaults(u)
	return u
}
