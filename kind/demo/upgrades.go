package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
	"github.com/ztcanary/ztcanary/gatewayroutes"
	"github.com/ztcanary/ztcanary/kind/seed"
)

// upgrade is a RevisionUpgrade of the demo's workers and route from one revision to
// the next, with the traffic gate when real traffic flows and agent verification
// when agents run.
func (d *demo) upgrade(name, from, to string, steps ...ztv1.Step) *ztv1.RevisionUpgrade {
	u := &ztv1.RevisionUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: ztv1.RevisionUpgradeSpec{
			From: from, To: to,
			NodeStrategy: ztv1.NodeStrategyDrain,
			Workloads:    []ztv1.WorkloadPin{{Namespace: seed.AppNamespace(from), Revision: from}, {Namespace: seed.AppNamespace(to), Revision: to}},
			Route: &ztv1.RouteSpec{
				HTTPRoute:        &ztv1.ObjectRef{Namespace: routeNamespace, Name: routeName},
				Stable:           ztv1.BackendRef{Namespace: seed.AppNamespace(from), Name: backendName, Port: backendPort},
				Canary:           ztv1.BackendRef{Namespace: seed.AppNamespace(to), Name: backendName, Port: backendPort},
				CleanUpOnSuccess: true,
			},
			Steps:       steps,
			StepTimeout: &metav1.Duration{Duration: 2 * time.Minute},
			Analysis:    ztv1.Analysis{AgentVerification: ztv1.AgentVerificationDisabled},
		},
	}
	if d.dp != nil {
		u.Spec.Analysis.AgentVerification = ztv1.AgentVerificationRequired
	}
	if d.net != nil {
		u.Spec.Analysis.TrafficTest = &ztv1.TrafficTest{
			URL: d.net.traefik.URL + "/", Requests: 200, Concurrency: 8, MinSuccessRate: 99,
			CanaryHeader: &ztv1.HeaderMatch{Name: versionHeader, Value: to},
		}
	}
	return u
}

func header() *ztv1.StepTraffic {
	return &ztv1.StepTraffic{Header: &ztv1.HeaderMatch{Name: testHeader, Value: testValue}}
}

func weight(w int32) *ztv1.StepTraffic { return &ztv1.StepTraffic{Weight: ptr.To(w)} }

// goodUpgrade moves every worker from stable to canary in four waves, each ending in
// a manual pause: the demo measures the traffic (as an operator would look at it)
// and promotes.
func (d *demo) goodUpgrade(ctx context.Context) error {
	manual := &ztv1.Pause{}
	u := d.upgrade("canary-"+canary, stable, canary,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: header(), Pause: manual},
		ztv1.Step{Nodes: intstr.FromString("50%"), Traffic: weight(10), Pause: manual},
		ztv1.Step{Nodes: intstr.FromString("75%"), Traffic: weight(50), Pause: manual},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100), Pause: manual},
	)
	d.upgradeNo = 1
	say("upgrade 1: %s → %s (Drain), four waves: 1 node + test header rule, 50%% + weight 10, 75%% + weight 50, 100%% + weight 100; each wave pauses until the demo has measured the traffic and promotes it", stable, canary)
	fmt.Println(tableHeader(stable, canary))
	if err := d.printRow(ctx, "before", stable, canary); err != nil {
		return err
	}
	if err := d.c.Create(ctx, u); err != nil {
		return fmt.Errorf("create upgrade %s: %w", u.Name, err)
	}
	end, err := d.follow(ctx, u.Name, d.promoteEachStep(ctx, func(paused *ztv1.RevisionUpgrade, i int) error {
		if err := d.printRow(ctx, fmt.Sprintf("%d/%d", i+1, len(u.Spec.Steps)), stable, canary); err != nil {
			return err
		}
		d.printAgents(ctx, paused)
		return nil
	}))
	if err != nil {
		return err
	}
	d.out.First = end.Status
	if end.Status.Phase != ztv1.PhaseSucceeded {
		return fmt.Errorf("upgrade 1 ended %s: %s", end.Status.Phase, end.Status.Message)
	}
	say("upgrade 1 succeeded; cleanUpOnSuccess left the route with only %s's backend and no test rule", canary)
	// The route has no stable backend left for a router to read: it is 100% canary.
	s, err := d.measure(ctx, canary, gatewayroutes.Split{CanaryWeight: 100}, true)
	if err != nil {
		return err
	}
	d.show(ctx, "done", stable, canary, gatewayroutes.Split{CanaryWeight: 100}, s)
	d.printNodes(ctx)
	return d.waitCaptured(ctx, end, canary)
}

