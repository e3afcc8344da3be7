package orchestrator_test

import (
	"bytes"
	"context"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/ztcanary/ztcanary/orchestrator"
)

// A CPU profile tells the reconcile passes' CPU (and that of the goroutines they
// start) from the rest, as the benchmark reads it.
func TestProfileTellsReconcileWorkFromTheRest(t *testing.T) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		t.Skipf("a CPU profile is already running: %v", err)
	}
	spin := func(d time.Duration) {
		var sink uint64
		for end := time.Now().Add(d); time.Now().Before(end); {
			for i := uint64(0); i < 1<<12; i++ {
				sink += i * i
			}
		}
		_ = sink
	}
	orchestrator.Labelled(context.Background(), func(context.Context) {
		done := make(chan struct{})
		go func() { spin(300 * time.Millisecond); close(done) }() // as driveNodes' goroutines
		spin(300 * time.Millisecond)
		<-done
	})
	spin(300 * time.Millisecond)
	pprof.StopCPUProfile()
	p, err := profile.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	c := splitCPU(p)
	// 600 ms of CPU under the label, 300 ms outside (fewer on a busy machine: the
	// test asks only that both are seen and the labelled side is the larger).
	if c.reconcile < 100*time.Millisecond || c.total-c.reconcile < 50*time.Millisecond || c.reconcile < c.total-c.reconcile {
		t.Fatalf("profile of %s: %s reconcile, %s outside; want about 600 ms and 300 ms", c.total, c.reconcile, c.total-c.reconcile)
	}
}
