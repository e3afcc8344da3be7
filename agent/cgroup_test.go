package agent

import (
	"errors"
	"strings"
	"testing"
)

func TestPodUIDFromCgroupPath(t *testing.T) {
	const uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	under := strings.ReplaceAll(uid, "-", "_")
	tests := []struct {
		name, path, want string
		ok               bool
	}{
		{"systemd driver, besteffort container", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + under + ".slice/cri-containerd-abc.scope", uid, true},
		{"systemd driver, guaranteed pod slice", "/kubepods.slice/kubepods-pod" + under + ".slice", uid, true},
		{"cgroupfs driver container", "/kubepods/burstable/pod" + uid + "/0123456789abcdef", uid, true},
		{"cgroupfs driver pod", "/kubepods/pod" + uid, uid, true},
		{"kind: innermost pod wins", "/kubelet.slice/kubepods/pod11111111-2222-3333-4444-555555555555/x/kubepods/pod" + uid + "/c", uid, true},
		{"not a kubepods path", "/system.slice/pod" + uid + ".slice", "", false},
		{"pod segment must end the name", "/kubepods/pod" + uid + "x/c", "", false},
		{"host process", "/user.slice/user-0.slice/session-1.scope", "", false},
		{"root", "/", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := PodUIDFromCgroupPath(tt.path)
			if got != tt.want || ok != tt.ok {
				t.Errorf("PodUIDFromCgroupPath(%q) = %q, %v; want %q, %v", tt.path, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	const uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	tests := []struct {
		name    string
		in      string
		want    []CgroupLine
		wantErr bool
		podUID  string
	}{
		{
			name: "hybrid node: v1 controllers and the unified line",
			in:   "12:memory:/kubepods/besteffort/pod" + uid + "/c1\n1:name=systemd:/kubepods/besteffort/pod" + uid + "/c1\n0::/kubepods/besteffort/pod" + uid + "/c1\n",
			want: []CgroupLine{
				{12, []string{"memory"}, "/kubepods/besteffort/pod" + uid + "/c1"},
				{1, []string{"name=systemd"}, "/kubepods/besteffort/pod" + uid + "/c1"},
				{0, nil, "/kubepods/besteffort/pod" + uid + "/c1"},
			},
			podUID: uid,
		},
		{
			name:   "pure v1 node: pod found in a v1 hierarchy",
			in:     "4:cpu,cpuacct:/kubepods/pod" + uid + "/c\n3:pids:/\n",
			want:   []CgroupLine{{4, []string{"cpu", "cpuacct"}, "/kubepods/pod" + uid + "/c"}, {3, []string{"pids"}, "/"}},
			podUID: uid,
		},
		{
			name: "v2 host process",
			in:   "0::/user.slice\n",
			want: []CgroupLine{{0, nil, "/user.slice"}},
		},
		{name: "path with colons is kept whole", in: "0::/a:b\n", want: []CgroupLine{{0, nil, "/a:b"}}},
		{name: "two fields are refused", in: "0:/x\n", wantErr: true},
		{name: "non-numeric id is refused", in: "x::/\n", wantErr: true},
		{name: "relative path is refused", in: "0::x\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseProcCgroup([]byte(tt.in))
			if tt.wantErr {
				if !errors.Is(err, ErrMalformedProcCgroup) {
					t.Fatalf("err = %v, want ErrMalformedProcCgroup", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d lines %+v, want %+v", len(got), got, tt.want)
			}
			for i := range got {
				if got[i].HierarchyID != tt.want[i].HierarchyID || got[i].Path != tt.want[i].Path ||
					strings.Join(got[i].Controllers, ",") != strings.Join(tt.want[i].Controllers, ",") {
					t.Errorf("line %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
			uid, ok := PodUIDFromProcCgroup(got)
			if uid != tt.podUID || ok != (tt.podUID != "") {
				t.Errorf("PodUIDFromProcCgroup = %q, %v; want %q", uid, ok, tt.podUID)
			}
		})
	}
}

// FuzzParseProcCgroup: never panics, and what it accepts survives a print/parse round trip.
func FuzzParseProcCgroup(f *testing.F) {
	f.Add([]byte("0::/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-1.scope\n"))
	f.Add([]byte("12:memory:/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/c\n1:name=systemd:/\n0::/\n"))
	f.Add([]byte("1:cpu,cpuacct:/a:b:c\n"))
	f.Add([]byte(":::\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines, err := ParseProcCgroup(data)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, l := range lines {
			b.WriteString(strings.Join([]string{itoa(l.HierarchyID), strings.Join(l.Controllers, ","), l.Path}, ":"))
			b.WriteByte('\n')
		}
		again, err := ParseProcCgroup([]byte(b.String()))
		if err != nil {
			t.Fatalf("reparse of %q: %v", b.String(), err)
		}
		if len(again) != len(lines) {
			t.Fatalf("reparse gave %d lines, want %d", len(again), len(lines))
		}
		for _, l := range lines {
			if uid, ok := PodUIDFromCgroupPath(l.Path); ok && len(uid) != 36 {
				t.Fatalf("pod uid %q from %q", uid, l.Path)
			}
		}
	})
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}
