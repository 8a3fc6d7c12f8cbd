package spec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/quantix/quantix"
)

const valid = `
name = "quantix-os"
version = "0.1.0"
volume_label = "QUANTIX-OS"
hostname = "quantix"

[kernel]
package = "linux-image-6.1.0-56-amd64"
version = "6.1.192-2"
sha256 = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1"
modules = ["virtio_pci", "nls_iso8859-1"]
late_modules = ["button"]

[initramfs]
uroot_commands = ["github.com/u-root/u-root/cmds/core/init"]
commands = ["./services/cmd/qx-init"]
uinit = "qx-init"
overlays = ["overlay/common"]

[boot]
cmdline = "panic=10"
timeout = "2s"

[[boot.entry]]
id = "normal"
title = "Quantix OS"
cmdline = "console=ttyS0,115200 console=tty0"
default = true

[[boot.entry]]
id = "install"
title = "Install Quantix OS"
cmdline = "quantix.install=interactive"

[[service]]
name = "network"
command = "/bbin/qx-net"
args = ["serve"]

[[service]]
name = "agent"
command = "/bbin/qx-node"
depends_on = ["network"]

[[halt_hook]]
command = "/bbin/qx-node"
args = ["shutdown-guests"]
timeout_seconds = 45
`

func TestParseValid(t *testing.T) {
	img, err := Parse("quantix-os.toml", []byte(valid))
	if err != nil {
		t.Fatalf("Parse(valid) = %v", err)
	}
	if got, want := img.Boot.DefaultEntry().ID, "normal"; got != want {
		t.Errorf("DefaultEntry = %q, want %q", got, want)
	}
	order, err := quantix.ServiceOrder(img.Services)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"network", "agent"}, order); diff != "" {
		t.Errorf("quantix.ServiceOrder (-want +got):\n%s", diff)
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name    string
		old     string
		new     string
		wantErr string
	}{
		{"unknown key", `hostname = "quantix"`, "hostname = \"quantix\"\ncolour = \"red\"", `quantix-os.toml:6: unknown key "colour"`},
		{"unknown nested key", `uinit = "qx-init"`, "uinit = \"qx-init\"\nshell = \"sh\"", `unknown key "initramfs.shell"`},
		{"type mismatch", `version = "0.1.0"`, `version = 1`, `quantix-os.toml`},
		{"bad name", `name = "quantix-os"`, `name = "Quantix OS"`, `name: "Quantix OS" must be`},
		{"bad label", `volume_label = "QUANTIX-OS"`, `volume_label = "quantix os"`, `volume_label:`},
		{"bad hostname", `hostname = "quantix"`, `hostname = "-bad"`, `hostname: invalid hostname`},
		{"bad sha", `sha256 = "a86e`, `sha256 = "zz6e`, `kernel.sha256:`},
		{"duplicate module", `"nls_iso8859-1"]`, `"nls_iso8859-1", "virtio-pci"]`, `kernel.modules[2]: "virtio-pci" is listed twice`},
		{"late duplicate", `late_modules = ["button"]`, `late_modules = ["virtio-pci"]`, `kernel.late_modules[0]: "virtio-pci" is listed twice`},
		{"no init", `"github.com/u-root/u-root/cmds/core/init"]`, `"github.com/u-root/u-root/cmds/core/ls"]`, `must include github.com/u-root/u-root/cmds/core/init`},
		{"foreign command", `commands = ["./services/cmd/qx-init"]`, `commands = ["github.com/x/y", "./services/cmd/qx-init"]`, `initramfs.commands[0]: "github.com/x/y" must be a main package path`},
		{"uinit not built", `uinit = "qx-init"`, `uinit = "qx-net"`, `initramfs.uinit: "qx-net" is not one of initramfs.commands`},
		{"overlay escapes", `overlays = ["overlay/common"]`, `overlays = ["../etc"]`, `initramfs.overlays[0]`},
		{"relative host file", `overlays = ["overlay/common"]`, "overlays = []\nfiles = [\"usr/bin/dash\"]", `initramfs.files[0]: "usr/bin/dash": the host path must be absolute`},
		{"bad timeout", `timeout = "2s"`, `timeout = "soon"`, `boot.timeout: "soon" is not a duration`},
		{"two defaults", `cmdline = "quantix.install=interactive"`, "cmdline = \"quantix.install=interactive\"\ndefault = true", `exactly one entry must have default = true, found 2`},
		{"quote in cmdline", `cmdline = "panic=10"`, `cmdline = "panic=10 x=\"y\""`, `boot.cmdline:`},
		{"relative halt hook", `args = ["shutdown-guests"]`, "args = [\"shutdown-guests\"]\n[[halt_hook]]\ncommand = \"qx-node\"", `halt_hook[1].command: "qx-node" must be an absolute path`},
		{"halt hook timeout", `timeout_seconds = 45`, `timeout_seconds = 4500`, `halt_hook[0].timeout_seconds: 4500 is not between`},
		{"unknown dependency", `depends_on = ["network"]`, `depends_on = ["netwrok"]`, `service[1].depends_on: "netwrok" (of agent) is not a service`},
		{"relative command", `command = "/bbin/qx-net"`, `command = "qx-net"`, `service[0].command: "qx-net" must be an absolute path`},
		{"bad ready", `args = ["serve"]`, "args = [\"serve\"]\nready = \"soon\"", `service[0].ready: "soon"`},
		{"bad trusted key", `hostname = "quantix"`, "hostname = \"quantix\"\ntrusted_keys = [\"rsa AAAA me\"]", `trusted_keys[0]: public key "rsa AAAA me": want "ed25519 <base64 key> <name>"`},
		{"short trusted key", `hostname = "quantix"`, "hostname = \"quantix\"\ntrusted_keys = [\"ed25519 AAAA me\"]", `trusted_keys[0]: public key me: not a base64 ed25519 public key`},
		{"bad health gate", `args = ["serve"]`, "args = [\"serve\"]\nhealth_gate = \"maybe\"", `service[0].health_gate: "maybe" must be`},
		{"bad boot priority", `args = ["serve"]`, "args = [\"serve\"]\nboot_priority = \"idle\"", `service[0].boot_priority: "idle" must be "low" or unset`},
		{"service module not shipped", `args = ["serve"]`, "args = [\"serve\"]\nmodules = [\"button\"]", `service[0].modules[0]: "button" is not in kernel.modules`},
		{"cycle", `args = ["serve"]`, "args = [\"serve\"]\ndepends_on = [\"agent\"]", `dependency cycle network -> agent -> network`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(valid, tt.old) {
				t.Fatalf("test bug: %q not in the valid spec", tt.old)
			}
			data := strings.Replace(valid, tt.old, tt.new, 1)
			_, err := Parse("quantix-os.toml", []byte(data))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnknownKeyIsErrUnknownKey(t *testing.T) {
	_, err := Parse("x.toml", []byte(valid+"\n[extra]\na = 1\n"))
	if !errors.Is(err, quantix.ErrUnknownKey) {
		t.Errorf("Parse = %v, want ErrUnknownKey", err)
	}
}

// TestCommittedSpecs keeps images/*.toml loadable.
func TestCommittedSpecs(t *testing.T) {
	files, err := filepath.Glob("../*.toml")
	if err != nil || len(files) < 2 {
		t.Fatalf("glob ../*.toml = %v, %v; want quantix-os.toml and qvdc.toml", files, err)
	}
	for _, f := range files {
		img, err := Load(f)
		if err != nil {
			t.Errorf("Load(%s) = %v", f, err)
			continue
		}
		if want := strings.TrimSuffix(filepath.Base(f), ".toml"); img.Name != want {
			t.Errorf("%s: name = %q, want %q", f, img.Name, want)
		}
		for _, c := range img.Initramfs.Commands {
			if _, err := os.Stat(filepath.Join("../..", c, "main.go")); err != nil {
				t.Errorf("%s: command %s has no main.go: %v", f, c, err)
			}
		}
	}
}

func TestTrustedKeys(t *testing.T) {
	k := quantix.PublicKey{Name: "release-2026", Key: make([]byte, 32)}
	data := strings.Replace(valid, `hostname = "quantix"`, "hostname = \"quantix\"\ntrusted_keys = [\""+k.String()+"\"]", 1)
	img, err := Parse("quantix-os.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(img.TrustedKeys) != 1 || img.TrustedKeys[0] != k.String() {
		t.Errorf("TrustedKeys = %q, want [%q]", img.TrustedKeys, k.String())
	}
	twice := strings.Replace(valid, `hostname = "quantix"`, "hostname = \"quantix\"\ntrusted_keys = [\""+k.String()+"\", \""+k.String()+"\"]", 1)
	if _, err := Parse("quantix-os.toml", []byte(twice)); err == nil || !strings.Contains(err.Error(), `two keys are named "release-2026"`) {
		t.Errorf("Parse with a key twice = %v", err)
	}
}
