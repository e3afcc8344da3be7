package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// ErrTimeout: --watch gave up before the upgrade ended (the upgrade goes on).
var ErrTimeout = errors.New("timed out")

// ErrUpgradeFailed: the watched upgrade ended rolled back or failed.
var ErrUpgradeFailed = errors.New("upgrade did not succeed")

func newStatusCommand(env *Env) *cobra.Command {
	o := &watchOptions{}
	cmd := &cobra.Command{
		Use:   "status [NAME]",
		Short: "Show an upgrade as a tree of steps and nodes; --watch follows it to the end",
		Long: `Shows a RevisionUpgrade: phase, progress, what it waits for and the command that
unblocks it, each step with its nodes (revision, phase, the agent's verification),
the nodes per revision, the gates and the conditions. Without NAME it shows the
upgrade in progress (or the latest one); with no upgrade at all, the revision
inventory. --watch redraws until the upgrade succeeds (exit 0), rolls back or fails
(exit 1), or --timeout passes (exit 1; the upgrade goes on).`,
		Example: `  ztcanary status
  ztcanary status canary-1-18-1 --watch --timeout 20m`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.status(cmd.Context(), env, nameArg(args), cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVarP(&o.watch, "watch", "w", false, "redraw until the upgrade ends")
	o.addFlags(cmd)
	return cmd
}

func (o *watchOptions) status(ctx context.Context, env *Env, name string, out io.Writer) error {
	cl, err := env.clients()
	if err != nil {
		return err
	}
	if name == "" {
		u, err := latestUpgrade(ctx, cl.Client)
		if err != nil {
			return err
		}
		if u == nil {
			fmt.Fprintln(out, "No RevisionUpgrade yet: plan one with ztcanary plan, start it with ztcanary start.")
			fmt.Fprintln(out)
			inv, err := readInventory(ctx, cl.Client, ztv1.DefaultNodeLabel)
			if err != nil {
				return err
			}
			inv.render(out)
			return nil
		}
		name = u.Name
	}
	if o.watch {
		return o.run(ctx, env, cl, name, out)
	}
	u, err := getUpgrade(ctx, cl.Client, name)
	if err != nil {
		return err
	}
	renderStatus(out, u, env.now())
	return nil
}

// latestUpgrade is the upgrade in progress, else the newest; nil when there is none.
func latestUpgrade(ctx context.Context, c client.Client) (*ztv1.RevisionUpgrade, error) {
	var list ztv1.RevisionUpgradeList
	if err := c.List(ctx, &list); err != nil {
		return nil, apiError("list", "", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	items := list.Items
	sort.SliceStable(items, func(i, j int) bool {
		ai, aj := !items[i].Status.Phase.Terminal(), !items[j].Status.Phase.Terminal()
		if ai != aj {
			return ai
		}
		return items[j].CreationTimestamp.Before(&items[i].CreationTimestamp)
	})
	return &items[0], nil
}

// run redraws the upgrade until it ends or the timeout passes. On a terminal it
// redraws in place every interval; elsewhere (a pipe, a log) it prints a new frame
// each time the object changes.
func (o *watchOptions) run(ctx context.Context, env *Env, cl *Clients, name string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	interval := o.interval
	if interval <= 0 {
		interval = time.Second
	}
	tty := env.terminal(out)
	lastVersion := ""
	var last *ztv1.RevisionUpgrade
	for {
		u := &ztv1.RevisionUpgrade{}
		err := cl.Client.Get(ctx, client.ObjectKey{Name: name}, u)
		switch {
		case err != nil && ctx.Err() != nil:
			return o.timedOut(name, last)
		case err != nil:
			return apiError("get", name, err)
		}
		last = u
		var frame bytes.Buffer
		renderStatus(&frame, u, env.now())
		switch {
		case tty:
			fmt.Fprint(out, "\033[H\033[2J")
			_, _ = out.Write(frame.Bytes())
		case u.ResourceVersion != lastVersion:
			if lastVersion != "" {
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "--- %s\n", env.now().Format("15:04:05"))
			_, _ = out.Write(frame.Bytes())
		}
		lastVersion = u.ResourceVersion
		if u.Status.Phase.Terminal() {
			return outcome(u)
		}
		select {
		case <-ctx.Done():
			return o.timedOut(name, last)
		case <-time.After(interval):
		}
	}
}

func (o *watchOptions) timedOut(name string, u *ztv1.RevisionUpgrade) error {
	where := ""
	if u != nil {
		where = fmt.Sprintf(" (%s, step %d: %s)", phaseOf(u), u.Status.CurrentStep, u.Status.Message)
	}
	return fmt.Errorf("%w after %s waiting for revisionupgrade %q to end%s; it goes on: follow it again with ztcanary status %s --watch", ErrTimeout, o.timeout, name, where, name)
}

// outcome is nil for a succeeded upgrade and an error saying why for the others.
func outcome(u *ztv1.RevisionUpgrade) error {
	switch u.Status.Phase {
	case ztv1.PhaseSucceeded:
		return nil
	case ztv1.PhaseRolledBack:
		return fmt.Errorf("%w: revisionupgrade %q rolled back: %s", ErrUpgradeFailed, u.Name, strings.TrimPrefix(u.Status.Message, "rolled back: "))
	default:
		return fmt.Errorf("%w: revisionupgrade %q %s: %s", ErrUpgradeFailed, u.Name, strings.ToLower(string(u.Status.Phase)), u.Status.Message)
	}
}

func phaseOf(u *ztv1.RevisionUpgrade) ztv1.Phase {
	if u.Status.Phase == "" {
		return ztv1.PhasePending
	}
	return u.Status.Phase
}

// Step markers in the tree.
const (
	markDone    = "✓"
	markCurrent = "▶"
	markPending = "·"
	markFailed  = "✗"
)

// renderStatus draws u: header, progress, steps with their nodes, nodes per
// revision, gates and conditions. now only dates ages, so a fixed clock gives a
// fixed drawing.
func renderStatus(w io.Writer, u *ztv1.RevisionUpgrade, now time.Time) {
	sc := scopeOf(u)
	fmt.Fprintf(w, "RevisionUpgrade %s: %s → %s (%s), %d %s in scope\n", u.Name, u.Spec.From, u.Spec.To, sc.mode, sc.total, sc.kind)
	renderProgress(w, u, sc, now)
	renderSteps(w, u, sc)
	if len(u.Status.Nodes) > 0 && u.Spec.Mode != ztv1.ModeSidecar {
		renderNodes(w, u.Status.Nodes)
	}
	renderGateways(w, u.Status.Gateways)
	fmt.Fprintf(w, "Gates:     %s\n", gates(&withDefaults(u).Spec))
	renderConditions(w, u.Status.Conditions, now)
}

// statusScope is what an upgrade moves, for the status page: nodes or namespaces,
// how many, how many moved, and the strategy (or Sidecar).
type statusScope struct {
	kind          string
	total, canary int
	mode          string
}

func scopeOf(u *ztv1.RevisionUpgrade) statusScope {
	s, st := &u.Spec, &u.Status
	if s.Mode == ztv1.ModeSidecar {
		sc := statusScope{kind: "namespaces", total: int(st.TotalNamespaces), canary: int(st.CanaryNamespaces), mode: "Sidecar"}
		if sc.total == 0 {
			sc.total = len(st.Namespaces)
		}
		return sc
	}
	sc := statusScope{kind: "nodes", total: int(st.TotalNodes), canary: int(st.CanaryNodes), mode: string(s.NodeStrategy)}
	if sc.total == 0 {
		sc.total = len(st.Nodes)
	}
	if sc.mode == "" {
		sc.mode = string(ztv1.NodeStrategyDrain)
	}
	return sc
}

// renderProgress writes the phase, the progress bar, the message and the next action.
func renderProgress(w io.Writer, u *ztv1.RevisionUpgrade, sc statusScope, now time.Time) {
	s, st := &u.Spec, &u.Status
	line := fmt.Sprintf("%s · step %d of steps 0-%d", phaseOf(u), st.CurrentStep, len(s.Steps)-1)
	if st.StepStage != "" && st.StepStage != ztv1.StageDone {
		line += " · " + string(st.StepStage)
		if since := st.StageStart(); since != nil {
			line += " for " + duration.HumanDuration(now.Sub(since.Time))
		}
	}
	fmt.Fprintf(w, "Phase:     %s\n", line)
	if sc.total == 0 {
		fmt.Fprintln(w, "Progress:  not started: the scope is resolved when preflight passes")
	} else {
		weight := ""
		if s.Route != nil {
			weight = fmt.Sprintf(" · canary weight %d%%", st.TrafficWeight)
		}
		fmt.Fprintf(w, "Progress:  %s %d/%d %s on %s%s\n", bar(sc.canary, sc.total, 20), sc.canary, sc.total, sc.kind, s.To, weight)
	}
	if st.Message != "" {
		fmt.Fprintf(w, "Message:   %s\n", st.Message)
	}
	if next := nextAction(u); next != "" {
		fmt.Fprintf(w, "Next:      %s\n", next)
	}
}

// renderSteps writes the tree of steps with the nodes (namespaces) under each.
func renderSteps(w io.Writer, u *ztv1.RevisionUpgrade, sc statusScope) {
	fmt.Fprintln(w, "Steps:")
	items := stepItems(u)
	width := 0
	for _, it := range items {
		width = max(width, len(it.name))
	}
	for i, step := range u.Spec.Steps {
		branch, indent := "├─", "│  "
		if i == len(u.Spec.Steps)-1 {
			branch, indent = "└─", "   "
		}
		mark, note := stepMark(u, i)
		fmt.Fprintf(w, "%s %s step %d: %s%s\n", branch, mark, i, stepSummary(step), note)
		var mine []stepItem
		for _, it := range items {
			if it.step == int32(i) {
				mine = append(mine, it)
			}
		}
		for j, it := range mine {
			nb := "├─"
			if j == len(mine)-1 {
				nb = "└─"
			}
			fmt.Fprintf(w, "%s%s %-*s  %s\n", indent, nb, width, it.name, it.state)
		}
	}
	unassigned := 0
	for _, it := range items {
		if it.step < 0 {
			unassigned++
		}
	}
	if phase := phaseOf(u); unassigned > 0 && !phase.Terminal() && phase != ztv1.PhaseRollingBack {
		fmt.Fprintf(w, "   (%d %s not assigned yet: each step picks its %s when it starts)\n", unassigned, sc.kind, sc.kind)
	}
}

// renderNodes lists the nodes in scope by the revision they run.
func renderNodes(w io.Writer, nodes []ztv1.NodeStatus) {
	fmt.Fprintln(w, "Nodes:")
	byRev := map[string][]string{}
	for _, n := range nodes {
		rev := n.Revision
		if rev == "" {
			rev = "(unlabelled)"
		}
		byRev[rev] = append(byRev[rev], n.Name)
	}
	revs := make([]string, 0, len(byRev))
	for r := range byRev {
		revs = append(revs, r)
	}
	sort.Strings(revs)
	for _, r := range revs {
		fmt.Fprintf(w, "  %-10s %2d  %s\n", r, len(byRev[r]), strings.Join(byRev[r], ", "))
	}
}

// renderGateways lists the gateway proxies a Sidecar upgrade found.
func renderGateways(w io.Writer, gws []ztv1.GatewayStatus) {
	if len(gws) == 0 {
		return
	}
	fmt.Fprintln(w, "Gateways:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, g := range gws {
		moves := "stays on its revision"
		if g.InScope {
			moves = "moves with its namespace"
		}
		fmt.Fprintf(tw, "  %s/%s\t%s\t%d pods\t%s\n", g.Namespace, g.Name, g.Revision, g.Pods, moves)
	}
	_ = tw.Flush()
}

// renderConditions writes the conditions as a table.
func renderConditions(w io.Writer, conds []metav1.Condition, now time.Time) {
	if len(conds) == 0 {
		return
	}
	fmt.Fprintln(w, "Conditions:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  TYPE\tSTATUS\tREASON\tAGE\tMESSAGE")
	for _, c := range conds {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, duration.HumanDuration(now.Sub(c.LastTransitionTime.Time)), c.Message)
	}
	_ = tw.Flush()
}

// stepItem is a node or a namespace under its step in the tree.
type stepItem struct {
	name  string
	step  int32
	state string
}

func stepItems(u *ztv1.RevisionUpgrade) []stepItem {
	var out []stepItem
	if u.Spec.Mode == ztv1.ModeSidecar {
		for _, n := range u.Status.Namespaces {
			out = append(out, stepItem{name: n.Name, step: n.Step, state: namespaceState(n)})
		}
		return out
	}
	for _, n := range u.Status.Nodes {
		out = append(out, stepItem{name: n.Name, step: n.Step, state: nodeState(n)})
	}
	return out
}

func namespaceState(n ztv1.NamespaceStatus) string {
	s := fmt.Sprintf("%-9s", n.Phase)
	done := 0
	for _, w := range n.Workloads {
		if w.Done {
			done++
		}
	}
	if len(n.Workloads) > 0 {
		s += fmt.Sprintf("%d of %d workloads restarted", done, len(n.Workloads))
	}
	if n.Verified {
		s += ", verified: every pod carries the new proxy"
	}
	return strings.TrimRight(s, " ")
}

// stepMark is the marker of step i and a note on it.
func stepMark(u *ztv1.RevisionUpgrade, i int) (string, string) {
	st := &u.Status
	cur := int(st.CurrentStep)
	switch phaseOf(u) {
	case ztv1.PhasePending:
		return markPending, ""
	case ztv1.PhaseSucceeded:
		return markDone, ""
	case ztv1.PhaseRollingBack, ztv1.PhaseRolledBack, ztv1.PhaseFailed:
		switch {
		case i < cur:
			return markDone, ""
		case i == cur:
			return markFailed, "  ◀ stopped here"
		}
		return markPending, ""
	}
	switch {
	case i < cur:
		return markDone, ""
	case i == cur:
		return markCurrent, "  ◀ " + string(st.StepStage)
	}
	return markPending, ""
}

func nodeState(n ztv1.NodeStatus) string {
	rev := n.Revision
	if rev == "" {
		rev = "-"
	}
	s := fmt.Sprintf("%-9s%s", n.Phase, rev)
	switch {
	case n.Verified && n.CapturedBy != "":
		s += ", verified: pods captured by the " + n.CapturedBy + " ztunnel"
	case n.Verified:
		s += ", verified"
	}
	if n.WasCordoned {
		s += ", cordoned before the upgrade"
	}
	return s
}

// nextAction says what unblocks the upgrade, when a person must act.
func nextAction(u *ztv1.RevisionUpgrade) string {
	c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused)
	ready := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionReady)
	switch {
	case u.Status.Phase.Terminal():
		return ""
	case u.Annotations[ztv1.AnnotationAbort] == "true" && u.Status.Phase != ztv1.PhaseRollingBack:
		return "abort requested; the orchestrator rolls back on its next pass"
	case u.Status.Phase == ztv1.PhaseRollingBack:
		return "rolling back; nothing to do"
	case u.Annotations[ztv1.AnnotationPause] == "true":
		return "paused by request: ztcanary resume " + u.Name
	case c != nil && c.Status == "True" && c.Reason == ztv1.ReasonAwaitingPromote:
		return "ztcanary promote " + u.Name
	case c != nil && c.Status == "True" && c.Reason == ztv1.ReasonRouteDrift:
		return "put the route back as ztcanary set it, or ztcanary abort " + u.Name
	case ready != nil && ready.Status == "False":
		return "fix what the Ready condition names (the orchestrator retries every 30s), or kubectl delete revisionupgrade " + u.Name
	}
	return ""
}

// bar is a progress bar of n of total in width cells.
func bar(n, total, width int) string {
	filled := 0
	if total > 0 {
		filled = min(width, n*width/total)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "]"
}
