package console

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPasswordHashVerify(t *testing.T) {
	h1, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := HashPassword("correct horse")
	if h1 == h2 {
		t.Fatalf("two hashes of one password are equal: the salt is not random")
	}
	if !strings.HasPrefix(h1, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("HashPassword = %q, want an argon2id PHC string", h1)
	}
	if err := VerifyPassword(h1, "correct horse"); err != nil {
		t.Fatalf("VerifyPassword(right) = %v", err)
	}
	if err := VerifyPassword(h2, "correct horsE"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("VerifyPassword(wrong) = %v, want ErrWrongPassword", err)
	}
}

func TestVerifyPasswordBadHashes(t *testing.T) {
	good, _ := HashPassword("correct horse")
	parts := strings.Split(good, "$")
	tests := []struct {
		name, phc, want string
	}{
		{"empty", "", "not an argon2id PHC string"},
		{"bcrypt", "$2a$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01", "not an argon2id PHC string"},
		{"argon2i", strings.Replace(good, "argon2id", "argon2i", 1), "not an argon2id PHC string"},
		{"version", strings.Replace(good, "v=19", "v=16", 1), "unsupported version"},
		{"params", strings.Replace(good, "m=19456,t=2,p=1", "m=x", 1), "bad parameters"},
		{"tiny memory", strings.Replace(good, "m=19456", "m=8", 1), "out of range"},
		{"salt", strings.Join([]string{"", parts[1], parts[2], parts[3], "!!", parts[5]}, "$"), "bad salt"},
		{"hash", strings.Join([]string{"", parts[1], parts[2], parts[3], parts[4], "AA"}, "$"), "bad hash"},
	}
	for _, tt := range tests {
		err := VerifyPassword(tt.phc, "correct horse")
		if err == nil || errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: VerifyPassword = %v, want an error containing %q", tt.name, err, tt.want)
		}
		if err := ValidHash(tt.phc); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: ValidHash = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

// ValidHash accepts exactly the strings VerifyPassword can check, whatever the
// password: HashPassword's own and other argon2id parameters within bounds.
func TestValidHash(t *testing.T) {
	good, _ := HashPassword("correct horse")
	for _, phc := range []string{
		good,
		good + "\n",
		strings.Replace(good, "m=19456,t=2,p=1", "m=65536,t=3,p=4", 1),
	} {
		if err := ValidHash(phc); err != nil {
			t.Errorf("ValidHash(%q) = %v", phc, err)
		}
		if err := VerifyPassword(phc, "not the password"); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("VerifyPassword(%q, wrong) = %v, want ErrWrongPassword", phc, err)
		}
	}
}

func TestCheckNewPassword(t *testing.T) {
	tests := []struct {
		pw, want string
	}{
		{"", "at least 8"},
		{"1234567", "at least 8"},
		{"12345678", ""},
		{"        ", "only spaces"},
		{"abc\x01defgh", "control characters"},
		{strings.Repeat("a", 257), "at most 256"},
		{"pässwörter", ""},
	}
	for _, tt := range tests {
		err := CheckNewPassword(tt.pw)
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckNewPassword(%q) = %v, want %q", tt.pw, err, tt.want)
		}
	}
}

func TestPasswordStore(t *testing.T) {
	p := PasswordStore{Path: filepath.Join(t.TempDir(), "quantix", "console", "password")}
	if set, err := p.IsSet(); set || err != nil {
		t.Fatalf("IsSet on a fresh disk = %v, %v", set, err)
	}
	if err := p.Verify("anything-at-all"); !errors.Is(err, ErrNoPassword) {
		t.Fatalf("Verify without a password = %v, want ErrNoPassword (no default password)", err)
	}
	if err := p.Set("short"); err == nil {
		t.Fatalf("Set accepted a short password")
	}
	if _, err := os.Stat(p.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused password left a file: %v", err)
	}
	if err := p.Set("correct horse"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p.Path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("password file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	if err := p.Verify("correct horse"); err != nil {
		t.Fatalf("Verify = %v", err)
	}
	if err := p.Verify("correct horse "); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("Verify(wrong) = %v", err)
	}
	os.WriteFile(p.Path, []byte("garbage\n"), 0o600)
	if err := p.Verify("correct horse"); err == nil || errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), p.Path) {
		t.Fatalf("Verify on a damaged file = %v, want an error naming %s", err, p.Path)
	}
}

func BenchmarkVerifyPassword(b *testing.B) {
	h, _ := HashPassword("correct horse")
	for b.Loop() {
		if err := VerifyPassword(h, "correct horse"); err != nil {
			b.Fatal(err)
		}
	}
}
