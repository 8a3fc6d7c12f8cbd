package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

func write(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRunConfigErrors(t *testing.T) {
	dir := t.TempDir()
	noCmdline := filepath.Join(dir, "no-cmdline")
	corrupt := filepath.Join(dir, "corrupt")
	os.MkdirAll(corrupt, 0o755)
	write(t, filepath.Join(corrupt, "identity.toml"), "machine_id = \"x\"\n")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown flag", []string{"--controlplane", "http://x"}, "flag provided but not defined"},
		{"extra argument", []string{"serve"}, "unexpected arguments"},
		{"bad agent.toml", []string{"--config", write(t, filepath.Join(dir, "bad.toml"), "control_plane = 'http://v'\nhostname = 'n1'\n")}, `bad.toml:2: unknown key "hostname"`},
		{"no vdc, register once", []string{"--register", "--config", filepath.Join(dir, "none.toml"), "--hostname", "n1", "--state-dir", dir}, "no vDC URL"},
		{"bad flag url", []string{"--config", filepath.Join(dir, "none.toml"), "--control-plane", "vdc:8080"}, "control_plane"},
		{"bad hostname", []string{"--config", filepath.Join(dir, "none.toml"), "--control-plane", "http://v", "--hostname", "no_underscores"}, "invalid hostname"},
		{"remote libvirt", []string{"--config", filepath.Join(dir, "none.toml"), "--control-plane", "http://v", "--hostname", "n1", "--libvirt-uri", "qemu+tcp://h/system"}, "only local unix-socket URIs"},
		{"corrupt identity", []string{"--config", filepath.Join(dir, "none.toml"), "--control-plane", "https://v", "--hostname", "n1", "--state-dir", corrupt}, "identity file is corrupt"},
		{"plain http", []string{"--config", filepath.Join(dir, "none.toml"), "--control-plane", "http://v", "--hostname", "n1", "--state-dir", dir}, "insecure_plain_http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			args := append([]string{"--cmdline", noCmdline}, tt.args...)
			err := run(context.Background(), args, io.Discard, &stderr)
			if !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run(%q) = %v, want a configuration error (exit %d) containing %q", tt.args, err, quantix.ExitConfig, tt.wantErr)
			}
		})
	}
	// The corrupt identity was left alone.
	if b, _ := os.ReadFile(filepath.Join(corrupt, "identity.toml")); string(b) != "machine_id = \"x\"\n" {
		t.Errorf("corrupt identity.toml was rewritten: %q", b)
	}
}

// TestRunUnconfigured: a live-booted node with no vDC anywhere says so on the console
// and ends cleanly (init counts it done) instead of crash-looping, and creates no
// identity.
func TestRunUnconfigured(t *testing.T) {
	dir := t.TempDir()
	var stdout bytes.Buffer
	args := []string{"--cmdline", filepath.Join(dir, "no-cmdline"), "--config", filepath.Join(dir, "none.toml"), "--hostname", "n1", "--state-dir", dir}
	if err := run(context.Background(), args, &stdout, io.Discard); err != nil {
		t.Fatalf("run(%q) = %v, want nil", args, err)
	}
	m, ok := quantix.ParseMarker(stdout.String())
	if !ok || m.Kind != quantix.MarkerWarning || m.Get("service") != "agent" || !strings.Contains(m.Get("msg"), "no vDC configured") {
		t.Errorf("stdout = %q, want an agent warning marker saying no vDC is configured", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "identity.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("identity.toml: %v, want none created", err)
	}
}

// TestRunRegisterPrecedence runs qx-node --register against a real vDC. The kernel
// command line names a vDC where nothing listens and a wrong token, agent.toml
// overrides the vDC and has a wrong token, the flag gives the right token: only
// the documented precedence registers. The management address comes from the
// test's own network namespace.
func TestRunRegisterPrecedence(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	mgmt, err := agent.DetectManagement(nil, "")
	if err != nil {
		t.Fatalf("this test needs a management address in its own namespace (a default route or a physical interface): %v", err)
	}
	v := vdctest.Start(t, vdctest.Options{Log: io.Discard})
	dir := t.TempDir()
	cmdline := write(t, filepath.Join(dir, "cmdline"), "console=ttyS0 quantix.vdc=http://127.0.0.1:1 quantix.token=cmdline-token quantix.hostname=cmd-node\n")
	conf := write(t, filepath.Join(dir, "agent.toml"), "control_plane = \""+v.AgentURL+"\"\njoin_token = \""+quantix.FormatJoinToken(v.Pin, "file-token-0123456789")+"\"\n[labels]\nrack = \"r7\"\n")
	state := filepath.Join(dir, "state")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"--register", "--cmdline", cmdline, "--config", conf, "--join-token", v.JoinToken,
		"--hostname", "cmd-node", "--state-dir", state, "--product-uuid", filepath.Join(dir, "none"),
		"--libvirt-uri", "qemu+unix:///system?socket=" + filepath.Join(dir, "no-sock")}
	if err := run(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("qx-node --register: %v\n%s", err, stderr.String())
	}
	m, ok := quantix.ParseMarker(stdout.String())
	if !ok || m.Get("service") != "agent" || m.Get("registration") != quantix.RegistrationRegistered {
		t.Fatalf("stdout %q, want the agent ready marker", stdout.String())
	}
	n := v.Node(t, m.Get("node_id"))
	if n.Hostname != "cmd-node" || n.ManagementIP != mgmt.IP.String() || n.Labels["rack"] != "r7" {
		t.Errorf("vDC node %+v, want cmd-node at %s with label rack=r7", n, mgmt.IP)
	}
	if _, err := os.Stat(filepath.Join(state, "identity.toml")); err != nil {
		t.Errorf("identity not created: %v", err)
	}
}

// TestShutdownGuests: `qx-node shutdown-guests` shuts the running domain of a real
// libvirtd (test driver) down; a libvirt that is not there is an error saying so.
// The ACPI-then-force path with a QEMU guest is TestFirmwareNICsAndPowerOff
// (agent/vms).
func TestShutdownGuests(t *testing.T) {
	if testing.Short() {
		t.Skip("starts libvirtd")
	}
	d := libvirtdtest.Start(t)
	var stderr bytes.Buffer
	marker := filepath.Join(t.TempDir(), "guests-stopping")
	if err := run(context.Background(), []string{"shutdown-guests", "--timeout", "5s", "--libvirt-uri", d.URI(), "--marker", marker}, io.Discard, &stderr); err != nil {
		t.Fatalf("shutdown-guests = %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "guests shut down") || !strings.Contains(stderr.String(), "forced_off=0") {
		t.Errorf("shutdown-guests said:\n%s", stderr.String())
	}
	// test:///default keeps its state per connection: what the command saw is
	// in its log (the running domain "test" shut down, none forced).
	if !strings.Contains(stderr.String(), "guests=1") {
		t.Errorf("shutdown-guests did not shut the running domain down:\n%s", stderr.String())
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("shutdown-guests run by hand left %s: the agent would start no guest", marker)
	}
	err := run(context.Background(), []string{"shutdown-guests", "--marker", marker, "--libvirt-uri", "test+unix:///default?socket=" + filepath.Join(t.TempDir(), "none")}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "libvirt") {
		t.Errorf("shutdown-guests without libvirt = %v, want an error naming libvirt", err)
	}
}
