package sidecar

import (
	"context"

	"go.uber.org/zap"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

// advanceRestarts takes each workload of a namespace one action further towards the
// to proxy: record a restart (at most maxConcurrentRestarts in flight), write it,
// wait for its rollout, mark it done. It returns what is still awaited, or why the
// gate failed (a new pod without the to proxy).
func (d *Driver) advanceRestarts(ctx context.Context, u *ztv1.RevisionUpgrade, n *ztv1.NamespaceStatus, ws []*sidecarWorkload) (waiting []string, failure string, err error) {
	target := restartValue(u, u.Spec.To)
	limit := maxRestarts(u)
	recorded := map[string]int{}
	inFlight := 0
	for k, rec := range n.Workloads {
		recorded[rec.Kind+"/"+rec.Name] = k
		if !rec.Done {
			inFlight++
		}
	}
	for _, w := range ws {
		k, isRecorded := recorded[w.key()]
		if !isRecorded {
			if !needsMove(w, u.Spec.To) {
				continue
			}
			if inFlight >= limit {
				waiting = append(waiting, w.key()+": queued")
				continue
			}
			// Record the restart, and what to write back on rollback, before it.
			n.Workloads = append(n.Workloads, ztv1.RestartRecord{Kind: w.kind, Name: w.name, Original: templateRestart(w.template)})
			inFlight++
			waiting = append(waiting, w.key()+": restart recorded")
			continue
		}
		rec := &n.Workloads[k]
		if rec.Done {
			continue
		}
		state, msg := judgeForward(w, target, u.Spec.To)
		switch state {
		case restartNeeded:
			if err := d.setRestart(ctx, w, &target); err != nil {
				return nil, "", err
			}
			d.Log.Info("workload restarted", zap.String("upgrade", u.Name), zap.String("namespace", n.Name), zap.String("workload", w.key()), zap.String("revision", u.Spec.To))
			waiting = append(waiting, w.key()+": restarting")
		case restartFailed:
			return nil, msg, nil
		case restartRolling:
			if err := d.replaceOnDelete(ctx, w, &target); err != nil {
				return nil, "", err
			}
			waiting = append(waiting, msg)
		case restartDone:
			rec.Done = true
			inFlight--
		}
	}
	// A recorded workload that no longer exists has nothing left to restart.
	live := map[string]bool{}
	for _, w := range ws {
		live[w.key()] = true
	}
	for k := range n.Workloads {
		if !live[n.Workloads[k].Kind+"/"+n.Workloads[k].Name] {
			n.Workloads[k].Done = true
		}
	}
	return waiting, "", nil
}

// maxRestarts is the bound on workloads restarting at once in a namespace.
func maxRestarts(u *ztv1.RevisionUpgrade) int {
	if n := int(u.Spec.Sidecar.MaxConcurrentRestarts); n > 0 {
		return n
	}
	return 2
}
