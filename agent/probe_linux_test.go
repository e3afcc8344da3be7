package agent

import (
	"strings"
	"testing"
	"time"
)

// podCapture reads the probe's maps and reports pods.
func report(t testing.TB, p *Probe, revs map[uint64]string, pods ...*pod) NodeReport {
	t.Helper()
	owners, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	m := map[uint64]string{}
	for _, pd := range pods {
		m[pd.cookie] = pd.name
	}
	return BuildReport(owners, byCgroup(revs), m, DefaultPorts)
}

func describe(rep NodeReport) string {
	var b strings.Builder
	for _, p := range rep.Pods {
		b.WriteString(p.Pod + "=" + p.Capture.String())
		for _, pc := range p.Ports {
			b.WriteString(" " + pc.Capture.String())
		}
		b.WriteString("; ")
	}
	return b.String()
}

// waitFor polls cond until it holds or within passes, and returns how long it took.
func waitFor(t testing.TB, within time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v; last state: %s", what, within, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func accepts(rep NodeReport, podName string, port uint16, rev string) uint64 {
	for _, p := range rep.Pods {
		if p.Pod != podName {
			continue
		}
		for _, pc := range p.Ports {
			if pc.Port == port {
				return pc.Accepts[rev]
			}
		}
	}
	return 0
}

func TestEachPodAttributedToItsRevision(t *testing.T) {
	requirePrivileges(t)
	p, _ := newProbe(t)
	tree := newCgroupTree(t)
	a, b := newPod(t, "bookinfo/a"), newPod(t, "bookinfo/b")
	z := startZtunnel(t, tree, "1-18-0", []*pod{a, b}, DefaultPorts)
	z.listen(t)
	revs := revisions(t, tree, z)

	a.dial(t, 15006, 10)
	b.dial(t, 15001, 4)
	b.dial(t, 15008, 3)
	waitFor(t, time.Second, "accepts counted", func() (bool, string) {
		rep := report(t, p, revs, a, b)
		ok := accepts(rep, a.name, 15006, "1-18-0") == 10 && accepts(rep, b.name, 15001, "1-18-0") == 4 &&
			accepts(rep, b.name, 15008, "1-18-0") == 3
		return ok, describe(rep)
	})
	rep := report(t, p, revs, a, b)
	for _, pc := range rep.Pods {
		if pc.Capture.String() != "Single(1-18-0)" {
			t.Errorf("pod %s captured by %s, want Single(1-18-0)", pc.Pod, pc.Capture)
		}
		for _, port := range pc.Ports {
			for _, o := range port.Owners {
				if int(o.TGID) != z.cmd.Process.Pid || o.Listeners != 1 || o.Bound.IsZero() {
					t.Errorf("pod %s port %d owner %+v: want tgid %d, 1 listener, a bind time", pc.Pod, port.Port, o, z.cmd.Process.Pid)
				}
			}
		}
	}
	if v := Judge(rep, "1-18-0", false); !v.OK {
		t.Errorf("verdict: %v", v.Reasons)
	}
	if v := Judge(rep, "1-18-1", false); v.OK {
		t.Error("verdict against another revision is OK")
	}
}

func TestTwoRevisionsOnOneNodeIsAViolation(t *testing.T) {
	requirePrivileges(t)
	p, _ := newProbe(t)
	tree := newCgroupTree(t)
	a, b := newPod(t, "bookinfo/a"), newPod(t, "bookinfo/b")
	z1 := startZtunnel(t, tree, "1-18-0", []*pod{a}, DefaultPorts)
	z2 := startZtunnel(t, tree, "1-18-1", []*pod{b}, DefaultPorts)
	z1.listen(t)
	z2.listen(t)
	revs := revisions(t, tree, z1, z2)

	var rep NodeReport
	waitFor(t, time.Second, "both pods captured", func() (bool, string) {
		rep = report(t, p, revs, a, b)
		return describe(rep) == "bookinfo/a=Single(1-18-0) Single(1-18-0) Single(1-18-0) Single(1-18-0); bookinfo/b=Single(1-18-1) Single(1-18-1) Single(1-18-1) Single(1-18-1); ", describe(rep)
	})
	v := Judge(rep, "", false)
	if v.OK || !strings.Contains(strings.Join(v.Reasons, "\n"), "two or more ztunnel revisions capture pods of this node: 1-18-0 (1 pods), 1-18-1 (1 pods)") {
		t.Errorf("verdict = %+v, want a violation naming both revisions", v)
	}
}

