package agent

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// UnknownRevision names the revision of a listener whose cgroup belongs to no known ztunnel
// pod.
const UnknownRevision = "<unknown>"

// Owner is one owner of a capture port in one pod network namespace: the sockets of one
// cgroup (v2) listening on that port there.
type Owner struct {
	NetnsCookie uint64
	Port        uint16
	CgroupID    uint64
	// TGID and Comm name the process that last called listen(); zero and empty when the
	// listener was bound before the agent attached and was found by a scan.
	TGID uint32
	Comm string
	// Listeners is the number of listening sockets the owner holds now.
	Listeners int32
	// Accepts counts the connections its listeners accepted.
	Accepts uint64
	// Bound is when a socket of the owner last started listening (zero: before the agent
	// attached); Closed when its listener count last dropped to zero (zero: never).
	Bound, Closed, LastAccept time.Time
}

// Listening reports whether the owner holds at least one listening socket.
func (o Owner) Listening() bool { return o.Listeners > 0 }

// Kind classifies who captures a pod or a port.
type Kind string

// Kinds of capture.
const (
	// KindNone: nobody listens; new connections are refused.
	KindNone Kind = "None"
	// KindSingle: exactly one revision listens.
	KindSingle Kind = "Single"
	// KindBoth: two revisions listen, as during a handoff.
	KindBoth Kind = "Both"
	// KindMany: more than two revisions listen.
	KindMany Kind = "Many"
)

// Capture is the classification of a set of owners.
type Capture struct {
	Kind Kind
	// Revisions that listen, sorted.
	Revisions []string
}

func (c Capture) String() string {
	if c.Kind == KindNone {
		return string(KindNone)
	}
	return fmt.Sprintf("%s(%s)", c.Kind, strings.Join(c.Revisions, ","))
}

// HandoffState says where a capture stands in a handoff from one revision to another.
type HandoffState string

// Handoff states.
const (
	HandoffNone    HandoffState = "none"
	HandoffOldOnly HandoffState = "old only"
	HandoffBoth    HandoffState = "both"
	HandoffNewOnly HandoffState = "new only"
	// HandoffOther: a revision that is neither from nor to listens.
	HandoffOther HandoffState = "other"
)

// Handoff places the capture in a handoff from revision from to revision to.
func (c Capture) Handoff(from, to string) HandoffState {
	has := func(r string) bool { return slices.Contains(c.Revisions, r) }
	for _, r := range c.Revisions {
		if r != from && r != to {
			return HandoffOther
		}
	}
	switch {
	case has(from) && has(to):
		return HandoffBoth
	case has(from):
		return HandoffOldOnly
	case has(to):
		return HandoffNewOnly
	default:
		return HandoffNone
	}
}

// RevisionOf maps an owner to the revision of the ztunnel it belongs to; ok is false when
// the owner belongs to no known ztunnel pod.
type RevisionOf func(o Owner) (rev string, ok bool)

// Classify tells which revisions listen among owners.
func Classify(owners []Owner, revOf RevisionOf) Capture {
	set := map[string]bool{}
	for _, o := range owners {
		if !o.Listening() {
			continue
		}
		r, ok := revOf(o)
		if !ok {
			r = UnknownRevision
		}
		set[r] = true
	}
	revs := make([]string, 0, len(set))
	for r := range set {
		revs = append(revs, r)
	}
	sort.Strings(revs)
	c := Capture{Revisions: revs}
	switch len(revs) {
	case 0:
		c.Kind = KindNone
	case 1:
		c.Kind = KindSingle
	case 2:
		c.Kind = KindBoth
	default:
		c.Kind = KindMany
	}
	return c
}

// PortCapture is who captures one port of one pod.
type PortCapture struct {
	Port    uint16
	Capture Capture
	// Accepts per revision (UnknownRevision for unattributed owners), closed owners
	// included.
	Accepts map[string]uint64
	Owners  []Owner
}

// PodCapture is who captures one pod network namespace.
type PodCapture struct {
	Pod         string
	NetnsCookie uint64
	// Capture over all capture ports: the revisions that listen on every one of them.
	Capture Capture
	Ports   []PortCapture
}

// NodeReport is the capture of every pod network namespace of a node.
type NodeReport struct {
	Pods []PodCapture
}

