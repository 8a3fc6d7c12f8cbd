package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd/inittest"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestControllerCommands runs qx-ctl controller against a vDC under init's real
// control socket (inittest): show, a refused upgrade (exit 1, nothing written), a
// stage into slot b, and show again; and a vDC without init (the degraded show,
// the upgrade's exit 5).
func TestControllerCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs PostgreSQL and a vDC")
	}
	in := inittest.Start(t, inittest.Options{Image: quantix.ImageQvDC, Version: "2.0.0", DataDir: t.TempDir()})
	log := &syncbuf.Buffer{}
	v := vdctest.Start(t, vdctest.Options{Log: log, TrustedKeysFiles: []string{in.TrustedKeysFile()}, Version: "2.0.0", InitSocket: in.Socket})
	l := &lab{t: t, v: v, vdcLog: log}
	t.Setenv(envURL, v.URL)
	t.Setenv(envToken, v.AdminToken)
	t.Setenv(envTokenFile, "")

	if r := l.must("controller", "show"); !strings.Contains(r.stdout, "release: qvdc 2.0.0") ||
		!strings.Contains(r.stdout, "booted: slot a, state good") || !strings.Contains(r.stdout, "slot b: empty") {
		t.Errorf("controller show after install:\n%s", r)
	}
	l.must("releases", "upload", in.Bundle(quantix.ImageQvDC, "1.0.0", 4096, true))
	l.must("releases", "upload", in.Bundle(quantix.ImageQvDC, "2.1.0", 4096, true))
	if r := l.ctl("controller", "upgrade", "qvdc-1.0.0"); r.code != exitFailure || !strings.Contains(r.stderr, "never goes back") {
		t.Errorf("controller upgrade to an older release: %s, want exit 1 saying so", r)
	}
	if r := l.ctl("controller", "upgrade", "qvdc-9.9.9"); r.code != exitNotFound {
		t.Errorf("controller upgrade to an unknown release: %s, want exit 3", r)
	}
	if _, err := os.Stat(filepath.Join(in.ESP, filepath.FromSlash(quantix.ESPSlotFile(quantix.SlotB, quantix.SlotKernel)))); err == nil {
		t.Fatal("a refused upgrade wrote slot b")
	}
	r := l.must("controller", "upgrade", "qvdc-2.1.0", "-o", "json")
	var u quantix.ControllerUpgrade
	decodeStrict(t, r.stdout, &u)
	if u.Staged.Slot != quantix.SlotB || u.Staged.Version != "2.1.0" || u.Rebooting {
		t.Errorf("controller upgrade -o json = %+v, want 2.1.0 staged into slot b, no reboot", u)
	}
	if r := l.must("controller", "show"); !strings.Contains(r.stdout, "slot b: qvdc 2.1.0 [3 tries left]") ||
		!strings.Contains(r.stdout, "next boot: slot b") || !strings.Contains(r.stdout, "staged") {
		t.Errorf("controller show after the stage:\n%s", r)
	}
	if n := in.Count(string(quantix.Reboot)); n != 0 {
		t.Errorf("controller upgrade without --activate asked init to reboot %d times", n)
	}

	// Without init: the degraded show, and the upgrade is unavailable.
	w := vdctest.Start(t, vdctest.Options{Log: log, TrustedKeysFiles: []string{in.TrustedKeysFile()}, Version: "2.0.0"})
	t.Setenv(envURL, w.URL)
	t.Setenv(envToken, w.AdminToken)
	if r := l.must("controller", "show"); !strings.Contains(r.stdout, "slots:   none: this vDC does not run under qx-init") {
		t.Errorf("controller show without init:\n%s", r)
	}
	l.must("releases", "upload", in.Bundle(quantix.ImageQvDC, "2.1.0", 4096, true))
	if r := l.ctl("controller", "upgrade", "qvdc-2.1.0", "--activate"); r.code != exitUnreachable || !strings.Contains(r.stderr, "does not run under qx-init") ||
		strings.Contains(r.stderr, "is the vDC running") {
		t.Errorf("controller upgrade without init: %s, want exit 5 saying why", r)
	}
}
