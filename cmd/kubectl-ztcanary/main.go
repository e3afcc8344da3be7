// Command kubectl-ztcanary is the ztcanary command line as a kubectl plugin: put it
// on the PATH and run `kubectl ztcanary status`. Same commands as cmd/ztcanary
// (internal/cli); kubectl passes its own flags (--kubeconfig, --context, -n) through.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ztcanary/ztcanary/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, cli.PluginName, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
