package installer

import (
	"errors"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/console"
)

const goodOS = `
hostname = "node1"
[target]
path = "/dev/vda"
[agent]
control_plane = "https://10.0.0.2:8080"
join_token = "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789"
`

const goodQvDC = `
hostname = "qvdc1"
wipe = true
after = "reboot"
[target]
wwn = "naa.5000c500a1b2c3d4"
[network]
mode = "dhcp"
[vdc]
admin_token = "admin-token-0123456789"
join_tokens = ["static-join-token-123"]
heartbeat_interval = "5s"
`

// testHash is "correct horse" hashed with console.HashPassword's parameters and a
// fixed salt ("saltsaltsaltsalt"), so the tables are constant;
// TestParseAnswerConsoleHash checks it with the console's VerifyPassword.
const testHash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$AdweBLwcflnNX2HVW8i1Mtu7frrn4Ki7h/rYSGuU7Is"

func TestParseAnswerGood(t *testing.T) {
	a, err := ParseAnswer("install.toml", []byte(goodOS), quantix.ImageQuantixOS)
	if err != nil {
		t.Fatal(err)
	}
	if a.After != AfterPoweroff || a.Wipe || a.Target.Path != "/dev/vda" {
		t.Errorf("defaults: after %q wipe %v target %+v", a.After, a.Wipe, a.Target)
	}
	b, err := ParseAnswer("install.toml", []byte(goodQvDC), quantix.ImageQvDC)
	if err != nil {
		t.Fatal(err)
	}
	if b.After != AfterReboot || !b.Wipe || b.VDC.AdminToken == "" {
		t.Errorf("qvdc answer: %+v", b)
	}
	c, err := ParseAnswer("install.toml", []byte(strings.Replace(goodOS, `"node1"`, `"Node1.Example"`, 1)), quantix.ImageQuantixOS)
	if err != nil || c.Hostname != "node1.example" {
		t.Errorf("hostname not normalized: %v %v", c, err)
	}
}

// The console password keys take what the console takes: its password rules and
// any argon2id PHC string its VerifyPassword can check.
func TestParseAnswerConsolePassword(t *testing.T) {
	if err := console.VerifyPassword(testHash, "correct horse"); err != nil {
		t.Fatalf("test bug: testHash does not verify: %v", err)
	}
	fresh, err := console.HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ key, value string }{
		{"console_password", "12345678"},
		{"console_password", "pässwörter mit Leerzeichen"},
		{"console_password_hash", testHash},
		{"console_password_hash", fresh},
		{"console_password_hash", strings.Replace(testHash, "m=19456,t=2,p=1", "m=65536,t=3,p=4", 1)},
	} {
		a, err := ParseAnswer("install.toml", []byte(c.key+" = '"+c.value+"'\n"+goodOS), quantix.ImageQuantixOS)
		if err != nil {
			t.Errorf("%s = %q: %v", c.key, c.value, err)
			continue
		}
		if got := a.ConsolePassword + a.ConsolePasswordHash; got != c.value {
			t.Errorf("%s = %q read as %q", c.key, c.value, got)
		}
	}
}