func TestHandoffOldOnlyBothNewOnly(t *testing.T) {
	requirePrivileges(t)
	p, _ := newProbe(t)
	tree := newCgroupTree(t)
	a := newPod(t, "bookinfo/a")
	old := startZtunnel(t, tree, "old", []*pod{a}, DefaultPorts)
	neu := startZtunnel(t, tree, "new", []*pod{a}, DefaultPorts)
	revs := revisions(t, tree, old, neu)
	state := func(want HandoffState) func() (bool, string) {
		return func() (bool, string) {
			rep := report(t, p, revs, a)
			h := rep.Pods[0].Capture.Handoff("old", "new")
			for _, pc := range rep.Pods[0].Ports {
				if pc.Capture.Handoff("old", "new") != h {
					return false, describe(rep)
				}
			}
			return h == want, describe(rep)
		}
	}

	waitFor(t, time.Second, "none", state(HandoffNone))
	old.listen(t)
	t.Logf("old only after %v", waitFor(t, time.Second, "old only", state(HandoffOldOnly)))
	a.dial(t, 15006, 20)

	neu.listen(t)
	t.Logf("both after %v", waitFor(t, time.Second, "both", state(HandoffBoth)))
	// SO_REUSEPORT spreads new connections over both listeners by 4-tuple hash.
	a.dial(t, 15006, 64)
	var oldAtSwap uint64
	waitFor(t, time.Second, "both accept", func() (bool, string) {
		rep := report(t, p, revs, a)
		o, n := accepts(rep, a.name, 15006, "old"), accepts(rep, a.name, 15006, "new")
		oldAtSwap = o
		return o+n == 84 && o > 20 && n > 0, describe(rep)
	})

	old.close(t)
	t.Logf("new only after %v", waitFor(t, time.Second, "new only", state(HandoffNewOnly)))
	n0 := accepts(report(t, p, revs, a), a.name, 15006, "new")
	a.dial(t, 15006, 10)
	waitFor(t, time.Second, "only new accepts", func() (bool, string) {
		rep := report(t, p, revs, a)
		return accepts(rep, a.name, 15006, "new") == n0+10 && accepts(rep, a.name, 15006, "old") == oldAtSwap, describe(rep)
	})
	for _, pc := range report(t, p, revs, a).Pods[0].Ports {
		for _, o := range pc.Owners {
			if revs[o.CgroupID] == "old" && (o.Closed.IsZero() || o.Listening()) {
				t.Errorf("old owner of port %d: %+v, want closed", pc.Port, o)
			}
		}
	}
	neu.close(t)
	waitFor(t, time.Second, "none after both closed", state(HandoffNone))
}

