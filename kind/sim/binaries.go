package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Pinned versions of what the simulated cluster runs. The build versions live in the
// go.mod files of the tool modules under kind/tools; these constants name the cache
// entries and the CRD sources, and a test keeps the two in step.
const (
	KubernetesVersion = "v1.36.3"
	EtcdVersion       = "v3.6.8"
	KwokVersion       = "v0.8.0"
	GatewayAPIVersion = "v1.6.3"
	IstioAPIVersion   = "v1.31.1"
)

// Binaries holds the paths of the built control-plane binaries and kwok's stages.
type Binaries struct {
	Etcd              string
	APIServer         string
	ControllerManager string
	Scheduler         string
	Kwok              string
	// KwokStages is kwok's node and pod stages (fast readiness, heartbeats),
	// concatenated from its module into one file.
	KwokStages string
}

// component describes one binary built from a tool module.
type component struct {
	name    string // binary name
	tool    string // folder under kind/tools
	pkg     string // package built in that module
	version string
	ldflags string
}

var kubeVersionFlags = strings.Join([]string{
	"-s", "-w",
	"-X k8s.io/component-base/version.gitVersion=" + KubernetesVersion,
	"-X k8s.io/component-base/version.gitMajor=1",
	"-X k8s.io/component-base/version.gitMinor=36",
	"-X k8s.io/component-base/version.gitTreeState=clean",
	"-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z",
}, " ")

var components = []component{
	{name: "etcd", tool: "etcd", pkg: ".", version: EtcdVersion, ldflags: "-s -w"},
	{name: "kube-apiserver", tool: "kube", pkg: "k8s.io/kubernetes/cmd/kube-apiserver", version: KubernetesVersion, ldflags: kubeVersionFlags},
	{name: "kube-controller-manager", tool: "kube", pkg: "k8s.io/kubernetes/cmd/kube-controller-manager", version: KubernetesVersion, ldflags: kubeVersionFlags},
	{name: "kube-scheduler", tool: "kube", pkg: "k8s.io/kubernetes/cmd/kube-scheduler", version: KubernetesVersion, ldflags: kubeVersionFlags},
	{name: "kwok", tool: "kwok", pkg: "sigs.k8s.io/kwok/cmd/kwok", version: KwokVersion, ldflags: "-s -w"},
}

// CacheDir is where built binaries are kept: $ZTCANARY_SIM_CACHE, or
// ztcanary/sim under the user's cache directory.
func CacheDir() (string, error) {
	if d := os.Getenv("ZTCANARY_SIM_CACHE"); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the user cache directory (set ZTCANARY_SIM_CACHE): %w", err)
	}
	return filepath.Join(base, "ztcanary", "sim"), nil
}

// RepoRoot finds the ztcanary checkout: $ZTCANARY_ROOT, or the nearest parent of the
// working directory that holds kind/tools.
func RepoRoot() (string, error) {
	if d := os.Getenv("ZTCANARY_ROOT"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "kind", "tools", "kube", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kind/tools not found above the working directory: run from a ztcanary checkout or set ZTCANARY_ROOT")
		}
		dir = parent
	}
}

