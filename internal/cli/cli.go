// Package cli holds the ztcanary command line: the cobra commands and their logic,
// so that cmd/ztcanary/main.go (and cmd/kubectl-ztcanary, the same commands as a
// kubectl plugin) only wire them to the process.
//
// The commands read and write RevisionUpgrade objects; the orchestrator does the
// work. `plan` and `start` check an upgrade the way the orchestrator will (the CRD's
// schema through a server-side dry run, then plan.Nodes and
// orchestrator.Preflight), `promote`, `pause`, `resume` and `abort` set the
// annotations the orchestrator reads (api/v1alpha1 Annotation*), `status` draws what
// the orchestrator records in status, and `inventory` reads Istio's own objects.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/orchestrator/ambient"
)

// PluginName is the binary name under which kubectl finds ztcanary as a plugin.
const PluginName = "kubectl-ztcanary"

// Clients are the API clients the commands use: one controller-runtime client for
// ztcanary's and Kubernetes' objects, and the typed clientsets the orchestrator's
// routers take.
type Clients struct {
	Client  client.Client
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	Istio   istioclient.Interface
}

// Env is what the commands need from their surroundings; tests replace the clients
// with fakes and the clock with a fixed one.
type Env struct {
	// Flags are the kubeconfig flags (--kubeconfig, --context, -n, ...).
	Flags *genericclioptions.ConfigFlags
	// NewClients builds the clients (default: from Flags).
	NewClients func() (*Clients, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Terminal reports whether w is a terminal, where `status --watch` redraws in
	// place (default: a character device).
	Terminal func(w io.Writer) bool
}

// Scheme holds the types the CLI reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := ztv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

func (e *Env) clients() (*Clients, error) {
	if e.NewClients != nil {
		return e.NewClients()
	}
	cfg, err := e.Flags.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("connect to the cluster: %w", err)
	}
	out := &Clients{Client: c}
	if out.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if out.Gateway, err = gatewayclient.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if out.Istio, err = istioclient.NewForConfig(cfg); err != nil {
		return nil, err
	}
	return out, nil
}

// namespace is the namespace of -n or the kubeconfig context ("default" if none).
func (e *Env) namespace() string {
	if e.Flags == nil {
		return "default"
	}
	ns, _, err := e.Flags.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}

