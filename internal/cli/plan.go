package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/orchestrator"
	"github.com/ztcanary/ztcanary/orchestrator/plan"
)

type planOptions struct {
	spec   specOptions
	output string
}

func newPlanCommand(env *Env) *cobra.Command {
	o := &planOptions{}
	cmd := &cobra.Command{
		Use:   "plan (-f FILE | --from REV --to REV [flags])",
		Short: "Show what an upgrade would do, step by step, without writing anything",
		Long: `Renders the RevisionUpgrade from the flags or a file, checks it against the CRD's
schema and CEL rules (a server-side dry run: nothing is stored), plans its steps
against the nodes in scope exactly as the orchestrator will (which nodes each step
moves, in name order, skipping NotReady and cordoned nodes), runs the orchestrator's
preflight checks, and shows which fields of the route each traffic step changes.
Exits non-zero when the orchestrator would refuse the upgrade.`,
		Example: `  ztcanary plan --from 1-18-0 --to 1-18-1 \
    --workload bookinfo-1-18-0=1-18-0 --workload bookinfo-1-18-1=1-18-1 \
    --httproute bookinfo/reviews --stable bookinfo-1-18-0/reviews:9080 --canary bookinfo-1-18-1/reviews:9080
  ztcanary plan -f deploy/samples/canary-1-18-1.yaml
  ztcanary plan --from 1-18-0 --to 1-18-1 -o yaml > upgrade.yaml   # the object, for review or GitOps`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), env, cmd.OutOrStdout())
		},
	}
	o.spec.addFlags(cmd.Flags())
	o.spec.stdin = cmd.InOrStdin()
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "yaml or json: print the RevisionUpgrade (as the API server would store it) instead of the plan")
	return cmd
}

func (o *planOptions) run(ctx context.Context, env *Env, out io.Writer) error {
	if o.output != "" && o.output != "yaml" && o.output != "json" {
		return fmt.Errorf("%w: --output %q: want yaml or json", ErrRefused, o.output)
	}
	u, err := o.spec.build(env.namespace())
	if err != nil {
		return err
	}
	cl, err := env.clients()
	if err != nil {
		return err
	}
	p, err := check(ctx, cl, u)
	if err != nil {
		return err
	}
	switch o.output {
	case "yaml", "json":
		v := p.stored.DeepCopy()
		v.ManagedFields, v.UID, v.ResourceVersion, v.CreationTimestamp, v.Generation = nil, "", "", metav1.Time{}, 0
		v.APIVersion, v.Kind = ztv1.GroupVersion.String(), "RevisionUpgrade"
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(v)
		if err != nil {
			return err
		}
		delete(raw, "status")
		b, err := json.MarshalIndent(raw, "", "  ")
		if err != nil {
			return err
		}
		if o.output == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return err
			}
		}
		_, err = out.Write(append(b, '\n'))
		if err != nil {
			return err
		}
		return p.refusal()
	}
	p.render(out)
	fmt.Fprintln(out, "\nNothing was written.")
	return p.refusal()
}

// checked is an upgrade checked as the orchestrator would check it, planned, with
// its route changes rendered.
type checked struct {
	// stored is the upgrade as the API server would store it (defaults applied).
	stored *ztv1.RevisionUpgrade
	// exists is true when an upgrade of that name exists already.
	exists bool
	// scope is the nodes in scope, sorted by name (Ambient mode).
	scope []corev1.Node
	// namespaces is the namespaces in scope (Sidecar mode), known once its
	// preflight passes.
	namespaces []string
	steps      []plan.StepPlan
	// preflight is the orchestrator's refusal, if any.
	preflight error
	// route is the route's rendered changes (nil without a route); routeErr why
	// they could not be rendered.
	route    *gatewayroutes.Preview
	routeErr error
	// active names the upgrades in progress.
	active []string
}

