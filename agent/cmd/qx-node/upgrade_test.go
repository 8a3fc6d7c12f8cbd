package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/nodeos"
	"github.com/quantix/quantix/services/initd/inittest"
)

// TestUpgradeCommands against init's real control socket: qx-node upgrade status
// prints the slots (and the vDC order the agent works on); activate refuses while
// nothing is staged; stage hands a bundle folder to init and prints its answer or
// its refusal; activate then asks init to reboot; after a rollback status says why.
func TestUpgradeCommands(t *testing.T) {
	data := t.TempDir()
	in := inittest.Start(t, inittest.Options{Version: "1.0.0", DataDir: data})
	qx := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"upgrade", "--init-socket", in.Socket, "--data-dir", data}, args...), &out, io.Discard)
		return out.String(), err
	}
	expect := func(out string, err error, want ...string) {
		t.Helper()
		for _, w := range want {
			if err != nil || !strings.Contains(out, w) {
				t.Errorf("output %q, %v; want it to say %q", out, err, w)
			}
		}
	}

	out, err := qx("status")
	expect(out, err, "booted: slot a, state good", "slot a: quantix-os 1.0.0 [booted, good]", "slot b: empty", "next boot: slot a (order a b)")
	if _, err := qx("activate"); err == nil || !strings.Contains(err.Error(), "nothing is staged") {
		t.Errorf("activate with nothing staged = %v, want a refusal", err)
	}
	if n := in.Count(string(quantix.Reboot)); n != 0 {
		t.Fatalf("activate with nothing staged asked for %d reboots", n)
	}

	if _, err := qx("stage", in.Bundle(quantix.ImageQuantixOS, "2.0.0", 4096, false)); err == nil || !strings.Contains(err.Error(), "not from a key this image trusts") {
		t.Errorf("stage of a bundle of an untrusted key = %v, want init's refusal", err)
	}
	out, err = qx("stage", in.Bundle(quantix.ImageQuantixOS, "2.0.0", 4096, true))
	expect(out, err, "staged quantix-os 2.0.0 (signed by release) into slot b", "qx-node upgrade activate")
	out, err = qx("status")
	expect(out, err, "slot b: quantix-os 2.0.0 [3 tries left]", "next boot: slot b (order b a)")
	out, err = qx("activate")
	expect(out, err, "rebooting into slot b (quantix-os 2.0.0)")
	if n := in.Count(string(quantix.Reboot)); n != 1 {
		t.Errorf("activate asked for %d reboots, want 1", n)
	}

	in.RollBack("1.0.0")
	os.MkdirAll(filepath.Join(data, nodeos.UpgradeDir), 0o755)
	os.WriteFile(filepath.Join(data, nodeos.StateFile), []byte(`{"upgrade":"up-1","release":"rel-2","version":"2.0.0","phase":"failed",`+
		`"error":"rolled back to 1.0.0 in slot a","at":"2026-12-04T01:00:00Z"}`), 0o600)
	out, err = qx("status")
	expect(out, err, "booted: slot a, state rolled-back", "last rollback: from slot b: the trial of slot b (2.0.0) ended without a verdict",
		"vDC order: upgrade up-1, release rel-2 (2.0.0): failed since 2026-12-04T01:00:00Z: rolled back to 1.0.0 in slot a")
	if _, err := qx("frobnicate"); !errors.Is(err, quantix.ErrConfig) {
		t.Errorf("an unknown upgrade command = %v, want a usage error", err)
	}

	live := inittest.Start(t, inittest.Options{Version: "1.0.0", DataDir: data, Live: true})
	err = run(context.Background(), []string{"upgrade", "--init-socket", live.Socket, "status"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "a live boot") {
		t.Errorf("status on a live boot = %v, want init's answer", err)
	}
}
