package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestTrafficTestCommand(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := "v1"
		if n.Add(1)%10 == 0 || r.Header.Get("traffic") == "test" {
			v = "v2"
		}
		w.Header().Set("x-version", v)
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr error
		wantOut string
	}{
		{"matching weight passes", []string{"--expect-canary-weight", "10"}, nil, "consistent with the expected weight"},
		{"wrong weight fails the gate", []string{"--expect-canary-weight", "30"}, ErrGateFailed, "NOT consistent"},
		{"test header gives all canary", []string{"--header", "traffic=test", "--expect-canary-weight", "100"}, nil, "v2             1000"},
		{"malformed header is refused", []string{"--header", "traffic"}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.Store(0)
			cmd := NewRootCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetArgs(append([]string{"traffic-test", "--url", srv.URL, "-n", "1000", "-c", "1", "--version-header", "x-version", "--canary-version", "v2"}, tc.args...))
			err := cmd.ExecuteContext(context.Background())
			if tc.wantOut == "" {
				if err == nil || !strings.Contains(err.Error(), "want name=value") {
					t.Fatalf("got %v, want a usage error", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v\n%s", err, tc.wantErr, out.String())
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output lacks %q:\n%s", tc.wantOut, out.String())
			}
		})
	}
}
