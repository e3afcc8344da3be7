// Package cli holds the ztcanary command line: the cobra commands and their logic,
// so that cmd/ztcanary/main.go only wires them to the process.
package cli

import (
	"github.com/spf13/cobra"
)

// NewRootCommand returns the `ztcanary` command with its subcommands.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "ztcanary",
		Short:         "Canary upgrades of Istio ambient meshes, node by node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(NewTrafficTestCommand())
	return root
}
