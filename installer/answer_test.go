package installer

import (
	"errors"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

const goodOS = `
hostname = "node1"
[target]
path = "/dev/vda"
[agent]
control_plane = "http://10.0.0.2:8080"
join_token = "join-token-0123456789"
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
		{"password short", "quantix-os", "console_password = \"short\"\n" + goodOS, "console_password: is 5 characters"},
		{"password and hash", "quantix-os", "console_password = \"longenough\"\nconsole_password_hash = \"$2a$10$abc\"\n" + goodOS, "console_password: set console_password or console_password_hash"},
		{"hash bad", "quantix-os", "console_password_hash = \"plain\"\n" + goodOS, "console_password_hash: not a bcrypt hash"},
		{"network mode", "quantix-os", goodOS + "[network]\nmode = \"ppp\"\n", "install.toml [network]"},
		{"network static address", "quantix-os", goodOS + "[network]\nmode = \"static\"\n[network.static]\naddress = \"10.0.0.300/24\"\n", "static.address"},
		{"network unknown key", "quantix-os", goodOS + "[network]\nmtu = 9000\n", `unknown key "network.mtu"`},
		{"agent missing", "quantix-os", "hostname = \"n\"\n[target]\npath = \"/dev/vda\"\n", "agent: missing"},
		{"agent control_plane missing", "quantix-os", rep(goodOS, `control_plane = "http://10.0.0.2:8080"`, ""), "agent.control_plane: missing"},
		{"agent control_plane bad", "quantix-os", rep(goodOS, `"http://10.0.0.2:8080"`, `"ftp://x"`), "agent: control_plane"},
		{"agent join_token missing", "quantix-os", rep(goodOS, `join_token = "join-token-0123456789"`, ""), "agent.join_token: missing"},
		{"agent join_token space", "quantix-os", rep(goodOS, `"join-token-0123456789"`, `"join token"`), "agent: join_token"},
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
