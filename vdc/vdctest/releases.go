package vdctest

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/quantix/quantix/upgrade"
)

// ReleaseKey is a release signing key pair for tests: Pub is a line file for
// Options.TrustedKeysFiles, Key signs bundles (ReleaseBundle).
type ReleaseKey struct{ Pub, Key string }

// NewReleaseKey makes a key pair named name (the name bundles are signed by).
func NewReleaseKey(t testing.TB, name string) ReleaseKey {
	t.Helper()
	base := filepath.Join(t.TempDir(), name)
	if _, err := upgrade.Keygen(base, nil); err != nil {
		t.Fatal(err)
	}
	return ReleaseKey{Pub: base + ".pub", Key: base + ".key"}
}

// ReleaseBundle writes a bundle folder for image and version with an ISO of size
// random bytes (the vDC only hashes it), signed with k unless k is zero.
func ReleaseBundle(t testing.TB, k ReleaseKey, image, version string, size int) string {
	t.Helper()
	dir := t.TempDir()
	iso := make([]byte, size)
	rand.Read(iso)
	if err := os.WriteFile(filepath.Join(dir, image+".iso"), iso, 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(map[string]string{"image": image, "version": version})
	if err := os.WriteFile(filepath.Join(dir, image+".manifest.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	if k.Key == "" {
		return dir
	}
	priv, err := upgrade.LoadPrivateKey(k.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := upgrade.Sign(dir, priv); err != nil {
		t.Fatal(err)
	}
	return dir
}