// failedUpgrade tries broken, whose reviews answer 503: the traffic gate of the first
// wave fails and ztcanary rolls back. Without real traffic the broken revision's
// workloads ask for more CPU than any node has, so the wave times out instead.
func (d *demo) failedUpgrade(ctx context.Context) error {
	u := d.upgrade("canary-"+broken, canary, broken,
		ztv1.Step{Nodes: intstr.FromInt32(1), Traffic: header()},
		ztv1.Step{Nodes: intstr.FromString("100%"), Traffic: weight(100)},
	)
	if d.net != nil {
		d.net.failing[broken].Store(true)
		say("upgrade 2: %s → %s, whose reviews answer 503: the traffic gate (min. 99%% success) must stop it at the first wave", canary, broken)
	} else {
		if err := d.starveWorkloads(ctx, seed.AppNamespace(broken)); err != nil {
			return err
		}
		u.Spec.StepTimeout = &metav1.Duration{Duration: 15 * time.Second}
		say("upgrade 2: %s → %s, whose workloads ask for more CPU than any node has: the first wave must time out (15s)", canary, broken)
	}
	d.upgradeNo = 2
	labelsBefore := d.nodeLabels(ctx)
	routeBefore, err := d.routeRules(ctx)
	if err != nil {
		return err
	}
	fmt.Println(tableHeader(canary, broken))
	if err := d.printRow(ctx, "before", canary, broken); err != nil {
		return err
	}
	if err := d.c.Create(ctx, u); err != nil {
		return fmt.Errorf("create upgrade %s: %w", u.Name, err)
	}
	// While the gate analyses the first wave, look at what users get: the test
	// header's requests reach the broken canary and fail.
	measured := false
	end, err := d.follow(ctx, u.Name, func(u *ztv1.RevisionUpgrade) error {
		if measured || d.net == nil || u.Status.StepStage != "Analysing" {
			return nil
		}
		measured = true
		split, err := d.router(canary, broken).GetRoutes(ctx)
		if err != nil {
			return err
		}
		s, err := d.measureNow(ctx, broken, split, true)
		if err != nil {
			return err
		}
		d.show(ctx, "1/2", canary, broken, split, s)
		// The agents proved the wave's ztunnel swap: what fails is the release itself.
		d.printAgents(ctx, u)
		return nil
	})
	if err != nil {
		return err
	}
	d.out.Second = end.Status
	if end.Status.Phase != ztv1.PhaseRolledBack {
		return fmt.Errorf("upgrade 2 ended %s, want RolledBack: %s", end.Status.Phase, end.Status.Message)
	}
	say("upgrade 2 %s", end.Status.Message)
	if after := d.nodeLabels(ctx); after != labelsBefore {
		return fmt.Errorf("rollback left node labels %s, were %s", after, labelsBefore)
	}
	routeAfter, err := d.routeRules(ctx)
	if err != nil {
		return err
	}
	if routeAfter != routeBefore {
		return fmt.Errorf("rollback left the route's rules\n%s\nwere\n%s", routeAfter, routeBefore)
	}
	d.out.Restored = true
	say("rollback is exact: node labels (%s) and the route's rules are as before the upgrade", labelsBefore)
	if d.net != nil {
		// Even with the test header, everything goes to the stable revision again.
		s, err := d.measure(ctx, broken, gatewayroutes.Split{}, true)
		if err != nil {
			return err
		}
		d.show(ctx, "after", canary, broken, gatewayroutes.Split{}, s)
		if s.plain.CanaryShare != 0 || s.header.CanaryShare != 0 || s.plain.SuccessRate != 1 || s.header.SuccessRate != 1 {
			return fmt.Errorf("after rollback: canary share %.1f%% (%.1f%% with the test header), success %.1f%%; want all traffic on %s", 100*s.plain.CanaryShare, 100*s.header.CanaryShare, 100*s.plain.SuccessRate, canary)
		}
		say("traffic is 100%% %s again, test header or not", canary)
	}
	d.printNodes(ctx)
	return d.waitCaptured(ctx, end, canary)
}

