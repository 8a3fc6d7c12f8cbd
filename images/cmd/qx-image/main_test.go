package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/upgrade"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"16M", 16 << 20, true}, {"512K", 512 << 10, true}, {"1G", 1 << 30, true}, {"4096", 4096, true},
		{"", 0, false}, {"-1M", 0, false}, {"16MB", 0, false}, {"x", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestConfigDiskCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "net.toml")
	os.WriteFile(src, []byte("mode = \"dhcp\"\n"), 0o644)
	out := filepath.Join(dir, "cfg.img")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"config-disk", "--out", out, "--label", "QUANTIX-INSTALL", "--size", "12M", "network/network.toml=" + src}, &stdout, &stderr); err != nil {
		t.Fatalf("config-disk: %v (%s)", err, stderr.String())
	}
	label, files, err := build.ReadConfigDisk(out)
	if err != nil || label != "QUANTIX-INSTALL" || string(files["network/network.toml"]) != "mode = \"dhcp\"\n" {
		t.Errorf("read back: %q %q %v", label, files, err)
	}
	for _, args := range [][]string{
		{"config-disk", "hostname=x"},                            // no --out
		{"config-disk", "--out", out, "hostname"},                // not DEST=SRC
		{"config-disk", "--out", out, "hostname=/nonexistent/x"}, // missing source
		{"config-disk", "--out", out, "--size", "lots"},
		{"build"},
		{"frobnicate"},
	} {
		if err := run(context.Background(), args, &stdout, &stderr); err == nil {
			t.Errorf("run(%q) = nil error", strings.Join(args, " "))
		}
	}
}

// keygen and sign make a bundle the upgrade package accepts with the new key.
func TestKeygenSignCommands(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "release-2026")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"keygen", base}, &stdout, &stderr); err != nil {
		t.Fatalf("keygen: %v", err)
	}
	pubLine, err := os.ReadFile(base + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := quantix.ParsePublicKey(string(pubLine))
	if err != nil || !strings.Contains(stdout.String(), pub.String()) {
		t.Fatalf("keygen printed %q; .pub %q (%v)", stdout.String(), pubLine, err)
	}
	bundle := filepath.Join(dir, "bundle")
	os.Mkdir(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, "quantix-os.iso"), []byte("not really an ISO"), 0o644)
	os.WriteFile(filepath.Join(bundle, "quantix-os.manifest.json"), []byte(`{"image":"quantix-os","version":"0.2.0"}`), 0o644)
	if err := run(context.Background(), []string{"sign", "--key", base + ".key", bundle}, &stdout, &stderr); err != nil {
		t.Fatalf("sign: %v", err)
	}
	b, err := upgrade.Verify(bundle, []quantix.PublicKey{pub}, upgrade.Rules{Image: quantix.ImageQuantixOS, Running: "0.1.0"})
	if err != nil || b.Version != "0.2.0" || b.SignedBy != "release-2026" {
		t.Errorf("Verify of the signed bundle = %+v, %v", b, err)
	}
	for _, args := range [][]string{{"keygen"}, {"keygen", base}, {"sign", bundle}, {"sign", "--key", base + ".pub", bundle}, {"sign", "--key", base + ".key", dir}} {
		if err := run(context.Background(), args, &stdout, &stderr); err == nil {
			t.Errorf("run(%q) = nil error", strings.Join(args, " "))
		}
	}
}

// build --trusted-keys refuses a file it cannot use before anything is built.
func TestBuildTrustedKeysRefused(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pub")
	bad := filepath.Join(dir, "bad.pub")
	os.WriteFile(empty, []byte("# no keys here\n"), 0o644)
	os.WriteFile(bad, []byte("rsa AAAA someone\n"), 0o644)
	for _, c := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.pub"), "no such file"},
		{empty, "holds no key"},
		{bad, `want "ed25519 <base64 key> <name>"`},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), []string{"build", "--trusted-keys", c.file, "--out", dir, "../../quantix-os.toml"}, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("build --trusted-keys %s: %v, want %q", filepath.Base(c.file), err, c.want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 2 { // the two key files
			t.Errorf("a refused build wrote into --out: %d entries", len(ents))
		}
	}
}
