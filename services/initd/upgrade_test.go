package initd

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/upgrade/upgradetest"
)

// espWithSlotA is an ESP folder as qx-install leaves it: slot a good with its
// manifest, slot b empty.
func espWithSlotA(t *testing.T, version string) string {
	esp := t.TempDir()
	if err := bootenv.OnESP(esp).Write(bootenv.Initial()); err != nil {
		t.Fatal(err)
	}
	m, _ := quantix.SlotManifestInfo{Image: quantix.ImageQuantixOS, Version: version, KernelSHA256: strings.Repeat("a", 64), InitrdSHA256: strings.Repeat("b", 64)}.Encode()
	p := filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile("a", quantix.SlotManifest)))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, m, 0o644); err != nil {
		t.Fatal(err)
	}
	return esp
}

// The slots and stage requests over init's real control socket: a bundle is
// verified against the image's and the site's keys, refused with nothing
// written, staged into the other slot as the next boot's trial, and refused
// while this boot is itself on trial or on a live boot.
func TestControlSlotsAndStage(t *testing.T) {
	esp := espWithSlotA(t, "0.1.0")
	imageKey, _ := upgradetest.Keypair(t, "image-release")
	siteKey, siteKeyFile := upgradetest.Keypair(t, "site-release")
	_, strangerFile := upgradetest.Keypair(t, "stranger")
	keys := t.TempDir()
	os.WriteFile(filepath.Join(keys, "image"), []byte(imageKey.String()+"\n"), 0o644)
	os.MkdirAll(filepath.Join(keys, "cfg"), 0o755)

	k := NewSlotKeeper("a", false)
	k.WithESP = func(fn func(string) error) error { return fn(esp) }
	k.Image, k.Version, k.DataDir, k.Log = quantix.ImageQuantixOS, "0.1.0", t.TempDir(), slog.New(slog.DiscardHandler)
	k.KeyFiles = []string{filepath.Join(keys, "image"), filepath.Join(keys, "cfg", "trusted-keys")}
	ctl := NewControl(nil, make(chan quantix.HaltAction, 1), slog.New(slog.DiscardHandler))
	ctl.Slots = k
	sock := filepath.Join(t.TempDir(), "init.sock")
	ln, err := ctl.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := quantix.InitClient{Socket: sock}
	ctx := context.Background()

	st, err := c.Slots(ctx)
	if err != nil || st.Booted != "a" || st.Trial || st.State != quantix.SlotGood || st.Next != "a" || len(st.Slots) != 2 || st.Slots[0].Version != "0.1.0" || !st.Slots[0].Good || st.Slots[1].Version != "" {
		t.Fatalf("slots after install = %+v, %v", st, err)
	}

	kernel, initrd := make([]byte, 4096), make([]byte, 8192)
	rand.Read(kernel)
	rand.Read(initrd)
	envBefore := envFiles(t, esp)
	for _, bad := range []struct{ name, dir, want string }{
		{"unsigned", upgradetest.Bundle(t, quantix.ImageQuantixOS, "0.2.0", kernel, initrd, ""), "not signed"},
		// The site key is not trusted yet.
		{"untrusted key", upgradetest.Bundle(t, quantix.ImageQuantixOS, "0.2.0", kernel, initrd, siteKeyFile), "not from a key this image trusts"},
		{"stranger", upgradetest.Bundle(t, quantix.ImageQuantixOS, "0.2.0", kernel, initrd, strangerFile), "not from a key this image trusts"},
	} {
		if _, err := c.Stage(ctx, bad.dir); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("stage %s: %v, want %q", bad.name, err, bad.want)
		}
	}
	if after := envFiles(t, esp); after != envBefore {
		t.Errorf("a refused bundle changed the environment block")
	}
	if _, err := os.Stat(filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile("b", quantix.SlotKernel)))); err == nil {
		t.Errorf("a refused bundle wrote slot b's kernel")
	}

	// The operator adds the site key on QUANTIX-CFG: now it stages.
	os.WriteFile(filepath.Join(keys, "cfg", "trusted-keys"), []byte(siteKey.String()+"\n"), 0o644)
	good := upgradetest.Bundle(t, quantix.ImageQuantixOS, "0.2.0", kernel, initrd, siteKeyFile)
	staged, err := c.Stage(ctx, good)
	if err != nil || staged.Slot != "b" || staged.Version != "0.2.0" || staged.SignedBy != "site-release" {
		t.Fatalf("stage a site-signed bundle = %+v, %v", staged, err)
	}
	if b, _ := os.ReadFile(filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile("b", quantix.SlotKernel)))); string(b) != string(kernel) {
		t.Errorf("slot b's kernel is not the bundle's")
	}
	st, err = c.Slots(ctx)
	if err != nil || st.Next != "b" || st.Slots[1].Version != "0.2.0" || st.Slots[1].Tries != quantix.SlotMaxTries || st.Slots[1].Good {
		t.Errorf("slots after staging = %+v, %v; want b next with %d tries, not good", st, err, quantix.SlotMaxTries)
	}
	if rec, err := os.ReadFile(filepath.Join(k.DataDir, "upgrade", stagedFile)); err != nil || !strings.Contains(string(rec), `version = "0.2.0"`) {
		t.Errorf("stage record: %q, %v", rec, err)
	}

	// A trial boot stages nothing until it is judged.
	k.mu.Lock()
	k.trial, k.state = true, quantix.SlotTrial
	k.mu.Unlock()
	if _, err := c.Stage(ctx, good); err == nil || !strings.Contains(err.Error(), "on trial") {
		t.Errorf("stage during a trial: %v, want a refusal", err)
	}
	// A live boot has no slots.
	ctl.Slots = nil
	if _, err := c.Slots(ctx); !errors.Is(err, quantix.ErrNotAB) {
		t.Errorf("slots on a live boot: %v, want not an A/B install", err)
	}
	if _, err := c.Stage(ctx, good); err == nil || !strings.Contains(err.Error(), "live boot") {
		t.Errorf("stage on a live boot: %v, want not an A/B install", err)
	}
}

func envFiles(t *testing.T, esp string) string {
	var s string
	for _, p := range []string{quantix.ESPEnv, quantix.ESPEnvBackup} {
		b, err := os.ReadFile(filepath.Join(esp, filepath.FromSlash(p)))
		if err != nil {
			t.Fatal(err)
		}
		s += string(b)
	}
	return s
}
