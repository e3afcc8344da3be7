package simnet

import (
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestServerIsReachableFromTheHostAndCleanedUp(t *testing.T) {
	var name string
	t.Run("serve", func(t *testing.T) {
		s := Start(t, 1, 8080, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "hello from the namespace")
		}))
		name = s.NetNS
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + s.IP + ":8080/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "hello from the namespace" {
			t.Errorf("body %q", b)
		}
	})
	if name == "" {
		return // skipped
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), name) {
		t.Errorf("namespace %s left behind", name)
	}
}