// starveWorkloads makes a namespace's Deployments unschedulable (64 CPUs each).
func (d *demo) starveWorkloads(ctx context.Context, ns string) error {
	for _, app := range seed.Apps {
		patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":%q,"resources":{"requests":{"cpu":"64"}}}]}}}}`, app)
		if err := d.c.Patch(ctx, seed.Deployment(ns, app, seed.AppReplicas), client.RawPatch(types.StrategicMergePatchType, []byte(patch))); err != nil {
			return fmt.Errorf("patch %s/%s: %w", ns, app, err)
		}
	}
	return nil
}

// printRow measures the traffic and prints a table line for the route as it is now.
func (d *demo) printRow(ctx context.Context, step, from, to string) error {
	split, err := d.router(from, to).GetRoutes(ctx)
	if err != nil {
		return err
	}
	s, err := d.measure(ctx, to, split, split.Header != nil)
	if err != nil {
		return err
	}
	d.show(ctx, step, from, to, split, s)
	return nil
}

// show prints a table line and records the sample in the outcome.
func (d *demo) show(ctx context.Context, step, from, to string, split gatewayroutes.Split, s *sample) {
	fmt.Println(row(step, d.countNodes(ctx, from), d.countNodes(ctx, to), split, s))
	if s != nil {
		d.out.Samples = append(d.out.Samples, stepSample{Upgrade: d.upgradeNo, Step: step, Weight: split.CanaryWeight, Header: split.Header != nil, Sample: s})
	}
}

// follow prints the upgrade's progress (a line per change of phase, step or stage,
// and a reminder every 15 s of a long wait) until it ends, calling hook (if set) with
// every state it reads.
func (d *demo) follow(ctx context.Context, name string, hook func(*ztv1.RevisionUpgrade) error) (*ztv1.RevisionUpgrade, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	last, lastPrint := "", time.Now()
	for {
		u := &ztv1.RevisionUpgrade{}
		if err := d.c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
			return nil, fmt.Errorf("follow upgrade %s: %w", name, err)
		}
		st := u.Status
		line := fmt.Sprintf("%-11s step %d/%d %-15s canary nodes %d/%d", st.Phase, st.CurrentStep+1, len(u.Spec.Steps), st.StepStage, st.CanaryNodes, st.TotalNodes)
		switch {
		case st.Phase == "":
			// Not picked up yet.
		case line != last:
			fmt.Printf("      [%5.1fs] %s  %s\n", time.Since(start).Seconds(), line, st.Message)
			last, lastPrint = line, time.Now()
		case time.Since(lastPrint) > 15*time.Second:
			fmt.Printf("      [%5.1fs] still %s: %s\n", time.Since(start).Seconds(), st.StepStage, st.Message)
			lastPrint = time.Now()
		}
		switch st.Phase {
		case ztv1.PhaseSucceeded, ztv1.PhaseRolledBack, ztv1.PhaseFailed:
			return u, nil
		}
		if hook != nil {
			if err := hook(u); err != nil {
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("upgrade %s did not end: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// promoteEachStep is a follow hook: when a step waits for a manual promote, it calls
// paused with the upgrade and the step index, then promotes the step.
func (d *demo) promoteEachStep(ctx context.Context, paused func(u *ztv1.RevisionUpgrade, step int) error) func(*ztv1.RevisionUpgrade) error {
	promoted := -1
	return func(u *ztv1.RevisionUpgrade) error {
		c := meta.FindStatusCondition(u.Status.Conditions, ztv1.ConditionPaused)
		i := int(u.Status.CurrentStep)
		if u.Status.Phase != ztv1.PhasePaused || c == nil || c.Reason != ztv1.ReasonAwaitingPromote || i <= promoted {
			return nil
		}
		if err := paused(u, i); err != nil {
			return err
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, ztv1.AnnotationPromote, strconv.Itoa(i))
		if err := d.c.Patch(ctx, u, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
			return fmt.Errorf("promote step %d: %w", i, err)
		}
		promoted = i
		return nil
	}
}

// routeRules is the route's spec.rules as JSON, to compare before and after.
func (d *demo) routeRules(ctx context.Context) (string, error) {
	r, err := d.gw.GatewayV1().HTTPRoutes(routeNamespace).Get(ctx, routeName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(r.Spec.Rules)
	return string(b), err
}

func (d *demo) countNodes(ctx context.Context, rev string) int {
	var list corev1.NodeList
	if err := d.c.List(ctx, &list, client.MatchingLabels{seed.RevisionKey: rev}); err != nil {
		return -1
	}
	return len(list.Items)
}
