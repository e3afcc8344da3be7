//go:build !linux

package orchestrator

import "time"

// threadCPUTime: not measured outside Linux.
func threadCPUTime() (time.Duration, bool) { return 0, false }
