// Package upgradetest makes signed release bundles for tests (docs/design.md §16).
package upgradetest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/medium"
	"github.com/quantix/quantix/installer/medium/mediumtest"
	"github.com/quantix/quantix/upgrade"
)

// Keypair makes a release key named name; it returns the public key and the
// private key's file.
func Keypair(t testing.TB, name string) (quantix.PublicKey, string) {
	t.Helper()
	base := filepath.Join(t.TempDir(), name)
	pub, err := upgrade.Keygen(base, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub, base + ".key"
}

// Sign signs the bundle folder dir with the private key in keyFile.
func Sign(t testing.TB, dir, keyFile string) {
	t.Helper()
	k, err := upgrade.LoadPrivateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := upgrade.Sign(dir, k); err != nil {
		t.Fatal(err)
	}
}

// Bundle writes a bundle folder for image and version whose ISO holds kernel
// and initrd, signed with keyFile ("" leaves it unsigned), and returns it.
func Bundle(t testing.TB, image, version string, kernel, initrd []byte, keyFile string) string {
	t.Helper()
	dir := t.TempDir()
	mediumtest.WriteISO(t, filepath.Join(dir, image+".iso"), map[string][]byte{medium.Kernel: kernel, medium.Initrd: initrd})
	m, _ := json.Marshal(map[string]any{"image": image, "version": version, "volume_label": "QUANTIX"})
	if err := os.WriteFile(filepath.Join(dir, image+".manifest.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	if keyFile != "" {
		Sign(t, dir, keyFile)
	}
	return dir
}
