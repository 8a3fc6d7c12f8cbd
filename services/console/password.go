package console

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/argon2"

	"github.com/quantix/quantix"
)

// DefaultPasswordFile holds the console password hash on QUANTIX-CFG (mode 0600).
const DefaultPasswordFile = quantix.ConfigDir + "/console/password"

// MinPasswordLen is the shortest console password accepted.
const MinPasswordLen = 8

// Argon2id parameters: OWASP's minimum (19 MiB, 2 passes, 1 lane), a deliberate
// balance between guessing cost and a verification that stays under a second on a
// small machine or under software emulation.
const (
	argonMemoryKiB = 19 * 1024
	argonTime      = 2
	argonThreads   = 1
	argonKeyLen    = 32
	argonSaltLen   = 16
)

// ErrNoPassword says that no console password has been set yet.
var ErrNoPassword = errors.New("no console password is set")

// ErrWrongPassword is returned by Verify for a password that does not match.
var ErrWrongPassword = errors.New("wrong password")

// CheckNewPassword applies the rules for a new console password.
func CheckNewPassword(pw string) error {
	switch {
	case len(pw) < MinPasswordLen:
		return fmt.Errorf("password: at least %d characters needed, got %d", MinPasswordLen, len(pw))
	case len(pw) > 256:
		return fmt.Errorf("password: at most 256 characters allowed")
	case strings.TrimSpace(pw) == "":
		return fmt.Errorf("password: must not be only spaces")
	}
	for _, c := range pw {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("password: control characters are not allowed")
		}
	}
	return nil
}

// HashPassword returns the PHC string of pw with a fresh random salt:
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash> (base64 without padding). The
// installer uses it too, so the file format has one owner.
func HashPassword(pw string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemoryKiB, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemoryKiB, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

// argonHash is a parsed argon2id PHC string.
type argonHash struct {
	m, t       uint32
	p          uint8
	salt, hash []byte
}

// parseHash parses a PHC string as HashPassword makes it, with any argon2id
// parameters within sane bounds.
func parseHash(phc string) (argonHash, error) {
	var h argonHash
	parts := strings.Split(strings.TrimSpace(phc), "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return h, errors.New("password hash: not an argon2id PHC string")
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return h, fmt.Errorf("password hash: unsupported version %q", parts[2])
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &h.m, &h.t, &h.p); err != nil {
		return h, fmt.Errorf("password hash: bad parameters %q", parts[3])
	}
	if h.m < 8*1024 || h.m > 1<<20 || h.t < 1 || h.t > 16 || h.p < 1 || h.p > 16 {
		return h, fmt.Errorf("password hash: parameters %q out of range", parts[3])
	}
	enc := base64.RawStdEncoding
	var err error
	if h.salt, err = enc.DecodeString(parts[4]); err != nil || len(h.salt) < 8 {
		return h, errors.New("password hash: bad salt")
	}
	if h.hash, err = enc.DecodeString(parts[5]); err != nil || len(h.hash) < 16 {
		return h, errors.New("password hash: bad hash")
	}
	return h, nil
}

// ValidHash reports whether phc is a PHC string VerifyPassword accepts, without
// the cost of hashing a password; the installer checks a given hash with it.
func ValidHash(phc string) error {
	_, err := parseHash(phc)
	return err
}

// VerifyPassword checks pw against a PHC string made by HashPassword (any argon2id
// parameters within sane bounds). It returns ErrWrongPassword on a mismatch.
func VerifyPassword(phc, pw string) error {
	h, err := parseHash(phc)
	if err != nil {
		return err
	}
	got := argon2.IDKey([]byte(pw), h.salt, h.t, h.m, h.p, uint32(len(h.hash)))
	if subtle.ConstantTimeCompare(got, h.hash) != 1 {
		return ErrWrongPassword
	}
	return nil
}

// PasswordStore is the console password file.
type PasswordStore struct {
	Path string
}

// Get returns the stored hash, or ErrNoPassword.
func (p PasswordStore) Get() (string, error) {
	b, err := os.ReadFile(p.Path)
	if errors.Is(err, os.ErrNotExist) {
		return "", ErrNoPassword
	}
	if err != nil {
		return "", fmt.Errorf("read console password %s: %w", p.Path, err)
	}
	h := string(bytes.TrimSpace(b))
	if h == "" {
		return "", ErrNoPassword
	}
	return h, nil
}

// IsSet reports whether a password has been set.
func (p PasswordStore) IsSet() (bool, error) {
	_, err := p.Get()
	if errors.Is(err, ErrNoPassword) {
		return false, nil
	}
	return err == nil, err
}

// Verify checks pw against the stored hash.
func (p PasswordStore) Verify(pw string) error {
	h, err := p.Get()
	if err != nil {
		return err
	}
	if err := VerifyPassword(h, pw); err != nil {
		if errors.Is(err, ErrWrongPassword) {
			return err
		}
		return fmt.Errorf("%s: %w", p.Path, err)
	}
	return nil
}

// Set checks pw, hashes it and writes the file atomically with mode 0600.
func (p PasswordStore) Set(pw string) error {
	if err := CheckNewPassword(pw); err != nil {
		return err
	}
	h, err := HashPassword(pw)
	if err != nil {
		return err
	}
	return quantix.WriteFileAtomic(p.Path, []byte(h+"\n"), 0o600)
}
