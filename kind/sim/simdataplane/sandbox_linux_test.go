package simdataplane

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// agentDaemonSet reads the agent's DaemonSet from deploy/, the manifest under test.
func agentDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	b, err := os.ReadFile("../../../deploy/agent/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatal(err)
	}
	return &ds
}

// requireRoot skips without root (fails under CI=true), and always under -short:
// make test-unit runs no test that needs root.
func requireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the sandbox needs root")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: the sandbox needs root")
		}
		t.Skip("the sandbox needs root")
	}
}

// mountShared makes dir a shared bind mount of itself (undone at cleanup).
func mountShared(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
}

// probeSandbox runs a shell in the sandbox made from ds on node-a, with a bpffs and a
// shared namespaces' folder as the node's, mounts a tmpfs in that folder once the
// shell runs (as a pod's namespace published later), and returns what the shell saw
// (key → value) and its output.
func probeSandbox(t *testing.T, ds *appsv1.DaemonSet) (map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	bpf, netns := filepath.Join(dir, "bpf"), filepath.Join(dir, "netns")
	for _, d := range []string{bpf, netns} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("bpf", bpf, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpf, unix.MNT_DETACH) })
	mountShared(t, netns)

	s, err := sandboxFor(ds, "node-a", "/bin/sh", map[string]string{"/sys/fs/bpf": bpf, "/var/run/netns": netns})
	if err != nil {
		t.Fatal(err)
	}
	late := filepath.Join(netns, "late")
	s.Args = []string{"-c", `
grep -E '^(Uid|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status | tr -s ' \t' ' '
echo "env: $NODE_NAME"
for f in /ztcanary-probe /tmp/ztcanary-probe ` + filepath.Join(dir, "probe") + `; do
	( : > $f ) 2>/dev/null && echo "write $f: ok" || echo "write $f: refused"
done
mkdir /sys/fs/cgroup/ztcanary-probe 2>/dev/null && echo "mkdir cgroup: ok" || echo "mkdir cgroup: refused"
mkdir /sys/fs/bpf/probe && echo "mkdir bpffs: ok" || echo "mkdir bpffs: refused"
i=0
while [ ! -e /var/run/netns/late/marker ] && [ $i -lt 60 ]; do sleep 0.05; i=$((i+1)); done
[ -e /var/run/netns/late/marker ] && echo "propagation: ok" || echo "propagation: missing"
`}
	var out bytes.Buffer
	cmd, err := startSandboxed(s, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", late, "tmpfs", 0, "size=16k"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(late, unix.MNT_DETACH)
	if err := os.WriteFile(filepath.Join(late, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sandboxed shell: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("sandboxed shell did not end:\n%s", out.String())
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		got[k] = strings.TrimSpace(v)
	}
	// The host is untouched: its files stay writable, the probes were not written,
	// the bpffs folder written is the node's.
	if err := os.WriteFile(filepath.Join(dir, "host-probe"), nil, 0o644); err != nil {
		t.Errorf("the host's files are no longer writable: %v", err)
	}
	for _, p := range []string{"/ztcanary-probe", "/tmp/ztcanary-probe"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was written on the host", p)
			os.Remove(p)
		}
	}
	if got["mkdir bpffs"] == "ok" {
		if err := unix.Rmdir(filepath.Join(bpf, "probe")); err != nil {
			t.Errorf("the sandbox's bpffs folder is not the node's: %v", err)
		}
	}
	got["write <host folder>"] = got["write "+filepath.Join(dir, "probe")]
	return got, out.String()
}

// TestSandboxHonoursTheDaemonSet runs a shell in the sandbox made from
// deploy/agent/daemonset.yaml and checks from inside what the agent gets: exactly the
// DaemonSet's capabilities (bounding, permitted, effective; none inheritable or
// ambient), no_new_privs, root user, its env, a read-only root filesystem (/tmp and
// the cgroup mount too), a writable bpffs, and the namespaces' folder following
// mounts the host makes after the start, because the manifest asks HostToContainer:
// without it the agent would never see pods started after it.
func TestSandboxHonoursTheDaemonSet(t *testing.T) {
	requireRoot(t)
	ds := agentDaemonSet(t)
	want, err := CapabilityMask(ds.Spec.Template.Spec.Containers[0].SecurityContext)
	if err != nil {
		t.Fatal(err)
	}
	hex := fmt.Sprintf("%016x", want)
	got, out := probeSandbox(t, ds)
	for _, kv := range [][2]string{
		{"Uid", "0 0 0 0"}, {"CapEff", hex}, {"CapPrm", hex}, {"CapBnd", hex},
		{"CapInh", "0000000000000000"}, {"CapAmb", "0000000000000000"}, {"NoNewPrivs", "1"},
		{"env", "node-a"},
		{"write /ztcanary-probe", "refused"}, {"write /tmp/ztcanary-probe", "refused"}, {"write <host folder>", "refused"},
		{"mkdir cgroup", "refused"}, {"mkdir bpffs", "ok"}, {"propagation", "ok"},
	} {
		if got[kv[0]] != kv[1] {
			t.Errorf("%s: %q, want %q", kv[0], got[kv[0]], kv[1])
		}
	}
	if t.Failed() {
		t.Logf("sandbox output:\n%s", out)
	}

	t.Run("without HostToContainer later mounts stay out", func(t *testing.T) {
		ds := ds.DeepCopy()
		for i := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
			ds.Spec.Template.Spec.Containers[0].VolumeMounts[i].MountPropagation = nil
		}
		if got, out := probeSandbox(t, ds); got["propagation"] != "missing" {
			t.Errorf("propagation %q without HostToContainer, want missing:\n%s", got["propagation"], out)
		}
	})
	t.Run("allowPrivilegeEscalation unset leaves no_new_privs off", func(t *testing.T) {
		ds := ds.DeepCopy()
		ds.Spec.Template.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = nil
		if got, out := probeSandbox(t, ds); got["NoNewPrivs"] != "0" {
			t.Errorf("NoNewPrivs %q, want 0:\n%s", got["NoNewPrivs"], out)
		}
	})
}

// TestSandboxRefusesWhatItCannotSimulate: a DaemonSet the sandbox would run
// differently from a node is refused, naming the field.
func TestSandboxRefusesWhatItCannotSimulate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*appsv1.DaemonSet)
		want   string
	}{
		{"a privileged container", func(ds *appsv1.DaemonSet) {
			p := true
			ds.Spec.Template.Spec.Containers[0].SecurityContext.Privileged = &p
		}, "privileged is true"},
		{"no hostPID", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.HostPID = false }, "hostPID is false"},
		{"an unknown capability", func(ds *appsv1.DaemonSet) {
			c := ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
			c.Add = append(c.Add, "FLY")
		}, `capabilities.add: unknown capability "FLY"`},
		{"a volume not from the host", func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Volumes[0].HostPath = nil
		}, "only hostPath volumes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := agentDaemonSet(t)
			tc.change(ds)
			_, err := sandboxFor(ds, "n", "/bin/true", nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
