//go:build !linux

package sim

import (
	"errors"
	"os/exec"
	"syscall"
)

// The simulated cluster runs on Linux only; these stubs keep `go vet ./...` working
// on other systems.

func setProcAttrs(*exec.Cmd, bool) {}

func lockFile(string) (func(), error) { return nil, errors.New("the simulated cluster needs Linux") }

func signal(int, syscall.Signal) error { return errors.New("the simulated cluster needs Linux") }

func alive(int, string) bool { return false }
