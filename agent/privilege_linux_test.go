package agent

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"
)

// privCheckEnv makes the test binary run privCheckMain: the agent's kernel-side steps, one
// line each ("<step> ok" or "<step> fail: <error>"), with whatever capabilities it was
// started with.
const privCheckEnv = "ZTCANARY_TEST_PRIVCHECK"

// agentCaps are the capabilities deploy/agent/daemonset.yaml grants.
var agentCaps = []string{"bpf", "perfmon", "sys_admin"}

func privCheckMain() int {
	pinDir := os.Getenv(privCheckEnv)
	ztPID := os.Getenv(privCheckEnv + "_PID")
	report := func(step string, err error) {
		if err != nil {
			fmt.Printf("%s fail: %v\n", step, err)
			return
		}
		fmt.Printf("%s ok\n", step)
	}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
				fmt.Printf("capeff %s\n", strings.TrimSpace(v))
			}
		}
	}
	p, err := Load(zap.NewNop(), ProbeOptions{PinDir: pinDir})
	report("load", err)
	if err == nil {
		defer p.Close()
		cookies, err := p.Reconcile(netns.NsHandle(3))
		report("scan", err)
		owners, err := p.Snapshot()
		// Count only the owners of the scanned namespace: the programs see every
		// listener of the host, and other tests may run ztunnels of their own.
		mine := 0
		for _, o := range owners {
			if len(cookies) == 1 && o.NetnsCookie == cookies[0] {
				mine++
			}
		}
		if err == nil && mine != len(DefaultPorts) {
			err = fmt.Errorf("%d owners in the scanned namespace (of %d), want %d", mine, len(owners), len(DefaultPorts))
		}
		report("snapshot", err)
	}
	ns, err := netns.GetFromPath("/proc/" + ztPID + "/ns/net")
	if err == nil {
		ns.Close()
	}
	report("proc-netns", err)
	_, err = ProcessPodUID("/proc", func() uint32 { n, _ := strconv.Atoi(ztPID); return uint32(n) }())
	report("proc-cgroup", err)
	return 0
}

// TestLeastPrivilege runs the agent's kernel-side steps as root limited to the capability
// bounding set of the DaemonSet, and with each capability left out in turn, to show which
// step needs which. CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON in the kernel's checks
// (bpf_capable, perfmon_capable), so leaving out one of those two alone changes nothing.
func TestLeastPrivilege(t *testing.T) {
	requirePrivileges(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	tree := newCgroupTree(t)
	a := newPod(t, "bookinfo/a")
	z := startZtunnel(t, tree, "1-18-0", []*pod{a}, DefaultPorts)
	z.listen(t)

	tests := []struct {
		name string
		caps []string
		fail []string // steps expected to fail; the others must succeed
	}{
		// The agent finds pod namespaces by the CRI's bind mounts, which it may open;
		// /proc/<pid>/ns/net of a more privileged process needs SYS_PTRACE, which the
		// DaemonSet does not grant.
		{"the DaemonSet's capabilities do all but /proc/<pid>/ns/net of a more privileged process", agentCaps, []string{"proc-netns"}},
		{"SYS_PTRACE adds /proc/<pid>/ns/net of a more privileged process", append(slices.Clone(agentCaps), "sys_ptrace"), nil},
		{"without SYS_ADMIN no setns: no scan; without it BPF+PERFMON still load", []string{"bpf", "perfmon"}, []string{"scan", "proc-netns"}},
		{"without BPF, SYS_ADMIN and PERFMON nothing loads", []string{"sys_ptrace"}, []string{"load"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, opts := newProbe(t) // a bpffs for the pins, mounted by the unrestricted test
			bounding := "-all"
			for _, c := range tt.caps {
				bounding += ",+" + c
			}
			fd, err := dupFile(a.ns)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--", os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), privCheckEnv+"="+opts.PinDir, privCheckEnv+"_PID="+strconv.Itoa(z.cmd.Process.Pid))
			cmd.ExtraFiles = []*os.File{fd}
			out, err := cmd.Output()
			fd.Close()
			if err != nil {
				t.Fatalf("privilege check: %v\n%s", err, out)
			}
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				step, result, _ := strings.Cut(line, " ")
				got[step] = result
			}
			bit := map[string]uint{"sys_ptrace": 19, "sys_admin": 21, "perfmon": 38, "bpf": 39}
			var want uint64
			for _, c := range tt.caps {
				want |= 1 << bit[c]
			}
			if eff, err := strconv.ParseUint(got["capeff"], 16, 64); err != nil || eff != want {
				t.Fatalf("child's effective capabilities %q, want %016x", got["capeff"], want)
			}
			for _, step := range []string{"load", "scan", "snapshot", "proc-netns", "proc-cgroup"} {
				r, ran := got[step]
				wantFail := false
				for _, f := range tt.fail {
					wantFail = wantFail || f == step
				}
				switch {
				case !ran && (step == "scan" || step == "snapshot") && got["load"] != "ok":
					// not reached after a failed load
				case !ran:
					t.Errorf("step %s did not run:\n%s", step, out)
				case wantFail && r == "ok":
					t.Errorf("step %s succeeded with %v, want it refused", step, tt.caps)
				case !wantFail && r != "ok" && !(step == "snapshot" && got["scan"] != "ok"):
					t.Errorf("step %s with %v: %s", step, tt.caps, r)
				}
			}
		})
	}
}