func TestListenersBoundBeforeTheAgentAreFound(t *testing.T) {
	requirePrivileges(t)
	tree := newCgroupTree(t)
	a := newPod(t, "bookinfo/a")
	z := startZtunnel(t, tree, "1-18-0", []*pod{a}, DefaultPorts)
	z.listen(t)
	revs := revisions(t, tree, z)

	p, _ := newProbe(t)
	if got := describe(report(t, p, revs, a)); !strings.HasPrefix(got, "bookinfo/a=None") {
		t.Fatalf("before the scan: %s, want None (the tracepoint saw nothing)", got)
	}
	cookies, err := p.Reconcile(a.ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(cookies) != 1 || cookies[0] != a.cookie {
		t.Fatalf("scan cookies %v, want [%d]", cookies, a.cookie)
	}
	rep := report(t, p, revs, a)
	if got := rep.Pods[0].Capture.String(); got != "Single(1-18-0)" {
		t.Fatalf("after the scan: %s", describe(rep))
	}
	a.dial(t, 15008, 5)
	waitFor(t, time.Second, "accepts after scan", func() (bool, string) {
		rep := report(t, p, revs, a)
		return accepts(rep, a.name, 15008, "1-18-0") == 5, describe(rep)
	})
	// A second scan changes nothing.
	if _, err := p.Reconcile(a.ns); err != nil {
		t.Fatal(err)
	}
	if got := report(t, p, revs, a).Pods[0].Capture.String(); got != "Single(1-18-0)" {
		t.Fatalf("after a second scan: %s", got)
	}
}

func TestAgentRestartKeepsCounts(t *testing.T) {
	requirePrivileges(t)
	p, opts := newProbe(t)
	tree := newCgroupTree(t)
	a := newPod(t, "bookinfo/a")
	old := startZtunnel(t, tree, "old", []*pod{a}, DefaultPorts)
	neu := startZtunnel(t, tree, "new", []*pod{a}, DefaultPorts)
	old.listen(t)
	revs := revisions(t, tree, old, neu)
	a.dial(t, 15001, 7)
	waitFor(t, time.Second, "7 accepts", func() (bool, string) {
		rep := report(t, p, revs, a)
		return accepts(rep, a.name, 15001, "old") == 7, describe(rep)
	})

	if err := p.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	// While the agent is down: connections go uncounted, and a handoff happens.
	a.dial(t, 15001, 3)
	neu.listen(t)
	old.close(t)

	p2 := loadProbe(t, opts)
	t.Cleanup(func() {
		if err := p2.Unpin(); err != nil {
			t.Errorf("unpin: %v", err)
		}
	})
	rep := report(t, p2, revs, a)
	if got := accepts(rep, a.name, 15001, "old"); got != 7 {
		t.Errorf("after restart: old accepted %d, want the 7 counted before", got)
	}
	if _, err := p2.Reconcile(a.ns); err != nil {
		t.Fatal(err)
	}
	rep = report(t, p2, revs, a)
	if got := rep.Pods[0].Capture.String(); got != "Single(new)" {
		t.Fatalf("after restart and scan: %s, want Single(new)", describe(rep))
	}
	a.dial(t, 15001, 2)
	waitFor(t, time.Second, "counting again", func() (bool, string) {
		rep := report(t, p2, revs, a)
		return accepts(rep, a.name, 15001, "new") == 2 && accepts(rep, a.name, 15001, "old") == 7, describe(rep)
	})
}

func TestVanishedNamespaceIsDropped(t *testing.T) {
	requirePrivileges(t)
	p, _ := newProbe(t)
	tree := newCgroupTree(t)
	a, b := newPod(t, "bookinfo/a"), newPod(t, "bookinfo/b")
	za := startZtunnel(t, tree, "1-18-0", []*pod{a}, DefaultPorts)
	zb := startZtunnel(t, tree, "1-18-0", []*pod{b}, DefaultPorts)
	za.listen(t)
	zb.listen(t)
	count := func(cookie uint64) int {
		owners, err := p.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, o := range owners {
			if o.NetnsCookie == cookie {
				n++
			}
		}
		return n
	}
	waitFor(t, time.Second, "owners recorded", func() (bool, string) {
		return count(a.cookie) == 3 && count(b.cookie) == 3, ""
	})

	// Pod b goes away: its ztunnel lets go (closing the listeners) and the namespace is freed.
	zb.close(t)
	if err := b.ns.Close(); err != nil {
		t.Fatal(err)
	}
	live := map[uint64]bool{a.cookie: true}
	n, err := p.GC(live, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// n may count owners of other tests' namespaces too (the programs see the whole
	// host, and GC keeps only the live set): at least b's three.
	if n < 3 || count(b.cookie) != 0 || count(a.cookie) != 3 {
		t.Errorf("GC deleted %d; left %d owners of the vanished pod, %d of the live one; want at least 3, 0, 3", n, count(b.cookie), count(a.cookie))
	}

	// Closed owners are kept for a while, then collected.
	za.close(t)
	waitFor(t, time.Second, "owners of a closed", func() (bool, string) {
		owners, _ := p.Snapshot()
		for _, o := range owners {
			if o.NetnsCookie == a.cookie && o.Listening() {
				return false, ""
			}
		}
		return true, ""
	})
	// GC's count may include owners of other tests' namespaces (not in live): judge
	// a's owners by what is left.
	if _, err := p.GC(live, time.Now().Add(-time.Hour)); err != nil || count(a.cookie) != 3 {
		t.Errorf("GC of recently closed owners: %v; %d of a's owners left, want 3", err, count(a.cookie))
	}
	if n, err := p.GC(live, time.Now().Add(time.Second)); err != nil || n < 3 || count(a.cookie) != 0 {
		t.Errorf("GC of closed owners deleted %d (%v), %d of a's left; want at least 3 deleted, 0 left", n, err, count(a.cookie))
	}
}
