//go:build linux

package orchestrator

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The reconcile CPU counter counts the CPU a pass uses, not the time it waits
// (for the API server, for other goroutines).
func TestAccountCPUCountsCPUNotWaiting(t *testing.T) {
	before := testutil.ToFloat64(reconcileCPU)
	var sink uint64
	began := time.Now()
	accountCPU(func() {
		// Busy until the thread has used 30 ms of CPU (however busy the machine).
		start, _ := threadCPUTime()
		for i := uint64(0); ; i++ {
			sink += i * i
			if i%4096 == 0 {
				if now, _ := threadCPUTime(); now-start >= 30*time.Millisecond {
					break
				}
			}
		}
	})
	wall := time.Since(began)
	busy := testutil.ToFloat64(reconcileCPU) - before
	if busy < 0.030 || busy > wall.Seconds()+0.001 {
		t.Fatalf("a pass that spun for 30 ms of CPU in %s counted %.4f s (sink %d)", wall, busy, sink)
	}

	before = testutil.ToFloat64(reconcileCPU)
	accountCPU(func() { time.Sleep(200 * time.Millisecond) })
	if slept := testutil.ToFloat64(reconcileCPU) - before; slept > 0.02 {
		t.Fatalf("a pass that slept 200 ms counted %.4f s of CPU", slept)
	}
}
