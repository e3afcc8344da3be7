// Package golden compares what a test produced with a committed golden file, or
// rewrites the file when the test runs with -update, as kwok's stage tests do. A
// mismatch lists the lines only in the file (-) and only in the output (+).
package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Check compares got with the file at path, or writes got there when update is set.
// source names what produced got, for the failure message.
func Check(t testing.TB, path, got string, update bool, source string) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the golden file (go test -run '^%s$' -update writes it): %v", t.Name(), err)
	}
	if string(want) != got {
		t.Errorf("%s differs from what %s says (go test -run '^%s$' -update rewrites it):\n%s", path, source, t.Name(), LineDiff(string(want), got))
	}
}

// LineDiff lists the lines only in want (-) and only in got (+), in order.
func LineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	if b.Len() == 0 {
		return "(the same lines in another order)"
	}
	return b.String()
}
