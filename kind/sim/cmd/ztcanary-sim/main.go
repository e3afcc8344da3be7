// Command ztcanary-sim builds, starts and stops the simulated cluster from the
// Makefile: `build` fills the binary cache (the cluster's binaries and istio-render,
// which renders Istio's charts for the seed topology; `build-optional` adds Traefik,
// istiod and hey), `up` leaves a cluster running in a folder
// (default .sim) with its kubeconfig there, `down` stops it by PID and removes its data.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztcanary/ztcanary/kind/sim"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ztcanary-sim:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("ztcanary-sim", flag.ExitOnError)
	dir := fs.String("dir", ".sim", "folder for the cluster's data, logs and kubeconfig")
	nodes := fs.Int("nodes", 3, "number of kwok nodes")
	channel := fs.String("gateway-api-channel", "standard", "Gateway API CRDs: standard or experimental")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: ztcanary-sim build | build-optional | up [-dir D] [-nodes N] | down [-dir D]")
		fs.PrintDefaults()
	}
	if len(os.Args) < 2 {
		fs.Usage()
		return fmt.Errorf("missing command")
	}
	cmd := os.Args[1]
	if err := fs.Parse(os.Args[2:]); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "build":
		if _, err := sim.EnsureBinaries(ctx, os.Stderr); err != nil {
			return err
		}
		_, err := sim.EnsureIstioRender(ctx, os.Stderr)
		return err
	case "build-optional":
		// Traefik (end-to-end traffic tests), istiod (the sidecar injector of the
		// sidecar-mode tests) and hey (the traffic tester's benchmark).
		if _, err := sim.EnsureTraefik(ctx, os.Stderr); err != nil {
			return err
		}
		if _, err := sim.EnsureIstiod(ctx, os.Stderr); err != nil {
			return err
		}
		_, err := sim.EnsureHey(ctx, os.Stderr)
		return err
	case "up":
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return err
		}
		if old, err := sim.Attach(abs); err == nil {
			if old.Running() {
				return fmt.Errorf("a simulated cluster already runs in %s: run `make sim-down` first", abs)
			}
			_ = old.Stop()
		}
		// The folder is kept across runs (it holds the kubeconfig users point at),
		// but its old data must go.
		for _, sub := range []string{"etcd", "pki"} {
			if err := os.RemoveAll(filepath.Join(abs, sub)); err != nil {
				return err
			}
		}
		c, err := sim.Start(ctx, sim.Options{Nodes: *nodes, Dir: abs, Progress: os.Stderr, Detach: true, GatewayAPIChannel: *channel})
		if err != nil {
			return err
		}
		nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Items {
			role := "worker"
			if _, ok := n.Labels[sim.ControlPlaneRole]; ok {
				role = "control-plane (tainted NoSchedule)"
			}
			fmt.Printf("  node %-24s %s\n", n.Name, role)
		}
		fmt.Printf("simulated cluster up: export KUBECONFIG=%s\n", c.Kubeconfig)
		return nil
	case "down":
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return err
		}
		c, err := sim.Attach(abs)
		if err != nil {
			fmt.Println("no simulated cluster running in", abs)
			return nil
		}
		if err := c.Stop(); err != nil {
			return err
		}
		for _, sub := range []string{"etcd", "pki", "kubeconfig"} {
			_ = os.RemoveAll(filepath.Join(abs, sub))
		}
		fmt.Println("simulated cluster stopped")
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}
