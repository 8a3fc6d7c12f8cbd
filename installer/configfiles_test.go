package installer

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/upgrade/upgradetest"
)

// BuildConfig writes the console password where and as the console reads it:
// console/password on QUANTIX-CFG, one argon2id PHC string and a newline, mode
// 0600, and the console's own PasswordStore verifies it.
func TestBuildConfigConsolePassword(t *testing.T) {
	const name = "console/password"
	if rel(console.DefaultPasswordFile) != name {
		t.Fatalf("console.DefaultPasswordFile %s is not %s on QUANTIX-CFG", console.DefaultPasswordFile, name)
	}
	for _, c := range []struct {
		name, image, answer string
		password            string // what must verify; "" means no file
		hash                string // the exact hash expected, when given
	}{
		{"password", quantix.ImageQuantixOS, "console_password = 'correct horse'\n" + goodOS, "correct horse", ""},
		{"password qvdc", quantix.ImageQvDC, "console_password = 'pässwörter 123'\n" + goodQvDC, "pässwörter 123", ""},
		{"hash", quantix.ImageQuantixOS, "console_password_hash = '" + testHash + "'\n" + goodOS, "correct horse", testHash},
		{"none", quantix.ImageQuantixOS, goodOS, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, err := ParseAnswer("install.toml", []byte(c.answer), c.image)
			if err != nil {
				t.Fatal(err)
			}
			files, err := BuildConfig(a, c.image, "")
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range files.Names() {
				if strings.HasPrefix(n, "console/") && n != name {
					t.Errorf("unexpected console file %s (the console reads only %s)", n, name)
				}
			}
			f, ok := files[name]
			if c.password == "" {
				if ok {
					t.Fatalf("%s written without a password in the answer: %q", name, f.Data)
				}
				return
			}
			if !ok {
				t.Fatalf("no %s in %v", name, files.Names())
			}
			if f.Mode != 0o600 {
				t.Errorf("%s mode %v, want 0600", name, f.Mode)
			}
			h, ok := strings.CutSuffix(string(f.Data), "\n")
			if !ok || strings.ContainsAny(h, "\n\r \t") || !strings.HasPrefix(h, "$argon2id$v=19$") {
				t.Errorf("%s = %q, want one argon2id PHC string and a newline", name, f.Data)
			}
			if c.hash != "" && h != c.hash {
				t.Errorf("%s = %q, want the given hash %q", name, h, c.hash)
			}
			if strings.Contains(string(f.Data), c.password) {
				t.Errorf("%s holds the password in clear: %q", name, f.Data)
			}
			// The console's own reader on the file as the installer lays it out.
			p := filepath.Join(t.TempDir(), filepath.FromSlash(name))
			if err := quantix.WriteFileAtomic(p, f.Data, f.Mode); err != nil {
				t.Fatal(err)
			}
			ps := console.PasswordStore{Path: p}
			if set, err := ps.IsSet(); !set || err != nil {
				t.Errorf("console PasswordStore.IsSet = %v, %v", set, err)
			}
			if err := ps.Verify(c.password); err != nil {
				t.Errorf("console PasswordStore.Verify(right) = %v", err)
			}
			if err := ps.Verify(c.password + "x"); !errors.Is(err, console.ErrWrongPassword) {
				t.Errorf("console PasswordStore.Verify(wrong) = %v, want ErrWrongPassword", err)
			}
		})
	}
}

// A given hash goes onto the disk only through the console's format check, even
// when Validate was skipped.
func TestBuildConfigRefusesBadHash(t *testing.T) {
	a, err := ParseAnswer("install.toml", []byte(goodOS), quantix.ImageQuantixOS)
	if err != nil {
		t.Fatal(err)
	}
	a.ConsolePasswordHash = "$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
	if _, err := BuildConfig(a, quantix.ImageQuantixOS, ""); err == nil || !strings.Contains(err.Error(), "not an argon2id PHC string") {
		t.Errorf("BuildConfig with a bcrypt hash = %v, want the console's format error", err)
	}
}

// The answer file's trusted_keys become the site's release keys on QUANTIX-CFG,
// in the file init reads them from; a bad key is refused before anything is built.
func TestBuildConfigTrustedKeys(t *testing.T) {
	k1, _ := upgradetest.Keypair(t, "site-2026")
	k2, _ := upgradetest.Keypair(t, "site-2027")
	answer := fmt.Sprintf("trusted_keys = [%q, %q]\n", k1.String(), k2.String()) + goodOS
	a, err := ParseAnswer("install.toml", []byte(answer), quantix.ImageQuantixOS)
	if err != nil {
		t.Fatal(err)
	}
	files, err := BuildConfig(a, quantix.ImageQuantixOS, "")
	if err != nil {
		t.Fatal(err)
	}
	f, ok := files[rel(quantix.SiteTrustedKeys)]
	if !ok || rel(quantix.SiteTrustedKeys) != "upgrade/trusted-keys" {
		t.Fatalf("no %s in %v", quantix.SiteTrustedKeys, files.Names())
	}
	keys, err := quantix.ParsePublicKeys(f.Data)
	if err != nil || len(keys) != 2 || keys[0].Name != "site-2026" || keys[1].Name != "site-2027" {
		t.Errorf("%s = %q: %+v, %v", quantix.SiteTrustedKeys, f.Data, keys, err)
	}
	if _, err := ParseAnswer("install.toml", []byte("trusted_keys = [\"ed25519 AAAA short\"]\n"+goodOS), quantix.ImageQuantixOS); err == nil || !strings.Contains(err.Error(), "trusted_keys[0]") {
		t.Errorf("bad trusted key: %v, want trusted_keys[0] refused", err)
	}
	if files, _ := BuildConfig(mustAnswer(t, goodOS), quantix.ImageQuantixOS, ""); files[rel(quantix.SiteTrustedKeys)].Data != nil {
		t.Errorf("site keys written without trusted_keys in the answer")
	}
}

func mustAnswer(t *testing.T, s string) *Answer {
	a, err := ParseAnswer("install.toml", []byte(s), quantix.ImageQuantixOS)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