// BuildReport groups owners by pod network namespace and port and classifies them. pods maps
// the netns cookies of the node's ambient pods to their names: those pods are reported even
// when nothing listens in them, and owners in other namespaces are left out. ports lists the
// capture ports; each pod reports each of them.
func BuildReport(owners []Owner, revOf RevisionOf, pods map[uint64]string, ports []uint16) NodeReport {
	byNS := map[uint64]map[uint16][]Owner{}
	for _, o := range owners {
		if _, ok := pods[o.NetnsCookie]; !ok {
			continue
		}
		if byNS[o.NetnsCookie] == nil {
			byNS[o.NetnsCookie] = map[uint16][]Owner{}
		}
		byNS[o.NetnsCookie][o.Port] = append(byNS[o.NetnsCookie][o.Port], o)
	}
	var rep NodeReport
	for cookie, name := range pods {
		pc := PodCapture{Pod: name, NetnsCookie: cookie}
		// A revision captures the pod only if it listens on every capture port: a ztunnel
		// that bound some ports of a pod does not serve it yet.
		full := map[string]int{}
		for _, port := range ports {
			os := byNS[cookie][port]
			sort.Slice(os, func(i, j int) bool { return os[i].CgroupID < os[j].CgroupID })
			pcap := PortCapture{Port: port, Capture: Classify(os, revOf), Accepts: map[string]uint64{}, Owners: os}
			for _, o := range os {
				r, ok := revOf(o)
				if !ok {
					r = UnknownRevision
				}
				pcap.Accepts[r] += o.Accepts
			}
			for _, r := range pcap.Capture.Revisions {
				full[r]++
			}
			pc.Ports = append(pc.Ports, pcap)
		}
		var revs []string
		for r, n := range full {
			if n == len(ports) {
				revs = append(revs, r)
			}
		}
		sort.Strings(revs)
		pc.Capture = Capture{Revisions: revs}
		switch len(revs) {
		case 0:
			pc.Capture.Kind = KindNone
		case 1:
			pc.Capture.Kind = KindSingle
		case 2:
			pc.Capture.Kind = KindBoth
		default:
			pc.Capture.Kind = KindMany
		}
		rep.Pods = append(rep.Pods, pc)
	}
	sort.Slice(rep.Pods, func(i, j int) bool { return rep.Pods[i].Pod < rep.Pods[j].Pod })
	return rep
}

// Verdict judges a node report against the revision the node is labelled with.
type Verdict struct {
	OK bool
	// Revisions that capture at least one pod of the node, sorted.
	Revisions []string
	// Reasons lists what is wrong, one line each, for humans.
	Reasons []string
}

// Judge checks that every pod of the report is captured by exactly the expected revision
// (when expected is empty, by one and the same revision). With allowHandoff a pod held by
// the expected revision and one other at once is accepted.
func Judge(rep NodeReport, expected string, allowHandoff bool) Verdict {
	v := Verdict{OK: true}
	count := map[string]int{}
	for _, p := range rep.Pods {
		for _, r := range p.Capture.Revisions {
			count[r]++
		}
		switch p.Capture.Kind {
		case KindNone:
			v.Reasons = append(v.Reasons, fmt.Sprintf("pod %s: no single ztunnel holds all capture ports", p.Pod))
		case KindSingle:
			if expected != "" && p.Capture.Revisions[0] != expected {
				v.Reasons = append(v.Reasons, fmt.Sprintf("pod %s: captured by %s, expected %s", p.Pod, p.Capture.Revisions[0], expected))
			}
		case KindBoth:
			if !allowHandoff || (expected != "" && !slices.Contains(p.Capture.Revisions, expected)) {
				v.Reasons = append(v.Reasons, fmt.Sprintf("pod %s: captured by %s at once", p.Pod, strings.Join(p.Capture.Revisions, " and ")))
			}
		default:
			v.Reasons = append(v.Reasons, fmt.Sprintf("pod %s: captured by %s at once", p.Pod, strings.Join(p.Capture.Revisions, ", ")))
		}
	}
	for r := range count {
		v.Revisions = append(v.Revisions, r)
	}
	sort.Strings(v.Revisions)
	if len(v.Revisions) > 1 && !allowHandoff {
		parts := make([]string, 0, len(v.Revisions))
		for _, r := range v.Revisions {
			parts = append(parts, fmt.Sprintf("%s (%d pods)", r, count[r]))
		}
		v.Reasons = append(v.Reasons, "two or more ztunnel revisions capture pods of this node: "+strings.Join(parts, ", "))
	}
	v.OK = len(v.Reasons) == 0
	return v
}
