package agent

import (
	"strings"
	"testing"
)

// byCgroup returns a RevisionOf that looks the owner's cgroup id up in revs.
func byCgroup(revs map[uint64]string) RevisionOf {
	return func(o Owner) (string, bool) {
		r, ok := revs[o.CgroupID]
		return r, ok
	}
}

func owner(ns uint64, port uint16, cg uint64, listeners int32, accepts uint64) Owner {
	return Owner{NetnsCookie: ns, Port: port, CgroupID: cg, Listeners: listeners, Accepts: accepts}
}

func TestClassifyAndHandoff(t *testing.T) {
	revs := byCgroup(map[uint64]string{100: "old", 200: "new", 300: "other"})
	tests := []struct {
		name    string
		owners  []Owner
		want    string
		handoff HandoffState
	}{
		{"nobody listens", nil, "None", HandoffNone},
		{"closed owners do not count", []Owner{owner(1, 15006, 100, 0, 9)}, "None", HandoffNone},
		{"old only", []Owner{owner(1, 15006, 100, 1, 0)}, "Single(old)", HandoffOldOnly},
		{"both during a handoff", []Owner{owner(1, 15006, 100, 1, 0), owner(1, 15006, 200, 2, 0)}, "Both(new,old)", HandoffBoth},
		{"new only after old closed", []Owner{owner(1, 15006, 100, 0, 5), owner(1, 15006, 200, 1, 0)}, "Single(new)", HandoffNewOnly},
		{"a third revision", []Owner{owner(1, 15006, 300, 1, 0)}, "Single(other)", HandoffOther},
		{"unknown cgroup", []Owner{owner(1, 15006, 999, 1, 0)}, "Single(<unknown>)", HandoffOther},
		{"three revisions", []Owner{owner(1, 1, 100, 1, 0), owner(1, 1, 200, 1, 0), owner(1, 1, 300, 1, 0)}, "Many(new,old,other)", HandoffOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Classify(tt.owners, revs)
			if c.String() != tt.want {
				t.Errorf("Classify = %s, want %s", c, tt.want)
			}
			if h := c.Handoff("old", "new"); h != tt.handoff {
				t.Errorf("Handoff = %q, want %q", h, tt.handoff)
			}
		})
	}
}

func TestBuildReportAndJudge(t *testing.T) {
	revs := byCgroup(map[uint64]string{100: "r1", 200: "r2"})
	ports := []uint16{15001, 15006, 15008}
	all := func(ns, cg uint64) []Owner {
		var os []Owner
		for _, p := range ports {
			os = append(os, owner(ns, p, cg, 1, 3))
		}
		return os
	}
	pods := map[uint64]string{1: "ns/a", 2: "ns/b"}
	tests := []struct {
		name      string
		owners    []Owner
		expected  string
		handoff   bool
		wantPods  string
		wantOK    bool
		wantInWhy string
	}{
		{"every pod on r1", append(all(1, 100), all(2, 100)...), "r1", false, "ns/a=Single(r1) ns/b=Single(r1)", true, ""},
		{"two revisions on one node is a violation", append(all(1, 100), all(2, 200)...), "", false, "ns/a=Single(r1) ns/b=Single(r2)", false, "two or more ztunnel revisions"},
		{"wrong revision", append(all(1, 100), all(2, 100)...), "r2", false, "ns/a=Single(r1) ns/b=Single(r1)", false, "expected r2"},
		{"pod without listener", all(1, 100), "r1", false, "ns/a=Single(r1) ns/b=None", false, "pod ns/b: no single ztunnel"},
		{"one port missing is not a capture", all(1, 100)[:2], "r1", false, "ns/a=None ns/b=None", false, "pod ns/a"},
		{"handoff tolerated when asked", append(append(all(1, 100), all(1, 200)...), all(2, 200)...), "r2", true, "ns/a=Both(r1,r2) ns/b=Single(r2)", true, ""},
		{"a ztunnel that bound only some ports does not capture yet", append(all(1, 100), append(all(2, 100), all(1, 200)[:1]...)...), "r1", false, "ns/a=Single(r1) ns/b=Single(r1)", true, ""},
		{"handoff refused otherwise", append(append(all(1, 100), all(1, 200)...), all(2, 200)...), "r2", false, "ns/a=Both(r1,r2) ns/b=Single(r2)", false, "at once"},
		{"owners of other namespaces are ignored", append(all(1, 100), append(all(2, 100), all(3, 200)...)...), "r1", false, "ns/a=Single(r1) ns/b=Single(r1)", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := BuildReport(tt.owners, revs, pods, ports)
			var got []string
			for _, p := range rep.Pods {
				got = append(got, p.Pod+"="+p.Capture.String())
			}
			if g := strings.Join(got, " "); g != tt.wantPods {
				t.Errorf("pods = %s, want %s", g, tt.wantPods)
			}
			v := Judge(rep, tt.expected, tt.handoff)
			if v.OK != tt.wantOK {
				t.Errorf("verdict OK = %v, want %v (%v)", v.OK, tt.wantOK, v.Reasons)
			}
			if tt.wantInWhy != "" && !strings.Contains(strings.Join(v.Reasons, "\n"), tt.wantInWhy) {
				t.Errorf("reasons %q lack %q", v.Reasons, tt.wantInWhy)
			}
		})
	}
	rep := BuildReport(append(all(1, 100), owner(1, 15006, 200, 0, 7)), revs, pods, ports)
	if got := rep.Pods[0].Ports[1].Accepts; got["r1"] != 3 || got["r2"] != 7 {
		t.Errorf("accepts per revision = %v, want r1:3 r2:7", got)
	}
}
