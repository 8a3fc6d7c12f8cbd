package quantix

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strings"
)

// publicPrefix starts a public key's line: "ed25519 <base64 key> <name>".
const publicPrefix = "ed25519 "

// PublicKey is a release signing key an image trusts (docs/design.md §16): qx-image
// keygen writes it, image definitions list it (trusted_keys), the image builder
// writes the list to TrustedKeysPath and the upgrade package checks bundles with it.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// String is the key's line, as in an image definition's trusted_keys.
func (k PublicKey) String() string {
	return publicPrefix + base64.StdEncoding.EncodeToString(k.Key) + " " + k.Name
}

// ParsePublicKey parses "ed25519 <base64> <name>".
func ParsePublicKey(s string) (PublicKey, error) {
	f := strings.Fields(s)
	if len(f) != 3 || f[0]+" " != publicPrefix {
		return PublicKey{}, fmt.Errorf("public key %q: want \"ed25519 <base64 key> <name>\" (qx-image keygen writes it)", s)
	}
	b, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil || len(b) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("public key %s: not a base64 ed25519 public key of %d bytes", f[2], ed25519.PublicKeySize)
	}
	return PublicKey{Name: f[2], Key: b}, nil
}

// ParsePublicKeys parses one key a line; empty lines and # comments are skipped.
func ParsePublicKeys(b []byte) ([]PublicKey, error) {
	var keys []PublicKey
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, err := ParsePublicKey(l)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}