// check validates u against the CRD (server-side dry run), plans it against the
// nodes in scope, runs the orchestrator's preflight and renders the route changes.
// It writes nothing. Errors are input the API server or the planner refuse; the
// preflight's refusal is recorded, not returned.
func check(ctx context.Context, cl *Clients, u *ztv1.RevisionUpgrade) (*checked, error) {
	p := &checked{}
	dry := u.DeepCopy()
	err := cl.Client.Create(ctx, dry, client.DryRunAll)
	switch {
	case err == nil:
		p.stored = withDefaults(dry)
	case apierrors.IsAlreadyExists(err):
		p.exists = true
		p.stored = withDefaults(u)
	case apierrors.IsInvalid(err):
		return nil, invalidError(u.Name, err)
	default:
		return nil, apiError("check", u.Name, err)
	}
	var list ztv1.RevisionUpgradeList
	if err := cl.Client.List(ctx, &list); err != nil {
		return nil, apiError("list", "", err)
	}
	for _, x := range list.Items {
		if !x.Status.Phase.Terminal() {
			p.active = append(p.active, x.Name)
		}
	}
	if p.stored.Spec.Mode == ztv1.ModeSidecar {
		return p, p.planSidecar(ctx, cl)
	}
	sel, err := plan.ScopeSelector(&p.stored.Spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	var nodes corev1.NodeList
	if err := cl.Client.List(ctx, &nodes, client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list the nodes in scope (%s): %w", sel, err)
	}
	p.scope = nodes.Items
	sort.Slice(p.scope, func(i, j int) bool { return p.scope[i].Name < p.scope[j].Name })
	if p.steps, err = plan.Nodes(&p.stored.Spec, p.scope); err != nil {
		return nil, fmt.Errorf("%w: the orchestrator would refuse revisionupgrade %q: %v", ErrRefused, u.Name, err)
	}
	p.preflight = orchestrator.Preflight(ctx, cl.Client, cl.routers(), p.stored)
	if _, refusal := plan.RefusalReason(p.preflight); p.preflight != nil && !refusal {
		return nil, fmt.Errorf("preflight of revisionupgrade %q: %w", u.Name, p.preflight)
	}
	if p.stored.Spec.Route != nil {
		p.route, p.routeErr = previewRoute(ctx, cl, p.stored, p.steps)
	}
	return p, nil
}

// planSidecar plans a Sidecar upgrade: its scope comes out of the sidecar preflight,
// so a preflight refusal leaves the steps unplanned (and is recorded), while steps
// that do not fit the scope are refused.
func (p *checked) planSidecar(ctx context.Context, cl *Clients) error {
	var err error
	p.namespaces, p.steps, err = orchestrator.PlanSidecar(ctx, cl.Client, p.stored)
	reason, refusal := plan.RefusalReason(err)
	switch {
	case err == nil:
		return nil
	case !refusal:
		return fmt.Errorf("plan revisionupgrade %q: %w", p.stored.Name, err)
	case reason == ztv1.ReasonInvalidSpec:
		return fmt.Errorf("%w: the orchestrator would refuse revisionupgrade %q: %v", ErrRefused, p.stored.Name, err)
	}
	p.preflight = err
	return nil
}

// scopeSize describes the scope: "4 nodes" or "3 namespaces".
func (p *checked) scopeSize() string {
	if p.stored.Spec.Mode == ztv1.ModeSidecar {
		return fmt.Sprintf("%d namespaces", len(p.namespaces))
	}
	return fmt.Sprintf("%d nodes", len(p.scope))
}

// invalidError lists the fields the API server refused and why.
func invalidError(name string, err error) error {
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Details != nil && len(se.Status().Details.Causes) > 0 {
		var causes []string
		for _, c := range se.Status().Details.Causes {
			msg := c.Message
			if strings.Contains(msg, "some validation rules were not checked") {
				continue // the API server's note that CEL rules wait for the schema errors
			}
			// A CEL rule's message names its field already: drop the prefix.
			if rest := strings.TrimPrefix(msg, "Invalid value: "); rest != msg && strings.HasPrefix(rest, c.Field) {
				msg = rest
			}
			if c.Field != "" && !strings.HasPrefix(msg, c.Field) {
				msg = c.Field + ": " + msg
			}
			causes = append(causes, msg)
		}
		return fmt.Errorf("%w: revisionupgrade %q is invalid, nothing was written: %s", ErrRefused, name, strings.Join(causes, "; "))
	}
	return fmt.Errorf("%w: revisionupgrade %q is invalid, nothing was written: %v", ErrRefused, name, err)
}

// refusal is the error plan ends with when the orchestrator would refuse to start.
func (p *checked) refusal() error {
	if p.preflight != nil {
		reason, _ := plan.RefusalReason(p.preflight)
		return fmt.Errorf("%w: the orchestrator would not start revisionupgrade %q now (%s): %v", ErrRefused, p.stored.Name, reason, p.preflight)
	}
	if p.routeErr != nil {
		return fmt.Errorf("%w: revisionupgrade %q: the route cannot be shifted: %v", ErrRefused, p.stored.Name, p.routeErr)
	}
	return nil
}

// previewRoute renders the route after each traffic step with the orchestrator's
// router, writing nothing.
func previewRoute(ctx context.Context, cl *Clients, u *ztv1.RevisionUpgrade, steps []plan.StepPlan) (*gatewayroutes.Preview, error) {
	router, err := cl.routers()(u)
	if err != nil {
		return nil, err
	}
	pv, ok := router.(gatewayroutes.Previewer)
	if !ok {
		return nil, fmt.Errorf("the %T router cannot render its changes", router)
	}
	var splits []gatewayroutes.Split
	for _, s := range steps {
		if s.Split != nil {
			splits = append(splits, *s.Split)
		}
	}
	p, err := pv.Preview(ctx, splits)
	if err != nil {
		return nil, err
	}
	return &p, nil
}

func (p *checked) render(w io.Writer) {
	u := p.stored
	s := &u.Spec
	sidecar := s.Mode == ztv1.ModeSidecar
	if sidecar {
		fmt.Fprintf(w, "RevisionUpgrade %s: %s → %s, mode Sidecar (namespace waves, at most %d restarts at a time)\n", u.Name, s.From, s.To, s.Sidecar.MaxConcurrentRestarts)
	} else {
		fmt.Fprintf(w, "RevisionUpgrade %s: %s → %s, strategy %s\n", u.Name, s.From, s.To, s.NodeStrategy)
	}
	if p.exists {
		fmt.Fprintf(w, "  note: revisionupgrade %q exists already; start needs another --name\n", u.Name)
	}
	if len(p.active) > 0 {
		fmt.Fprintf(w, "  note: in progress now: %s; start waits until it is over\n", strings.Join(p.active, ", "))
	}
	switch {
	case sidecar && p.preflight != nil:
		fmt.Fprintln(w, "Scope:     namespaces resolved once preflight passes")
	case sidecar:
		how := "enrolled in the " + s.From + " injector"
		if s.NamespaceSelector != nil {
			sel, _ := metav1.LabelSelectorAsSelector(s.NamespaceSelector)
			how = sel.String()
		}
		fmt.Fprintf(w, "Scope:     %d namespaces (%s): %s\n", len(p.namespaces), how, strings.Join(p.namespaces, ", "))
	default:
		sel, _ := plan.ScopeSelector(s)
		names := make([]string, len(p.scope))
		for i, n := range p.scope {
			names[i] = n.Name
		}
		fmt.Fprintf(w, "Scope:     %d nodes (%s): %s\n", len(p.scope), sel, strings.Join(names, ", "))
		fmt.Fprintf(w, "Pinning:   ztunnel DaemonSets in %s by node label %s", s.Ztunnel.Namespace, s.NodeLabel)
		for _, wl := range s.Workloads {
			fmt.Fprintf(w, "; %s → %s", wl.Namespace, wl.Revision)
		}
		fmt.Fprintln(w)
	}
	if r := s.Route; r != nil {
		fmt.Fprintf(w, "Route:     %s, stable %s, canary %s\n", routeName(r), backendName(r.Stable), backendName(r.Canary))
	}
	fmt.Fprintf(w, "Gates:     %s\n", gates(s))
	switch {
	case p.preflight != nil:
		reason, _ := plan.RefusalReason(p.preflight)
		fmt.Fprintf(w, "Preflight: REFUSED (%s): %v\n", reason, p.preflight)
	case sidecar:
		fmt.Fprintf(w, "Preflight: passed (istiod-%s is ready and its injector selects each namespace once relabelled)\n", s.To)
	default:
		fmt.Fprintf(w, "Preflight: passed (istiod-%s and the %s ztunnel are ready, the route and backends exist)\n", s.To, s.To)
	}
	fmt.Fprintln(w)
	if sidecar && len(p.steps) == 0 {
		fmt.Fprintln(w, "Steps:     not planned: the namespaces in scope are known once preflight passes")
	}
	unavailable := p.unavailable()
	after := 0
	for _, sp := range p.steps {
		step := s.Steps[sp.Index]
		fmt.Fprintf(w, "Step %d: %s → %d of %s on %s\n", sp.Index, stepSummary(step), sp.Target, p.scopeSize(), s.To)
		moved := sp.Nodes
		if sidecar {
			moved = sp.Namespaces
		}
		switch {
		case len(moved) == 0 && sp.Short == 0 && sidecar:
			fmt.Fprintln(w, "  moves:  no namespace")
		case len(moved) == 0 && sp.Short == 0:
			fmt.Fprintln(w, "  moves:  no node")
		case len(moved) > 0:
			fmt.Fprintf(w, "  moves:  %s\n", strings.Join(moved, ", "))
		}
		if sp.Short > 0 {
			fmt.Fprintf(w, "  waits:  for %d more Ready, schedulable node(s); not available now: %s; the step times out and rolls back if none becomes available\n", sp.Short, strings.Join(unavailable, ", "))
		}
		if sp.Split != nil {
			p.renderRoute(w, sp, after)
			after++
		}
		if step.Pause != nil && step.Pause.Duration == nil {
			fmt.Fprintf(w, "  then:   waits for ztcanary promote %s (annotation %s=%d)\n", u.Name, ztv1.AnnotationPromote, sp.Index)
		}
	}
}

// unavailable names the nodes in scope that no step can pick now, and why.
func (p *checked) unavailable() []string {
	picked := map[string]bool{}
	for _, sp := range p.steps {
		for _, n := range sp.Nodes {
			picked[n] = true
		}
	}
	var out []string
	for _, n := range p.scope {
		if picked[n.Name] {
			continue
		}
		why := "NotReady"
		if n.Spec.Unschedulable {
			why = "cordoned"
		}
		out = append(out, n.Name+" ("+why+")")
	}
	return out
}

// renderRoute shows the route change of a traffic step: the split and the fields
// it changes from the step before (after-th rendered state).
func (p *checked) renderRoute(w io.Writer, sp plan.StepPlan, after int) {
	when := "after the nodes are verified"
	if sp.TrafficFirst {
		when = "before the nodes move (they are the last stable ones)"
	}
	fmt.Fprintf(w, "  route:  %s, %s\n", sp.Split, when)
	switch {
	case p.routeErr != nil:
		if after == 0 {
			fmt.Fprintf(w, "          cannot render: %v\n", p.routeErr)
		}
	case p.route != nil && after < len(p.route.After):
		before := p.route.Before
		if after > 0 {
			before = p.route.After[after-1]
		}
		changes := diffJSON(p.route.Field, before, p.route.After[after])
		if len(changes) == 0 {
			fmt.Fprintf(w, "          %s %s/%s unchanged\n", strings.ToLower(p.route.Kind), p.route.Namespace, p.route.Name)
		}
		for _, c := range changes {
			fmt.Fprintf(w, "          %s\n", c)
		}
	}
}

func routeName(r *ztv1.RouteSpec) string {
	if r.HTTPRoute != nil {
		return "HTTPRoute " + r.HTTPRoute.Namespace + "/" + r.HTTPRoute.Name
	}
	if r.VirtualService != nil {
		return "VirtualService " + r.VirtualService.Namespace + "/" + r.VirtualService.Name
	}
	return "none"
}

func backendName(b ztv1.BackendRef) string {
	s := fmt.Sprintf("%s/%s:%d", b.Namespace, b.Name, b.Port)
	if b.Subset != "" {
		s += " subset " + b.Subset
	}
	return s
}

// gates describes what each wave must pass before the next.
func gates(s *ztv1.RevisionUpgradeSpec) string {
	parts := []string{"canary workloads Ready", "agent verification " + string(s.Analysis.AgentVerification)}
	if s.Mode == ztv1.ModeSidecar {
		parts = []string{"every restarted pod carries the " + s.To + " proxy before the next namespace"}
	}
	if tt := s.Analysis.TrafficTest; tt != nil {
		t := fmt.Sprintf("traffic test after each traffic step (%d requests to %s, at least %d%% succeed", tt.Requests, tt.URL, tt.MinSuccessRate)
		switch {
		case tt.CanaryHeader != nil:
			t += fmt.Sprintf(", canary share by %s=%s", tt.CanaryHeader.Name, tt.CanaryHeader.Value)
		case tt.CanaryBodyRegex != "":
			t += fmt.Sprintf(", canary share by body /%s/", tt.CanaryBodyRegex)
		}
		parts = append(parts, t+")")
	}
	timeout := "10m"
	if s.StepTimeout != nil {
		timeout = shortDuration(s.StepTimeout.Duration)
	}
	rollback := "rolls back"
	if s.Rollback.Automatic != nil && !*s.Rollback.Automatic {
		rollback = "stops as Failed (automatic rollback off)"
	}
	return strings.Join(parts, ", ") + "; a failure or a step over " + timeout + " " + rollback
}

// stepSummary is one line for a step: nodes, traffic, pause.
func stepSummary(st ztv1.Step) string {
	parts := []string{"nodes " + st.Nodes.String()}
	if st.Namespaces != nil {
		parts = []string{"namespaces " + st.Namespaces.String()}
	}
	if t := st.Traffic; t != nil {
		switch {
		case t.Header != nil:
			parts = append(parts, fmt.Sprintf("test header %s=%s", t.Header.Name, t.Header.Value))
		case t.Weight != nil:
			parts = append(parts, fmt.Sprintf("weight %d%%", *t.Weight))
		}
	}
	if st.Pause != nil {
		if st.Pause.Duration != nil {
			parts = append(parts, "pause "+shortDuration(st.Pause.Duration.Duration))
		} else {
			parts = append(parts, "pause until promoted")
		}
	}
	return strings.Join(parts, ", ")
}

// diffJSON lists how b differs from a, field by field: "~ path: old → new",
// "+ path: value", "- path: value". Values are compact JSON.
func diffJSON(root string, a, b []byte) []string {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return []string{"~ " + root + ": (not JSON)"}
	}
	var out []string
	diffValue(root, va, vb, &out)
	return out
}

func diffValue(path string, a, b any, out *[]string) {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range x {
			keys[k] = true
		}
		for k := range y {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			av, inA := x[k]
			bv, inB := y[k]
			switch {
			case !inA:
				*out = append(*out, fmt.Sprintf("+ %s.%s: %s", path, k, compact(bv)))
			case !inB:
				*out = append(*out, fmt.Sprintf("- %s.%s: %s", path, k, compact(av)))
			default:
				diffValue(path+"."+k, av, bv, out)
			}
		}
		return
	case []any:
		y, ok := b.([]any)
		if !ok {
			break
		}
		for i := 0; i < max(len(x), len(y)); i++ {
			p := fmt.Sprintf("%s[%d]", path, i)
			switch {
			case i >= len(x):
				*out = append(*out, fmt.Sprintf("+ %s: %s", p, compact(y[i])))
			case i >= len(y):
				*out = append(*out, fmt.Sprintf("- %s: %s", p, compact(x[i])))
			default:
				diffValue(p, x[i], y[i], out)
			}
		}
		return
	}
	if ca, cb := compact(a), compact(b); ca != cb {
		*out = append(*out, fmt.Sprintf("~ %s: %s → %s", path, ca, cb))
	}
}

// shortDuration writes 10m for 10m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
