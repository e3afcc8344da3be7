package main

import (
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes/traffictest"
	"github.com/ztcanary/ztcanary/kind/sim/simdataplane"
)

// demoTimeout bounds the whole demo, cold builds of Traefik and the simulated
// cluster's binaries included: generous, as the test asserts behaviour, not time.
const demoTimeout = 40 * time.Minute

// shareTolerance is how far an observed canary share may be from the route's weight:
// 10 points is four standard deviations of a 400-request sample at 50%, so a correct
// route never fails it by chance, and a wrong one (10 vs 50) always does.
const shareTolerance = 0.10

// TestDemo runs `make demo` in-process against a real simulated cluster and checks
// what it claims: the good upgrade Succeeded wave by wave, with the traffic split
// observed through Traefik matching the route at every step (and, as root, every
// canary node verified by its node agent); the failing upgrade RolledBack, node
// labels and route restored exactly and traffic back on the stable revision; and
// nothing left behind: no process, network namespace, folder, cgroup or mount of the
// run. Without root it checks the reduced run (no traffic, no agents), unless
// CI=true, where the full run is required.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo starts a simulated cluster and runs two upgrades: minutes")
	}
	full := os.Geteuid() == 0 && simdataplane.Check(true) == nil
	if !full && os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: the demo needs root, cgroup v2 and kernel BTF for traffic and agents: %v", simdataplane.Check(true))
	}
	o := options{nodes: 5}
	o.orchestrator, o.agent = buildDaemons(t)

	ctx, cancel := context.WithTimeout(context.Background(), demoTimeout)
	defer cancel()
	out, err := run(ctx, o)
	if err != nil {
		t.Errorf("the demo failed: %v", err)
	}
	if root := os.Geteuid() == 0; out.Traffic != root || out.Agents != full {
		t.Errorf("traffic %v, agents %v; want %v, %v on this host", out.Traffic, out.Agents, root, full)
	}
	if err == nil {
		checkUpgrades(t, out)
		if out.Traffic {
			checkTraffic(t, out)
		}
	}
	checkCleanedUp(t, out)
}

// buildDaemons builds ztcanary-orchestrator and ztcanary-agent into a test folder.
func buildDaemons(t *testing.T) (orchestrator, agent string) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/ztcanary/ztcanary/cmd/ztcanary-orchestrator", "github.com/ztcanary/ztcanary/cmd/ztcanary-agent")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the daemons: %v\n%s", err, b)
	}
	return filepath.Join(dir, "ztcanary-orchestrator"), filepath.Join(dir, "ztcanary-agent")
}

func checkUpgrades(t *testing.T, out *outcome) {
	t.Helper()
	if out.First.Phase != ztv1.PhaseSucceeded {
		t.Errorf("upgrade 1 ended %s, want Succeeded: %s", out.First.Phase, out.First.Message)
	}
	if out.First.CanaryNodes != out.First.TotalNodes || out.First.TotalNodes != 4 {
		t.Errorf("upgrade 1 moved %d of %d nodes, want 4 of 4", out.First.CanaryNodes, out.First.TotalNodes)
	}
	for _, n := range out.First.Nodes {
		if n.Revision != canary {
			t.Errorf("upgrade 1: node %s ended on %q, want %s", n.Name, n.Revision, canary)
		}
		// A node may hold no ambient pod when verified (pinning moves workloads):
		// then there is nothing to capture.
		if out.Agents && (!n.Verified || (n.CapturedBy != canary && n.CapturedBy != "")) {
			t.Errorf("upgrade 1: node %s verified %v, capturedBy %q; want verified by its agent, %s", n.Name, n.Verified, n.CapturedBy, canary)
		}
	}
	if out.Second.Phase != ztv1.PhaseRolledBack {
		t.Errorf("upgrade 2 ended %s, want RolledBack: %s", out.Second.Phase, out.Second.Message)
	}
	if out.Second.CurrentStep != 0 {
		t.Errorf("upgrade 2 rolled back at step %d, want 0: its first wave must fail", out.Second.CurrentStep)
	}
	if !out.Restored {
		t.Error("the demo did not confirm that the rollback restored node labels and route exactly")
	}
}

// checkTraffic holds every sample the demo showed to the route it measured: the
// canary's share within shareTolerance of the weight (all of it with the test header
// rule), every request answered, except that the failing release's test-header
// requests fail while its first wave is analysed.
func checkTraffic(t *testing.T, out *outcome) {
	t.Helper()
	steps := map[int][]string{}
	for _, s := range out.Samples {
		steps[s.Upgrade] = append(steps[s.Upgrade], s.Step)
		want := float64(s.Weight) / 100
		check := func(what string, r *traffictest.Result, want float64, mayFail bool) {
			if r == nil {
				t.Errorf("upgrade %d step %s: no %s sample", s.Upgrade, s.Step, what)
				return
			}
			if mayFail {
				if r.Succeeded == r.Requests {
					t.Errorf("upgrade %d step %s: %s requests to the failing release all succeeded", s.Upgrade, s.Step, what)
				}
				return
			}
			if r.SuccessRate != 1 {
				t.Errorf("upgrade %d step %s: %s success %.3f, want 1 (errors %v)", s.Upgrade, s.Step, what, r.SuccessRate, r.Errors)
			}
			if math.Abs(r.CanaryShare-want) > shareTolerance {
				t.Errorf("upgrade %d step %s: %s canary share %.3f, route says %.2f", s.Upgrade, s.Step, what, r.CanaryShare, want)
			}
		}
		failing := s.Upgrade == 2 && s.Step == "1/2"
		check("plain", s.Sample.plain, want, false)
		if s.Sample.header != nil || s.Header {
			hw := want
			if s.Header {
				hw = 1
			}
			check("test-header", s.Sample.header, hw, failing)
		}
	}
	if got := strings.Join(steps[1], " "); got != "before 1/4 2/4 3/4 4/4 done" {
		t.Errorf("upgrade 1 showed traffic at steps %q, want every wave", got)
	}
	if got := strings.Join(steps[2], " "); got != "before 1/2 after" {
		t.Errorf("upgrade 2 showed traffic at steps %q, want before, the failing wave and after", got)
	}
}

// checkCleanedUp: every process the run started is gone, and so are its folders,
// cgroups, network namespaces and mounts.
func checkCleanedUp(t *testing.T, out *outcome) {
	t.Helper()
	if len(out.PIDs) == 0 || len(out.Paths) == 0 {
		t.Fatalf("the outcome records no process or folder: %+v", out)
	}
	for name, pid := range out.PIDs {
		if alive(pid) {
			t.Errorf("%s (pid %d) still runs", name, pid)
		}
	}
	for _, p := range out.Paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there (%v)", p, err)
		}
	}
	for _, ns := range out.NetNS {
		if _, err := os.Stat("/var/run/netns/" + ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("network namespace %s is still there (%v)", ns, err)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		for _, p := range out.Paths {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], p) {
				t.Errorf("still mounted: %s", line)
			}
		}
	}
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command's closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
