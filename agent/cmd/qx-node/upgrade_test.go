package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/internal/inittest"
	"github.com/quantix/quantix/agent/nodeos"
)

// TestUpgradeCommands: qx-node upgrade status prints init's slots and the last
// rollback; stage hands the folder to init and prints its answer or refusal;
// activate refuses while nothing is staged and otherwise asks init to reboot.
func TestUpgradeCommands(t *testing.T) {
	in := inittest.Start(t)
	st := quantix.SlotsStatus{Booted: "a", State: quantix.SlotRolledBack, Order: []string{"a", "b"}, Next: "a",
		RolledBackFrom: "b", Reason: "gate agent: not ready within 5m0s",
		Slots: []quantix.SlotInfo{{Slot: "a", Good: true, Image: quantix.ImageQuantixOS, Version: "1.0"}, {Slot: "b", Image: quantix.ImageQuantixOS, Version: "2.0"}}}
	in.SetSlots(st)
	data := t.TempDir()
	os.MkdirAll(filepath.Join(data, nodeos.UpgradeDir), 0o755)
	os.WriteFile(filepath.Join(data, nodeos.StateFile), []byte(`{"upgrade":"up-1","release":"rel-2","version":"2.0","phase":"failed",`+
		`"error":"rolled back to 1.0 in slot a","at":"2026-12-04T01:00:00Z"}`), 0o600)
	qx := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"upgrade", "--init-socket", in.Socket, "--data-dir", data}, args...), &out, io.Discard)
		return out.String(), err
	}

	out, err := qx("status")
	for _, want := range []string{"booted: slot a, state rolled-back", "slot a: quantix-os 1.0 [booted, good]", "slot b: quantix-os 2.0",
		"next boot: slot a (order a b)", "last rollback: from slot b: gate agent: not ready within 5m0s",
		"vDC order: upgrade up-1, release rel-2 (2.0): failed since 2026-12-04T01:00:00Z: rolled back to 1.0 in slot a"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("upgrade status = %q, %v; want it to say %q", out, err, want)
		}
	}

	if _, err := qx("activate"); err == nil || !strings.Contains(err.Error(), "nothing is staged") {
		t.Errorf("activate with nothing staged = %v, want a refusal", err)
	}
	if n := in.Count(string(quantix.Reboot)); n != 0 {
		t.Fatalf("activate with nothing staged asked for %d reboots", n)
	}

	in.SetStage(func(dir string) (quantix.Staged, error) {
		if dir != "/srv/bundle" {
			return quantix.Staged{}, fmt.Errorf("bundle %s: SHA256SUMS.sig is not signed by a key this image trusts", dir)
		}
		return quantix.Staged{Slot: "b", Image: quantix.ImageQuantixOS, Version: "2.1", SignedBy: "release-key", Seconds: 1.5}, nil
	})
	if _, err := qx("stage", "/srv/other"); err == nil || !strings.Contains(err.Error(), "bundle /srv/other: SHA256SUMS.sig is not signed by a key this image trusts") {
		t.Errorf("stage of a refused bundle = %v, want init's refusal", err)
	}
	out, err = qx("stage", "/srv/bundle")
	if err != nil || !strings.Contains(out, "staged quantix-os 2.1 (signed by release-key) into slot b") || !strings.Contains(out, "qx-node upgrade activate") {
		t.Errorf("stage = %q, %v", out, err)
	}

	st.Next, st.Order = "b", []string{"b", "a"}
	st.Slots[1].Version, st.Slots[1].Tries = "2.1", quantix.SlotMaxTries
	in.SetSlots(st)
	out, err = qx("activate")
	if err != nil || !strings.Contains(out, "rebooting into slot b (quantix-os 2.1)") || in.Count(string(quantix.Reboot)) != 1 {
		t.Errorf("activate = %q, %v with %d reboot requests; want one", out, err, in.Count(string(quantix.Reboot)))
	}

	in.SetSlotsError("not an A/B install (booted from the live medium)")
	if _, err := qx("status"); err == nil || !strings.Contains(err.Error(), "not an A/B install") {
		t.Errorf("status on a live boot = %v, want init's answer", err)
	}
	if _, err := qx("frobnicate"); !errors.Is(err, quantix.ErrConfig) {
		t.Errorf("an unknown upgrade command = %v, want a usage error", err)
	}
}
