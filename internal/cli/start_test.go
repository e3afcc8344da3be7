package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	ztv1 "github.com/ztcanary/ztcanary/api/v1alpha1"
)

func TestStart(t *testing.T) {
	t.Run("creates the upgrade of the flags", func(t *testing.T) {
		env, c := seedWorld().env(t)
		out, err := run(t, env, append([]string{"start"}, seedFlags...)...)
		if err != nil {
			t.Fatalf("start: %v\n%s", err, out)
		}
		if want := `revisionupgrade "1-18-0-to-1-18-1" created: 1-18-0 → 1-18-1, 4 steps over 4 nodes`; !strings.Contains(out, want) {
			t.Errorf("output %q lacks %q", out, want)
		}
		u := &ztv1.RevisionUpgrade{}
		if err := c.Get(t.Context(), client.ObjectKey{Name: "1-18-0-to-1-18-1"}, u); err != nil {
			t.Fatal(err)
		}
		if u.Spec.Route == nil || u.Spec.Route.HTTPRoute.Name != "reviews" || len(u.Spec.Steps) != 4 || len(u.Spec.Workloads) != 2 {
			t.Errorf("stored spec = %+v", u.Spec)
		}
	})
	t.Run("refuses while another upgrade is in progress, writing nothing", func(t *testing.T) {
		w := seedWorld()
		w.objs = append(w.objs, upgradeObj("running", ztv1.PhaseProgressing, 1, nil))
		env, c := w.env(t)
		_, err := run(t, env, "start", "--from", fromRev, "--to", toRev)
		want := `an upgrade is in progress: revisionupgrade "running" is Progressing (step 1 of 3): let it finish (ztcanary status running --watch) or abort it (ztcanary abort running); nothing was written`
		if !errors.Is(err, ErrInProgress) || err.Error() != want {
			t.Errorf("err = %v\nwant %s", err, want)
		}
		assertUpgrades(t, c, "running")
	})
	t.Run("refuses a name in use", func(t *testing.T) {
		w := seedWorld()
		w.objs = append(w.objs, upgradeObj("1-18-0-to-1-18-1", ztv1.PhaseRolledBack, 1, nil))
		env, c := w.env(t)
		_, err := run(t, env, "start", "--from", fromRev, "--to", toRev)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `revisionupgrade "1-18-0-to-1-18-1" exists already: pick another --name`) {
			t.Errorf("err = %v", err)
		}
		assertUpgrades(t, c, "1-18-0-to-1-18-1")
	})
	t.Run("refuses what preflight refuses unless told to skip it", func(t *testing.T) {
		env, c := seedWorld().env(t)
		_, err := run(t, env, "start", "--from", fromRev, "--to", "1-19-0")
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "(IstiodMissing)") || !strings.HasSuffix(err.Error(), "nothing was written (see ztcanary plan; --skip-preflight creates it anyway)") {
			t.Errorf("err = %v", err)
		}
		assertUpgrades(t, c)
		if _, err := run(t, env, "start", "--from", fromRev, "--to", "1-19-0", "--skip-preflight"); err != nil {
			t.Errorf("--skip-preflight: %v", err)
		}
		assertUpgrades(t, c, "1-18-0-to-1-19-0")
	})
	t.Run("creates the upgrade of a file", func(t *testing.T) {
		env, c := seedWorld().env(t)
		path := filepath.Join(t.TempDir(), "u.yaml")
		yaml := "apiVersion: ztcanary.io/v1alpha1\nkind: RevisionUpgrade\nmetadata:\n  name: from-file\nspec:\n  from: 1-18-0\n  to: 1-18-1\n  steps:\n  - nodes: 100%\n"
		if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := run(t, env, "start", "-f", path); err != nil {
			t.Fatalf("start -f: %v\n%s", err, out)
		}
		assertUpgrades(t, c, "from-file")
	})
	t.Run("refuses a file that is not a RevisionUpgrade", func(t *testing.T) {
		env, c := seedWorld().env(t)
		dir := t.TempDir()
		for name, body := range map[string]string{
			"unknown field":  "apiVersion: ztcanary.io/v1alpha1\nkind: RevisionUpgrade\nmetadata: {name: x}\nspec: {from: a, to: b, stpes: []}\n",
			"wrong kind":     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
			"two documents":  "apiVersion: ztcanary.io/v1alpha1\nkind: RevisionUpgrade\nmetadata: {name: x}\n---\napiVersion: ztcanary.io/v1alpha1\nkind: RevisionUpgrade\nmetadata: {name: y}\n",
			"not even YAML:": "\t{",
		} {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := run(t, env, "start", "-f", path)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), path) {
				t.Errorf("%s: err = %v, want a refusal naming the file", name, err)
			}
		}
		assertUpgrades(t, c)
	})
}

// assertUpgrades checks the RevisionUpgrades stored are exactly names.
func assertUpgrades(t *testing.T, c client.Client, names ...string) {
	t.Helper()
	var list ztv1.RevisionUpgradeList
	if err := c.List(t.Context(), &list); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range list.Items {
		got = append(got, u.Name)
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("stored upgrades %v, want %v", got, names)
	}
}
