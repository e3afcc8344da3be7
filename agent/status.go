package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// Attribution says which ztunnel pod an owner's cgroup belongs to.
type Attribution struct {
	// ZtunnelOf maps a cgroup id to the ztunnel pod it belongs to.
	ZtunnelOf map[uint64]ZtunnelPod
	// PodCgroup maps a ztunnel pod UID to its pod cgroup id.
	PodCgroup map[string]uint64
	// ByTGID is the fallback for cgroup v1 nodes: the ztunnel pod of a listening process.
	ByTGID func(tgid uint32) (ZtunnelPod, bool)
}

// Ztunnel returns the ztunnel pod of an owner.
func (a Attribution) Ztunnel(o Owner) (ZtunnelPod, bool) {
	if z, ok := a.ZtunnelOf[o.CgroupID]; ok {
		return z, true
	}
	if a.ByTGID != nil && o.TGID != 0 {
		return a.ByTGID(o.TGID)
	}
	return ZtunnelPod{}, false
}

// RevisionOf maps owners to revisions through their ztunnel pod.
func (a Attribution) RevisionOf() RevisionOf {
	return func(o Owner) (string, bool) {
		z, ok := a.Ztunnel(o)
		if !ok {
			return "", false
		}
		return z.Revision, true
	}
}

// BuildStatus turns a node view and a report of the maps into a NodeCapture status and its
// verdict against the node's revision label.
func BuildStatus(v NodeView, rep NodeReport, attr Attribution, now time.Time) ztv1.NodeCaptureStatus {
	ts := metav1.NewTime(now)
	st := ztv1.NodeCaptureStatus{ObservedAt: &ts, NodeRevision: v.NodeRevision}
	zrevs := map[string]bool{}
	for _, z := range v.Ztunnels {
		st.Ztunnels = append(st.Ztunnels, ztv1.ZtunnelPod{Namespace: z.Namespace, Name: z.Name, UID: z.UID,
			Revision: z.Revision, CgroupID: int64(attr.PodCgroup[z.UID])})
		zrevs[z.Revision] = true
	}
	byName := map[string]PodCapture{}
	for _, p := range rep.Pods {
		byName[p.Pod] = p
	}
	revOf := attr.RevisionOf()
	for _, ap := range v.Ambient {
		pc := ztv1.PodCapture{Namespace: ap.Namespace, Name: ap.Name, UID: ap.UID, State: ztv1.CaptureUnknown}
		p, seen := byName[ap.Key()]
		if seen {
			pc.State, pc.CapturedBy = podState(p, revOf)
			for _, port := range p.Ports {
				apc := ztv1.PortCapture{Port: int32(port.Port)}
				for _, o := range port.Owners {
					l := ztv1.Listener{CgroupID: int64(o.CgroupID), TGID: int32(o.TGID), Listening: o.Listening(), Accepted: int64(o.Accepts)}
					if z, ok := attr.Ztunnel(o); ok {
						l.Revision, l.Ztunnel = z.Revision, z.Name
					}
					if !o.Bound.IsZero() {
						t := metav1.NewTime(o.Bound.Truncate(time.Second))
						l.BoundAt = &t
					}
					if !o.Closed.IsZero() && !o.Listening() {
						t := metav1.NewTime(o.Closed.Truncate(time.Second))
						l.ClosedAt = &t
					}
					apc.Listeners = append(apc.Listeners, l)
				}
				pc.Ports = append(pc.Ports, apc)
			}
		}
		st.Pods = append(st.Pods, pc)
	}

	var reasons []string
	unresolved := 0
	for _, ap := range v.Ambient {
		if _, ok := byName[ap.Key()]; !ok {
			unresolved++
		}
	}
	verdict := Judge(rep, v.NodeRevision, false)
	switch {
	case len(v.Ambient) > 0 && len(v.Ztunnels) == 0:
		st.Verdict = ztv1.VerdictNoZtunnel
		reasons = append(reasons, fmt.Sprintf("%d ambient pods but no ztunnel pod on the node", len(v.Ambient)))
	case len(zrevs) > 1 || len(verdict.Revisions) > 1:
		st.Verdict = ztv1.VerdictMultipleRevisions
		reasons = append(reasons, fmt.Sprintf("ztunnel pods of revisions %s; capturing: %s", strings.Join(sortedKeys(zrevs), ", "), strings.Join(verdict.Revisions, ", ")))
		reasons = append(reasons, verdict.Reasons...)
	case unresolved > 0:
		st.Verdict = ztv1.VerdictUnknown
		reasons = append(reasons, fmt.Sprintf("network namespace of %d ambient pods not found yet", unresolved))
	case !verdict.OK:
		st.Verdict = ztv1.VerdictMismatch
		reasons = append(reasons, verdict.Reasons...)
	default:
		st.Verdict = ztv1.VerdictMatch
		reasons = append(reasons, fmt.Sprintf("all %d ambient pods captured by %s", len(v.Ambient), v.NodeRevision))
	}
	const maxMessage = 1024
	st.Message = strings.Join(reasons, "; ")
	if len(st.Message) > maxMessage {
		st.Message = st.Message[:maxMessage-3] + "..."
	}
	return st
}

// ConditionVerified is the NodeCapture condition that is True when the verdict is Match.
const ConditionVerified = "Verified"

// VerifiedCondition states the verdict as a condition (reason: the verdict).
func VerifiedCondition(st ztv1.NodeCaptureStatus) metav1.Condition {
	c := metav1.Condition{Type: ConditionVerified, Status: metav1.ConditionFalse, Reason: string(st.Verdict), Message: st.Message}
	if st.Verdict == ztv1.VerdictMatch {
		c.Status = metav1.ConditionTrue
	}
	if c.Reason == "" {
		c.Reason = string(ztv1.VerdictUnknown)
	}
	return c
}

// podState maps a pod's capture to the API's state and capturedBy (oldest first).
func podState(p PodCapture, revOf RevisionOf) (ztv1.CaptureState, string) {
	for _, r := range p.Capture.Revisions {
		if r == UnknownRevision {
			return ztv1.CaptureUnknown, strings.Join(p.Capture.Revisions, ",")
		}
	}
	switch p.Capture.Kind {
	case KindNone:
		return ztv1.CaptureNone, ""
	case KindSingle:
		return ztv1.CaptureSingle, p.Capture.Revisions[0]
	case KindBoth:
		return ztv1.CaptureBoth, strings.Join(oldestFirst(p, revOf), ",")
	default:
		return ztv1.CaptureUnknown, strings.Join(p.Capture.Revisions, ",")
	}
}

// oldestFirst orders a pod's capturing revisions by when their listeners were first bound;
// listeners bound before the agent started (zero time) count as oldest.
func oldestFirst(p PodCapture, revOf RevisionOf) []string {
	first := map[string]time.Time{}
	seen := map[string]bool{}
	for _, port := range p.Ports {
		for _, o := range port.Owners {
			r, ok := revOf(o)
			if !ok || !o.Listening() {
				continue
			}
			if !seen[r] || o.Bound.Before(first[r]) {
				first[r], seen[r] = o.Bound, true
			}
		}
	}
	revs := append([]string(nil), p.Capture.Revisions...)
	sort.SliceStable(revs, func(i, j int) bool {
		if !first[revs[i]].Equal(first[revs[j]]) {
			return first[revs[i]].Before(first[revs[j]])
		}
		return revs[i] < revs[j]
	})
	return revs
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
