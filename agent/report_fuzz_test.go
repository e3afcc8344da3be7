package agent

import (
	"encoding/binary"
	"slices"
	"sort"
	"testing"
)

// fuzzOwners decodes fuzz bytes into owners, 8 bytes each: netns (cookies 1-4, where 4
// is not an ambient pod of the node), port (the three capture ports or 8080), cgroup id
// (1-6: three revisions, two cgroups of revision a, one cgroup of no known ztunnel),
// listeners (0-2) and accepts.
func fuzzOwners(data []byte) []Owner {
	ports := []uint16{15001, 15006, 15008, 8080}
	var owners []Owner
	for len(data) >= 8 {
		owners = append(owners, Owner{
			NetnsCookie: uint64(data[0]%4) + 1,
			Port:        ports[data[1]%4],
			CgroupID:    uint64(data[2]%6) + 1,
			Listeners:   int32(data[3] % 3),
			Accepts:     uint64(binary.LittleEndian.Uint32(data[4:8])),
		})
		data = data[8:]
	}
	return owners
}

var fuzzRevisions = map[uint64]string{1: "a", 2: "a", 3: "b", 4: "c", 5: "b"} // 6: unknown

// FuzzBuildReportAndJudge checks the agent's report and verdict against an independent
// reading of the same owners: a pod is captured by the revisions that listen on all
// three capture ports of its namespace; owners of other namespaces and ports are left
// out; accepts add up per port and revision; and Judge accepts a node exactly when
// every pod is captured by the expected revision alone (or, in a handoff, by it and one
// other).
func FuzzBuildReportAndJudge(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 5, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 2, 1, 1, 0, 0, 0, 1, 1, 2, 1, 0, 0, 0, 0, 2, 2, 3, 2, 9, 0, 0, 0})
	f.Add([]byte{3, 0, 5, 2, 0, 0, 0, 0, 1, 3, 3, 1, 7, 0, 0, 0})
	f.Add([]byte{})
	pods := map[uint64]string{1: "bookinfo/p1", 2: "bookinfo/p2", 3: "bookinfo/p3"}
	capture := []uint16{15001, 15006, 15008}
	f.Fuzz(func(t *testing.T, data []byte) {
		owners := fuzzOwners(data)
		revOf := byCgroup(fuzzRevisions)
		rep := BuildReport(owners, revOf, pods, capture)

		if len(rep.Pods) != len(pods) || !sort.SliceIsSorted(rep.Pods, func(i, j int) bool { return rep.Pods[i].Pod < rep.Pods[j].Pod }) {
			t.Fatalf("report has %d pods (want %d, sorted): %+v", len(rep.Pods), len(pods), rep.Pods)
		}
		// The independent reading: revision → ports it listens on, per namespace.
		want := map[uint64][]string{}
		accepts := map[uint64]map[uint16]map[string]uint64{}
		for cookie := range pods {
			listening := map[string]map[uint16]bool{}
			accepts[cookie] = map[uint16]map[string]uint64{}
			for _, o := range owners {
				if o.NetnsCookie != cookie || !slices.Contains(capture, o.Port) {
					continue
				}
				r, ok := fuzzRevisions[o.CgroupID]
				if !ok {
					r = UnknownRevision
				}
				if accepts[cookie][o.Port] == nil {
					accepts[cookie][o.Port] = map[string]uint64{}
				}
				accepts[cookie][o.Port][r] += o.Accepts
				if o.Listeners > 0 {
					if listening[r] == nil {
						listening[r] = map[uint16]bool{}
					}
					listening[r][o.Port] = true
				}
			}
			for r, ports := range listening {
				if len(ports) == len(capture) {
					want[cookie] = append(want[cookie], r)
				}
			}
			sort.Strings(want[cookie])
		}
		okStrict, okHandoff := true, true
		for _, p := range rep.Pods {
			w := want[p.NetnsCookie]
			if pods[p.NetnsCookie] != p.Pod {
				t.Fatalf("pod %s reported with cookie %d", p.Pod, p.NetnsCookie)
			}
			if !slices.Equal(p.Capture.Revisions, w) && !(len(w) == 0 && len(p.Capture.Revisions) == 0) {
				t.Fatalf("pod %s: captured by %v, the owners say %v", p.Pod, p.Capture.Revisions, w)
			}
			wantKind := map[int]Kind{0: KindNone, 1: KindSingle, 2: KindBoth}[len(w)]
			if len(w) > 2 {
				wantKind = KindMany
			}
			if p.Capture.Kind != wantKind {
				t.Fatalf("pod %s: kind %s for %v", p.Pod, p.Capture.Kind, w)
			}
			if len(p.Ports) != len(capture) {
				t.Fatalf("pod %s reports %d ports", p.Pod, len(p.Ports))
			}
			for _, pc := range p.Ports {
				for r, n := range accepts[p.NetnsCookie][pc.Port] {
					if pc.Accepts[r] != n {
						t.Fatalf("pod %s port %d: %d accepts for %s, owners say %d", p.Pod, pc.Port, pc.Accepts[r], r, n)
					}
				}
			}
			okStrict = okStrict && slices.Equal(w, []string{"a"})
			okHandoff = okHandoff && (slices.Equal(w, []string{"a"}) || (len(w) == 2 && slices.Contains(w, "a")))
		}
		if v := Judge(rep, "a", false); v.OK != okStrict {
			t.Fatalf("Judge(a) = %v %v, the owners say %v: %v", v.OK, v.Reasons, okStrict, want)
		}
		if v := Judge(rep, "a", true); v.OK != okHandoff {
			t.Fatalf("Judge(a, handoff) = %v %v, the owners say %v: %v", v.OK, v.Reasons, okHandoff, want)
		}
	})
}

// FuzzPodUIDFromCgroupPath: never panics; a UID it finds is a kubelet pod UID (36
// characters, dashes at the right places) that appears in the path in one of the two
// spellings the cgroup drivers use.
func FuzzPodUIDFromCgroupPath(f *testing.F) {
	f.Add("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-ab.scope")
	f.Add("/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/0123")
	f.Add("/kubelet.slice/kubepods/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/kubepods/pod11111111-2222-3333-4444-555555555555")
	f.Add("/system.slice/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
	f.Fuzz(func(t *testing.T, path string) {
		uid, ok := PodUIDFromCgroupPath(path)
		if !ok {
			if uid != "" {
				t.Fatalf("no pod, yet uid %q", uid)
			}
			return
		}
		if len(uid) != 36 || uid[8] != '-' || uid[13] != '-' || uid[18] != '-' || uid[23] != '-' {
			t.Fatalf("uid %q from %q is not a pod UID", uid, path)
		}
		under := []byte(uid)
		for i, c := range under {
			if c == '-' {
				under[i] = '_'
			}
		}
		if !containsAny(path, "pod"+uid, "pod"+string(under)) {
			t.Fatalf("uid %q is not in %q", uid, path)
		}
	})
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				return true
			}
		}
	}
	return false
}
