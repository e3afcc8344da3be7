package agent

import (
	"strings"
	"testing"
	"time"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func TestBuildStatus(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	z1 := ZtunnelPod{Namespace: "istio-system", Name: "ztunnel-a", UID: "u1", Revision: "r1"}
	z2 := ZtunnelPod{Namespace: "istio-system", Name: "ztunnel-b", UID: "u2", Revision: "r2"}
	attr := Attribution{
		ZtunnelOf: map[uint64]ZtunnelPod{100: z1, 200: z2},
		PodCgroup: map[string]uint64{"u1": 10, "u2": 20},
	}
	ambient := []AmbientPod{{Namespace: "bookinfo", Name: "a", UID: "pa"}, {Namespace: "bookinfo", Name: "b", UID: "pb"}}
	pods := map[uint64]string{1: "bookinfo/a", 2: "bookinfo/b"}
	held := func(ns, cg uint64, bound time.Time) []Owner {
		var os []Owner
		for _, p := range DefaultPorts {
			os = append(os, Owner{NetnsCookie: ns, Port: p, CgroupID: cg, Listeners: 1, Bound: bound, TGID: 42})
		}
		return os
	}
	cat := func(parts ...[]Owner) []Owner {
		var out []Owner
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	early, late := now.Add(-time.Hour), now.Add(-time.Minute)
	tests := []struct {
		name      string
		view      NodeView
		pods      map[uint64]string
		owners    []Owner
		verdict   ztv1.Verdict
		podStates string
		message   string
	}{
		{"every pod on the node's revision", NodeView{NodeRevision: "r1", Ztunnels: []ZtunnelPod{z1}, Ambient: ambient}, pods,
			cat(held(1, 100, early), held(2, 100, early)), ztv1.VerdictMatch, "a=Single(r1) b=Single(r1)", "all 2 ambient pods captured by r1"},
		{"a pod captured by nobody", NodeView{NodeRevision: "r1", Ztunnels: []ZtunnelPod{z1}, Ambient: ambient}, pods,
			held(1, 100, early), ztv1.VerdictMismatch, "a=Single(r1) b=None()", "pod bookinfo/b: no single ztunnel"},
		{"captured by the other revision", NodeView{NodeRevision: "r2", Ztunnels: []ZtunnelPod{z1}, Ambient: ambient}, pods,
			cat(held(1, 100, early), held(2, 100, early)), ztv1.VerdictMismatch, "a=Single(r1) b=Single(r1)", "expected r2"},
		{"handoff: both, old first", NodeView{NodeRevision: "r1", Ztunnels: []ZtunnelPod{z1, z2}, Ambient: ambient}, pods,
			cat(held(1, 200, late), held(1, 100, early), held(2, 100, early)), ztv1.VerdictMultipleRevisions, "a=Both(r1,r2) b=Single(r1)", "ztunnel pods of revisions r1, r2"},
		{"handoff the other way: old first still", NodeView{NodeRevision: "r2", Ztunnels: []ZtunnelPod{z1, z2}, Ambient: ambient}, pods,
			cat(held(1, 200, early), held(1, 100, late), held(2, 200, early)), ztv1.VerdictMultipleRevisions, "a=Both(r2,r1) b=Single(r2)", "pod bookinfo/a"},
		{"no ztunnel", NodeView{NodeRevision: "r1", Ambient: ambient}, pods, nil, ztv1.VerdictNoZtunnel, "a=None() b=None()", "no ztunnel pod"},
		{"a pod whose namespace is not found yet", NodeView{NodeRevision: "r1", Ztunnels: []ZtunnelPod{z1}, Ambient: ambient}, map[uint64]string{1: "bookinfo/a"},
			held(1, 100, early), ztv1.VerdictUnknown, "a=Single(r1) b=Unknown()", "1 ambient pods not found"},
		{"a listener of an unknown process", NodeView{NodeRevision: "r1", Ztunnels: []ZtunnelPod{z1}, Ambient: ambient}, pods,
			cat(held(1, 100, early), held(2, 999, early)), ztv1.VerdictMultipleRevisions, "a=Single(r1) b=Unknown(<unknown>)", "<unknown>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := BuildReport(tt.owners, attr.RevisionOf(), tt.pods, DefaultPorts)
			st := BuildStatus(tt.view, rep, attr, now)
			var got []string
			for _, p := range st.Pods {
				got = append(got, p.Name+"="+string(p.State)+"("+p.CapturedBy+")")
			}
			if st.Verdict != tt.verdict || strings.Join(got, " ") != tt.podStates || !strings.Contains(st.Message, tt.message) {
				t.Errorf("got %s %q (%s), want %s %q (message containing %q)", st.Verdict, strings.Join(got, " "), st.Message, tt.verdict, tt.podStates, tt.message)
			}
			if !st.ObservedAt.Time.Equal(now) || st.NodeRevision != tt.view.NodeRevision {
				t.Errorf("observedAt %v nodeRevision %q", st.ObservedAt, st.NodeRevision)
			}
			for _, z := range st.Ztunnels {
				if z.CgroupID != int64(attr.PodCgroup[z.UID]) {
					t.Errorf("ztunnel %s cgroup %d, want %d", z.Name, z.CgroupID, attr.PodCgroup[z.UID])
				}
			}
		})
	}
}