func (e *Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Env) terminal(w io.Writer) bool {
	if e.Terminal != nil {
		return e.Terminal(w)
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// routers is the orchestrator's own RouterFactory, so that plan and preflight
// judge a route exactly as the orchestrator will.
func (c *Clients) routers() ambient.RouterFactory {
	return ambient.Routers(c.Kube, c.Gateway, c.Istio)
}

// NewRootCommand returns the `ztcanary` command with its subcommands, talking to
// the cluster of the kubeconfig flags.
func NewRootCommand() *cobra.Command {
	return NewRootCommandWith(&Env{Flags: genericclioptions.NewConfigFlags(true)})
}

// NewRootCommandWith returns the `ztcanary` command using env.
func NewRootCommandWith(env *Env) *cobra.Command {
	if env.Flags == nil {
		env.Flags = genericclioptions.NewConfigFlags(true)
	}
	root := &cobra.Command{
		Use:   "ztcanary",
		Short: "Canary upgrades of Istio ambient meshes, node by node",
		Long: `ztcanary drives RevisionUpgrade objects, which the ztcanary orchestrator carries
out: plan an upgrade without writing anything, start it, follow it, steer it
(promote, pause, resume, abort) and see which Istio revisions run where.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cobra.EnableCommandSorting = false // the commands in the order of an upgrade
	root.AddGroup(&cobra.Group{ID: "upgrade", Title: "Upgrades:"}, &cobra.Group{ID: "inspect", Title: "Inspection and testing:"})
	for _, c := range []*cobra.Command{
		newPlanCommand(env), newStartCommand(env), newStatusCommand(env),
		newPromoteCommand(env), newPauseCommand(env), newResumeCommand(env), newAbortCommand(env), newRollbackCommand(env),
	} {
		c.GroupID = "upgrade"
		env.addKubeFlags(c)
		root.AddCommand(c)
	}
	inv := newInventoryCommand(env)
	env.addKubeFlags(inv)
	for _, c := range []*cobra.Command{inv, NewTrafficTestCommand()} {
		c.GroupID = "inspect"
		root.AddCommand(c)
	}
	return root
}

// shownKubeFlags are the kubeconfig flags help lists; the others (--server,
// --token, --user, TLS files...) work but are hidden, as kubectl keeps them in
// `kubectl options`.
var shownKubeFlags = map[string]bool{"kubeconfig": true, "context": true, "namespace": true, "as": true, "as-group": true, "request-timeout": true}

// addKubeFlags gives a command that talks to the cluster the kubeconfig flags.
// They are per command, not global, because traffic-test's -n is its request count.
func (e *Env) addKubeFlags(cmd *cobra.Command) {
	fs := pflag.NewFlagSet("kube", pflag.ContinueOnError)
	e.Flags.AddFlags(fs)
	fs.VisitAll(func(f *pflag.Flag) { f.Hidden = !shownKubeFlags[f.Name] })
	cmd.Flags().AddFlagSet(fs)
}

// Main runs the command line with args (without the program name) and returns the
// process's exit code. Invoked as kubectl-ztcanary, help shows `kubectl ztcanary`.
func Main(ctx context.Context, program string, args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand()
	if strings.HasPrefix(filepath.Base(program), PluginName) {
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl ztcanary"}
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "ztcanary:", err)
		return 1
	}
	return 0
}

// Errors a caller (or a test) can classify.
var (
	// ErrNotFound: the named RevisionUpgrade does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInProgress: another upgrade is in progress.
	ErrInProgress = errors.New("an upgrade is in progress")
	// ErrRefused: the input or the upgrade's state does not allow the command.
	ErrRefused = errors.New("refused")
)

// apiError turns an API error about RevisionUpgrade name into one that says what to
// do.
func apiError(verb, name string, err error) error {
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err) && name != "" && !isMissingAPI(err):
		return fmt.Errorf("revisionupgrade %q %w: list them with kubectl get revisionupgrades", name, ErrNotFound)
	case isMissingAPI(err):
		return fmt.Errorf("%s revisionupgrade %q: the RevisionUpgrade API (ztcanary.io/v1alpha1) is not installed in this cluster: install ztcanary with kubectl apply -k deploy/ (or only its CRDs: kubectl apply -f deploy/crds)", verb, name)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s revisionupgrade %q: %w (ask for RBAC permission on revisionupgrades.ztcanary.io, or use another --context)", verb, name, err)
	}
	return fmt.Errorf("%s revisionupgrade %q: %w", verb, name, err)
}

// isMissingAPI reports an error meaning the cluster does not serve RevisionUpgrades.
func isMissingAPI(err error) bool {
	if meta.IsNoMatchError(err) {
		return true
	}
	var se apierrors.APIStatus
	if errors.As(err, &se) && apierrors.IsNotFound(err) {
		d := se.Status().Details
		// A missing resource type is a 404 without the object's name.
		return d == nil || d.Name == ""
	}
	return false
}

// getUpgrade fetches the named upgrade or, with no name, the one in progress.
func getUpgrade(ctx context.Context, c client.Client, name string) (*ztv1.RevisionUpgrade, error) {
	if name != "" {
		u := &ztv1.RevisionUpgrade{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
			return nil, apiError("get", name, err)
		}
		return u, nil
	}
	var list ztv1.RevisionUpgradeList
	if err := c.List(ctx, &list); err != nil {
		return nil, apiError("list", "", err)
	}
	var active []ztv1.RevisionUpgrade
	for _, u := range list.Items {
		if !u.Status.Phase.Terminal() {
			active = append(active, u)
		}
	}
	switch len(active) {
	case 1:
		return &active[0], nil
	case 0:
		return nil, fmt.Errorf("no upgrade in progress (%d finished): name one, list them with kubectl get revisionupgrades", len(list.Items))
	}
	var names []string
	for _, u := range active {
		names = append(names, u.Name)
	}
	return nil, fmt.Errorf("%d upgrades are in progress (%s): name one", len(active), strings.Join(names, ", "))
}

func nameArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}