// EnsureBinaries returns the simulated cluster's binaries, building those missing from
// the cache. Building prints a progress line per binary to progress; a cold build of
// all of them takes several minutes on two cores, a warm call a few milliseconds.
// Concurrent callers (parallel test packages) serialise on a lock file.
func EnsureBinaries(ctx context.Context, progress io.Writer) (*Binaries, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("create cache %s: %w", cache, err)
	}
	unlock, err := lockFile(filepath.Join(cache, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	paths := map[string]string{}
	for _, c := range components {
		toolDir := filepath.Join(root, "kind", "tools", c.tool)
		key, err := moduleKey(toolDir)
		if err != nil {
			return nil, err
		}
		out := filepath.Join(cache, fmt.Sprintf("%s-%s-%s", c.name, c.version, key))
		if _, err := os.Stat(out); err != nil {
			if err := build(ctx, c, toolDir, out, progress); err != nil {
				return nil, err
			}
		}
		paths[c.name] = out
	}
	stages := filepath.Join(cache, "kwok-config-"+KwokVersion+"-"+kwokConfigRevision+".yaml")
	if _, err := os.Stat(stages); err != nil {
		if err := writeKwokStages(ctx, filepath.Join(root, "kind", "tools", "kwok"), stages); err != nil {
			return nil, err
		}
	}
	return &Binaries{
		Etcd:              paths["etcd"],
		APIServer:         paths["kube-apiserver"],
		ControllerManager: paths["kube-controller-manager"],
		Scheduler:         paths["kube-scheduler"],
		Kwok:              paths["kwok"],
		KwokStages:        stages,
	}, nil
}

// moduleKey hashes a tool module's files, so a changed pin builds a new binary.
func moduleKey(dir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) && f == "main.go" {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read tool module: %w", err)
		}
		h.Write([]byte(f))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

func build(ctx context.Context, c component, toolDir, out string, progress io.Writer) error {
	start := time.Now()
	fmt.Fprintf(progress, "sim: building %s %s from the Go module proxy (first run only; cached in %s)\n", c.name, c.version, filepath.Dir(out))
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(progress, "sim: still building %s (%s)\n", c.name, time.Since(start).Round(time.Second))
			}
		}
	}()
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", c.ldflags, "-o", tmp, c.pkg)
	cmd.Dir = toolDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("build %s %s in %s: %w\n%s", c.name, c.version, toolDir, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("install %s: %w", c.name, err)
	}
	var size int64
	if fi, err := os.Stat(out); err == nil {
		size = fi.Size()
	}
	fmt.Fprintf(progress, "sim: built %s in %s (%d MB)\n", c.name, time.Since(start).Round(time.Second), size>>20)
	return nil
}

// moduleDir downloads a module (if needed) and returns its folder in the module cache.
// dir is where the go command runs, so that module's go.sum vouches for the download.
func moduleDir(ctx context.Context, dir, module string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	b, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(b, &info); jerr == nil && info.Error != "" {
		return "", fmt.Errorf("download %s: %s", module, info.Error)
	}
	if err != nil {
		return "", fmt.Errorf("download %s: %w", module, err)
	}
	if info.Dir == "" {
		return "", fmt.Errorf("download %s: no folder reported", module)
	}
	return info.Dir, nil
}

// kwokOptions raises kwok's parallelism (4 by default) so thousands of pods go Running
// in seconds, not minutes; bump kwokConfigRevision when changing it (it names the
// cached file).
const (
	kwokConfigRevision = "2"
	kwokOptions        = `apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  podPlayStageParallelism: 32
  nodePlayStageParallelism: 16
  nodeLeaseParallelism: 16
  podsOnNodeSyncParallelism: 8`
)

// kwokStageDirs are kwok's stage sets the simulated cluster uses: nodes become Ready
// at once and keep heartbeating, pods become Ready at once and go away when deleted.
var kwokStageDirs = []string{"kustomize/stage/node/fast", "kustomize/stage/node/heartbeat", "kustomize/stage/pod/fast"}

func writeKwokStages(ctx context.Context, toolDir, out string) error {
	dir, err := moduleDir(ctx, toolDir, "sigs.k8s.io/kwok")
	if err != nil {
		return err
	}
	docs := []string{kwokOptions}
	for _, sd := range kwokStageDirs {
		files, err := filepath.Glob(filepath.Join(dir, sd, "*.yaml"))
		if err != nil {
			return err
		}
		for _, f := range files {
			if filepath.Base(f) == "kustomization.yaml" {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("read kwok stage: %w", err)
			}
			docs = append(docs, strings.TrimSpace(string(b)))
		}
	}
	if len(docs) == 1 {
		return fmt.Errorf("no kwok stages found in %s", dir)
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(docs, "\n---\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
