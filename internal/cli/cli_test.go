package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestMainAsKubectlPlugin(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), "/usr/local/bin/"+PluginName, []string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "kubectl ztcanary [command]") {
		t.Errorf("plugin help does not say kubectl ztcanary:\n%s", out.String())
	}
	out.Reset()
	if code := Main(context.Background(), "ztcanary", []string{"--help"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "  ztcanary [command]") {
		t.Errorf("exit %d, help:\n%s", code, out.String())
	}
}

func TestMainReportsErrorsOnStderr(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main(context.Background(), "ztcanary", []string{"plan", "--from", "a"}, &out, &errOut)
	if code != 1 || errOut.String() != "ztcanary: refused: --from and --to are required (or -f FILE)\n" {
		t.Errorf("exit %d, stderr %q", code, errOut.String())
	}
}
