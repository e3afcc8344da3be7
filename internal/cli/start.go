package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

type startOptions struct {
	spec          specOptions
	skipPreflight bool
	watch         watchOptions
}

func newStartCommand(env *Env) *cobra.Command {
	o := &startOptions{}
	cmd := &cobra.Command{
		Use:   "start (-f FILE | --from REV --to REV [flags])",
		Short: "Create a RevisionUpgrade, after the checks of plan",
		Long: `Creates the RevisionUpgrade from the flags or a file, which the orchestrator then
carries out. Before writing, it runs the checks of ` + "`ztcanary plan`" + ` (the CRD's schema and
CEL rules through a server-side dry run, the step plan against the nodes in scope,
the orchestrator's preflight) and refuses, writing nothing, when one fails or when
another upgrade is in progress.`,
		Example: `  ztcanary start -f deploy/samples/canary-1-18-1.yaml --watch
  ztcanary start --from 1-18-0 --to 1-18-1 --strategy Handoff \
    --workload bookinfo-1-18-0=1-18-0 --workload bookinfo-1-18-1=1-18-1 \
    --step nodes=1,pause --step nodes=100%`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), env, cmd.OutOrStdout())
		},
	}
	o.spec.addFlags(cmd.Flags())
	o.spec.stdin = cmd.InOrStdin()
	cmd.Flags().BoolVar(&o.skipPreflight, "skip-preflight", false, "create even if the orchestrator's preflight refuses now (it retries every 30s, e.g. while istiod starts)")
	cmd.Flags().BoolVarP(&o.watch.watch, "watch", "w", false, "then follow it as `ztcanary status --watch` does")
	o.watch.addFlags(cmd)
	return cmd
}

func (o *startOptions) run(ctx context.Context, env *Env, out io.Writer) error {
	u, err := o.spec.build(env.namespace())
	if err != nil {
		return err
	}
	cl, err := env.clients()
	if err != nil {
		return err
	}
	if err := refuseInProgress(ctx, cl); err != nil {
		return err
	}
	p, err := check(ctx, cl, u)
	if err != nil {
		return err
	}
	if p.exists {
		return fmt.Errorf("%w: revisionupgrade %q exists already: pick another --name (or metadata.name), or delete it with kubectl delete revisionupgrade %s", ErrRefused, u.Name, u.Name)
	}
	if err := p.refusal(); err != nil && !o.skipPreflight {
		return fmt.Errorf("%w; nothing was written (see ztcanary plan; --skip-preflight creates it anyway)", err)
	}
	if err := cl.Client.Create(ctx, u); err != nil {
		if apierrors.IsInvalid(err) {
			return invalidError(u.Name, err)
		}
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%w: revisionupgrade %q exists already: pick another --name, or delete it with kubectl delete revisionupgrade %s", ErrRefused, u.Name, u.Name)
		}
		return apiError("create", u.Name, err)
	}
	fmt.Fprintf(out, "revisionupgrade %q created: %s → %s, %d steps over %s\n", u.Name, u.Spec.From, u.Spec.To, len(u.Spec.Steps), p.scopeSize())
	if !o.watch.watch {
		fmt.Fprintf(out, "follow it with: ztcanary status %s --watch\n", u.Name)
		return nil
	}
	return o.watch.run(ctx, env, cl, u.Name, out)
}

// refuseInProgress refuses to start while another upgrade is not over: two
// upgrades would relabel the same nodes.
func refuseInProgress(ctx context.Context, cl *Clients) error {
	var list ztv1.RevisionUpgradeList
	if err := cl.Client.List(ctx, &list); err != nil {
		return apiError("list", "", err)
	}
	for _, x := range list.Items {
		switch x.Status.Phase {
		case ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed:
			continue
		case "", ztv1.PhasePending:
			msg := x.Status.Message
			if msg == "" {
				msg = "not picked up by an orchestrator yet"
			}
			return fmt.Errorf("%w: revisionupgrade %q has not started (Pending: %s): fix what it waits for, or delete it with kubectl delete revisionupgrade %s; nothing was written", ErrInProgress, x.Name, msg, x.Name)
		default:
			return fmt.Errorf("%w: revisionupgrade %q is %s (step %d of %d): let it finish (ztcanary status %s --watch) or abort it (ztcanary abort %s); nothing was written",
				ErrInProgress, x.Name, x.Status.Phase, x.Status.CurrentStep, len(x.Spec.Steps), x.Name, x.Name)
		}
	}
	return nil
}

// watchOptions bound `--watch`.
type watchOptions struct {
	watch    bool
	timeout  time.Duration
	interval time.Duration
}

func (o *watchOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&o.timeout, "timeout", 30*time.Minute, "with --watch: give up after this long (the upgrade goes on)")
	cmd.Flags().DurationVar(&o.interval, "interval", time.Second, "with --watch: how often to read the upgrade")
}
