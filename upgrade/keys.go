// Package upgrade takes an installed Quantix-OS or QvDC to a new release through its
// A/B boot slots (docs/design.md §16): release bundles are signed (Keygen, Sign) and
// verified against the keys the running image trusts (Verify), staged into the slot
// that is not running (Stage) and, once the new release has proved itself, committed
// (bootenv.Files.Commit, called by init). GRUB does the trial and the rollback
// (installer.GrubConfig).
package upgrade

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/quantix/quantix"
)

// Private key and signature file formats: one line each, the algorithm first.
const (
	privatePrefix = "quantix-release-key ed25519 "
	sigPrefix     = "ed25519 "
)

// LoadTrustedKeys reads the running image's trusted keys (quantix.TrustedKeysPath).
// An image built without any has none and accepts no bundle.
func LoadTrustedKeys(path string) ([]quantix.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trusted release keys: %w", err)
	}
	return quantix.ParsePublicKeys(b)
}

// Keygen writes a new key pair: <base>.key (private, 0600) and <base>.pub; the
// public key's name is the base name.
func Keygen(base string, rnd io.Reader) (quantix.PublicKey, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	pub, priv, err := ed25519.GenerateKey(rnd)
	if err != nil {
		return quantix.PublicKey{}, fmt.Errorf("keygen %s: %w", base, err)
	}
	k := quantix.PublicKey{Name: filepath.Base(base), Key: pub}
	if _, err := os.Stat(base + ".key"); err == nil {
		return quantix.PublicKey{}, fmt.Errorf("keygen %s: %s.key exists: refusing to overwrite a signing key", base, base)
	}
	if err := quantix.WriteFileAtomic(base+".key", []byte(privatePrefix+base64.StdEncoding.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
		return quantix.PublicKey{}, err
	}
	if err := quantix.WriteFileAtomic(base+".pub", []byte(k.String()+"\n"), 0o644); err != nil {
		return quantix.PublicKey{}, err
	}
	return k, nil
}

// LoadPrivateKey reads a key written by Keygen.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if !strings.HasPrefix(s, privatePrefix) {
		return nil, fmt.Errorf("signing key %s: not a key written by qx-image keygen", path)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, privatePrefix))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("signing key %s: damaged (want a base64 ed25519 seed of %d bytes)", path, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// Sign makes dir a release bundle: it must hold exactly one <image>.iso and its
// <image>.manifest.json; Sign writes SHA256SUMS over both and SHA256SUMS.sig.
func Sign(dir string, key ed25519.PrivateKey) error {
	iso, manifest, err := bundleFiles(dir)
	if err != nil {
		return fmt.Errorf("sign %s: %w", dir, err)
	}
	var sums bytes.Buffer
	for _, name := range []string{iso, manifest} {
		s, err := quantix.FileSHA256(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("sign %s: %w", dir, err)
		}
		fmt.Fprintf(&sums, "%s  %s\n", s, name)
	}
	sig := ed25519.Sign(key, sums.Bytes())
	if err := quantix.WriteFileAtomic(filepath.Join(dir, quantix.BundleSums), sums.Bytes(), 0o644); err != nil {
		return fmt.Errorf("sign %s: %w", dir, err)
	}
	return quantix.WriteFileAtomic(filepath.Join(dir, quantix.BundleSignature), []byte(sigPrefix+base64.StdEncoding.EncodeToString(sig)+"\n"), 0o644)
}

// bundleFiles finds the one ISO of a bundle folder and its manifest.
func bundleFiles(dir string) (iso, manifest string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", "", err
	}
	var isos []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".iso") && e.Type().IsRegular() {
			isos = append(isos, e.Name())
		}
	}
	sort.Strings(isos)
	if len(isos) != 1 {
		return "", "", fmt.Errorf("want exactly one <image>.iso in the bundle folder, found %d %v", len(isos), isos)
	}
	manifest = strings.TrimSuffix(isos[0], ".iso") + ".manifest.json"
	if _, err := os.Stat(filepath.Join(dir, manifest)); err != nil {
		return "", "", fmt.Errorf("%s needs its %s (qx-image build writes both): %w", isos[0], manifest, err)
	}
	return isos[0], manifest, nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