// Every bad key gives an error naming the file and the key.
func TestParseAnswerBad(t *testing.T) {
	rep := func(base, old, new string) string {
		if !strings.Contains(base, old) {
			t.Fatalf("test bug: %q not in base", old)
		}
		return strings.Replace(base, old, new, 1)
	}
	for _, c := range []struct {
		name, image, data, want string
	}{
		{"unknown key", "quantix-os", "colour = 1\n" + goodOS, `install.toml:1: unknown key "colour"`},
		{"unknown target key", "quantix-os", rep(goodOS, `path = "/dev/vda"`, `path = "/dev/vda"`+"\nlabel = \"x\""), `unknown key "target.label"`},
		{"unknown agent key", "quantix-os", goodOS + "nope = 1\n", `unknown key "agent.nope"`},
		{"syntax", "quantix-os", "hostname = \n", "install.toml:1"},
		{"wrong type", "quantix-os", "wipe = \"yes\"\n" + goodOS, "wipe"},
		{"image mismatch", "quantix-os", "image = \"qvdc\"\n" + goodOS, "image: the answer file is for \"qvdc\""},
		{"hostname missing", "quantix-os", rep(goodOS, `hostname = "node1"`, ""), "hostname: missing"},
		{"hostname bad", "quantix-os", rep(goodOS, `"node1"`, `"node_1"`), "hostname: invalid hostname"},
		{"after bad", "quantix-os", "after = \"halt\"\n" + goodOS, `after: "halt": want "poweroff" or "reboot"`},
		{"target missing", "quantix-os", rep(goodOS, `path = "/dev/vda"`, ""), "target: missing"},
		{"target two keys", "quantix-os", rep(goodOS, `path = "/dev/vda"`, `path = "/dev/vda"`+"\nserial = \"X\""), "target: set exactly one"},
		{"target path outside dev", "quantix-os", rep(goodOS, `"/dev/vda"`, `"vda"`), "target.path: \"vda\" is not a device under /dev"},
		{"password short", "quantix-os", "console_password = \"short\"\n" + goodOS, "console_password: at least 8 characters needed, got 5"},
		{"password spaces", "quantix-os", "console_password = \"          \"\n" + goodOS, "console_password: must not be only spaces"},
		{"password control", "quantix-os", "console_password = \"longenough\\u0007\"\n" + goodOS, "console_password: control characters are not allowed"},
		{"password long", "quantix-os", "console_password = \"" + strings.Repeat("p", 257) + "\"\n" + goodOS, "console_password: at most 256 characters"},
		{"password and hash", "quantix-os", "console_password = \"longenough\"\nconsole_password_hash = '" + testHash + "'\n" + goodOS, "console_password: set console_password or console_password_hash"},
		{"hash plain", "quantix-os", "console_password_hash = \"plain\"\n" + goodOS, "console_password_hash: not an argon2id PHC string"},
		{"hash bcrypt", "quantix-os", "console_password_hash = '$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW'\n" + goodOS, "console_password_hash: not an argon2id PHC string"},
		{"hash argon2i", "quantix-os", "console_password_hash = '" + strings.Replace(testHash, "argon2id", "argon2i", 1) + "'\n" + goodOS, "console_password_hash: not an argon2id PHC string"},
		{"hash parameters", "quantix-os", "console_password_hash = '" + strings.Replace(testHash, "m=19456", "m=8", 1) + "'\n" + goodOS, "console_password_hash: parameters \"m=8,t=2,p=1\" out of range"},
		{"hash truncated", "quantix-os", "console_password_hash = '" + testHash[:len(testHash)-30] + "'\n" + goodOS, "console_password_hash: bad hash"},
		{"network mode", "quantix-os", goodOS + "[network]\nmode = \"ppp\"\n", "install.toml [network]"},
		{"network static address", "quantix-os", goodOS + "[network]\nmode = \"static\"\n[network.static]\naddress = \"10.0.0.300/24\"\n", "static.address"},
		{"network unknown key", "quantix-os", goodOS + "[network]\nmtu = 9000\n", `unknown key "network.mtu"`},
		{"agent missing", "quantix-os", "hostname = \"n\"\n[target]\npath = \"/dev/vda\"\n", "agent: missing"},
		{"agent control_plane missing", "quantix-os", rep(goodOS, `control_plane = "https://10.0.0.2:8080"`, ""), "agent.control_plane: missing"},
		{"agent control_plane bad", "quantix-os", rep(goodOS, `"https://10.0.0.2:8080"`, `"ftp://x"`), "agent: control_plane"},
		{"agent join_token missing", "quantix-os", rep(goodOS, `join_token = "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789"`, ""), "agent.join_token: missing"},
		{"agent join_token space", "quantix-os", rep(goodOS, `"qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789"`, `"join token"`), "agent: join_token"},
		{"vdc on quantix-os", "quantix-os", goodOS + "[vdc]\nadmin_token = \"admin-token-0123456789\"\n", "vdc: only for the qvdc image"},
		{"agent on qvdc", "qvdc", goodQvDC + "[agent]\ncontrol_plane = \"http://x:1\"\n", "agent: only for the quantix-os image"},
		{"vdc admin_token short", "qvdc", rep(goodQvDC, `"admin-token-0123456789"`, `"short"`), "vdc: admin_token is 5 characters"},
		{"vdc join token short", "qvdc", rep(goodQvDC, `"static-join-token-123"`, `"x"`), "vdc: join_tokens[0] is 1 characters"},
		{"vdc heartbeat", "qvdc", rep(goodQvDC, `"5s"`, `"soon"`), "vdc: heartbeat_interval \"soon\""},
		{"vdc listen", "qvdc", rep(goodQvDC, `heartbeat_interval = "5s"`, `listen = "8080"`), "vdc: listen \"8080\""},
		{"vdc unknown key", "qvdc", goodQvDC + "database_url = \"postgres://x\"\n", `unknown key "vdc.database_url"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseAnswer("install.toml", []byte(c.data), c.image)
			if err == nil || !errors.Is(err, ErrAnswer) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ParseAnswer = %v, want an ErrAnswer containing %q", err, c.want)
			}
			if err != nil && !strings.Contains(err.Error(), "install.toml") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}
