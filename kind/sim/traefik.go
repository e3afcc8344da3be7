package sim

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Versions of the optional components, built only when a test asks for them.
const (
	TraefikVersion = "v3.6.12"
	HeyVersion     = "v0.1.4"
)

// TraefikControllerName is the GatewayClass controllerName Traefik serves.
const TraefikControllerName = "traefik.io/gateway-controller"

var (
	traefikComponent = component{name: "traefik", tool: "traefik", pkg: "github.com/traefik/traefik/v3/cmd/traefik", version: TraefikVersion,
		ldflags: "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=" + TraefikVersion}
	heyComponent = component{name: "hey", tool: "hey", pkg: "github.com/rakyll/hey", version: HeyVersion, ldflags: "-s -w"}
)

// EnsureTraefik returns the path of Traefik (a real Gateway API data plane), building
// it from the Go module proxy into the cache on first use: about 5.5 minutes cold on
// two cores, a few milliseconds warm. The simulated cluster never needs it; tests of
// real traffic through an HTTPRoute do.
func EnsureTraefik(ctx context.Context, progress io.Writer) (string, error) {
	return ensureOnDemand(ctx, traefikComponent, progress)
}

// EnsureHey returns the path of the hey load generator, building it on first use.
func EnsureHey(ctx context.Context, progress io.Writer) (string, error) {
	return ensureOnDemand(ctx, heyComponent, progress)
}

func ensureOnDemand(ctx context.Context, c component, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("create cache %s: %w", cache, err)
	}
	unlock, err := lockFile(filepath.Join(cache, ".lock-"+c.name))
	if err != nil {
		return "", err
	}
	defer unlock()
	toolDir := filepath.Join(root, "kind", "tools", c.tool)
	key, err := moduleKey(toolDir)
	if err != nil {
		return "", err
	}
	out := filepath.Join(cache, fmt.Sprintf("%s-%s-%s", c.name, c.version, key))
	if _, err := os.Stat(out); err != nil {
		if err := build(ctx, c, toolDir, out, progress); err != nil {
			return "", err
		}
	}
	return out, nil
}

// Traefik is a Traefik process serving the cluster's Gateway API routes on loopback.
type Traefik struct {
	// Port is the loopback port of Traefik's one entryPoint: the Gateway's listener
	// must use this port for Traefik to attach to it.
	Port int
	// URL is http://127.0.0.1:Port.
	URL string
	// PID is the process id; Stop (or the cluster's Stop) ends it.
	PID int
	// Log is the path of Traefik's log.
	Log string

	exe string
	cmd *exec.Cmd
}

// StartTraefik runs Traefik (from EnsureTraefik) against the cluster with the
// Kubernetes Gateway provider, one HTTP entryPoint on a free loopback port, no
// dashboard and no provider throttling (route changes apply within milliseconds).
// It is registered with the cluster, so the cluster's Stop ends it too; call Stop
// to end it earlier. It returns once Traefik's ping endpoint answers.
func (c *Cluster) StartTraefik(ctx context.Context, binary string) (*Traefik, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	web, ping := ports[0], ports[1]
	logPath := filepath.Join(c.Dir, "traefik.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(binary,
		"--providers.kubernetesGateway=true",
		"--providers.providersThrottleDuration=0s",
		"--entryPoints.web.address=127.0.0.1:"+strconv.Itoa(web),
		"--entryPoints.traefik.address=127.0.0.1:"+strconv.Itoa(ping),
		"--ping=true",
		"--api.dashboard=false",
		// No traffic leaves the machine: no release check, no usage statistics.
		"--global.checkNewVersion=false",
		"--global.sendAnonymousUsage=false",
		"--log.level=INFO",
	)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.Dir
	setProcAttrs(cmd, false)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start traefik: %w", err)
	}
	c.children = append(c.children, cmd)
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	if exe == "" {
		exe = binary
	}
	c.state.Processes = append(c.state.Processes, process{Name: "traefik", PID: cmd.Process.Pid, Exe: exe})
	if err := c.saveState(); err != nil {
		return nil, err
	}
	t := &Traefik{Port: web, URL: "http://127.0.0.1:" + strconv.Itoa(web), PID: cmd.Process.Pid, Log: logPath, exe: exe, cmd: cmd}
	if err := c.waitHTTP(ctx, "traefik", fmt.Sprintf("http://127.0.0.1:%d/ping", ping), "", time.Minute); err != nil {
		_ = t.Stop()
		return nil, err
	}
	return t, nil
}

// Stop ends Traefik (SIGTERM, then SIGKILL after 10 s). Safe to call twice.
func (t *Traefik) Stop() error {
	err := stopProcesses([]process{{Name: "traefik", PID: t.PID, Exe: t.exe}}, 10*time.Second)
	if t.cmd != nil {
		_ = t.cmd.Wait()
		t.cmd = nil
	}
	return err
}
