package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// With QX_NET_MAIN set the test binary is qx-net itself, so exit codes can be
// checked.
func TestMain(m *testing.M) {
	if os.Getenv("QX_NET_MAIN") != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func qxnet(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "QX_NET_MAIN=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// netns makes a namespace with eth0 (a veth whose peer gw0 holds 10.78.0.1/24 in a
// second namespace) and returns its path.
func netns(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("network namespace test: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Fatalf("network namespace tests need root (or go test -short)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("ip not found: run make deps (apt-get install iproute2)")
	}
	name := fmt.Sprintf("qxnetcli%d", os.Getpid())
	ip := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name+"c")
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name+"c").Run() })
	ip("netns", "add", name+"f")
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name+"f").Run() })
	ip("-n", name+"c", "link", "add", "eth0", "type", "veth", "peer", "name", "gw0", "netns", name+"f")
	ip("-n", name+"f", "addr", "add", "10.78.0.1/24", "dev", "gw0")
	ip("-n", name+"f", "link", "set", "gw0", "up")
	return "/var/run/netns/" + name + "c"
}

const static = `interface = "eth0"
mode = "static"
[static]
address = "10.78.0.5/24"
gateway = "10.78.0.1"
`

func pathFlags(dir, ns string) []string {
	return []string{
		"--netns", ns,
		"--persistent", filepath.Join(dir, "quantix/network.toml"),
		"--session", filepath.Join(dir, "etc/network.toml"),
		"--resolv-conf", filepath.Join(dir, "etc/resolv.conf"),
		"--state-file", filepath.Join(dir, "run/network.json"),
		"--socket", filepath.Join(dir, "run/network.sock"),
		"--cmdline", filepath.Join(dir, "cmdline"),
		"--sysfs", filepath.Join(dir, "sys"),
		"--check-timeout", "1s",
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: qx-net serve"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"apply"}, 2, "--config FILE is required"},
		{[]string{"status", "--socket", "/nonexistent/sock"}, 1, "connect to the network service at /nonexistent/sock"},
		{[]string{"serve", "--log-level", "loud"}, 2, "--log-level"},
	}
	for _, tc := range tests {
		out, code := qxnet(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("qx-net %q = exit %d, %q; want exit %d and %q", tc.args, code, out, tc.code, tc.want)
		}
	}
}

func TestBadConfigExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(static+"speed = 100\n"), 0o644)
	out, code := qxnet(t, "apply", "--once", "--config", bad, "--socket", filepath.Join(dir, "none.sock"))
	if code != 78 || !strings.Contains(out, bad+":6") || !strings.Contains(out, `"static.speed"`) {
		t.Errorf("apply --once bad config = exit %d, %q; want 78 naming %s:6 and the key", code, out, bad)
	}
	ns := netns(t)
	flags := pathFlags(dir, ns)
	os.MkdirAll(filepath.Join(dir, "quantix"), 0o755)
	os.WriteFile(filepath.Join(dir, "quantix/network.toml"), []byte("mode = \"static\"\n"), 0o644)
	out, code = qxnet(t, append([]string{"serve"}, flags...)...)
	if code != 78 || !strings.Contains(out, "network.toml:1: static") {
		t.Errorf("serve with bad persistent config = exit %d, %q; want 78 (EX_CONFIG) naming the file", code, out)
	}
}

func TestApplyOnce(t *testing.T) {
	ns := netns(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "static.toml")
	os.WriteFile(file, []byte(static), 0o644)
	out, code := qxnet(t, append([]string{"apply", "--once", "--config", file}, pathFlags(dir, ns)...)...)
	if code != 0 || !strings.Contains(out, "address:         10.78.0.5/24") || !strings.Contains(out, "default routes:  default via 10.78.0.1 dev eth0") {
		t.Fatalf("apply --once = exit %d:\n%s", code, out)
	}
	// The Quantix-OS image default: the same file lands on br0 over eth0.
	out, code = qxnet(t, append([]string{"apply", "--once", "--config", file, "--bridge", "br0"}, pathFlags(dir, ns)...)...)
	if code != 0 || !strings.Contains(out, "interface:       br0 (") || !strings.Contains(out, "bridge port:     eth0") ||
		!strings.Contains(out, "default routes:  default via 10.78.0.1 dev br0") {
		t.Fatalf("apply --once --bridge br0 = exit %d:\n%s", code, out)
	}
	out, code = qxnet(t, append([]string{"apply", "--once", "--config", file, "--bridge", "eth0"}, pathFlags(dir, ns)...)...)
	if code != 78 || !strings.Contains(out, `bridge: "eth0" (the image default) is the interface itself`) {
		t.Errorf("apply --once --bridge eth0 = exit %d, %q; want 78 naming the bridge key", code, out)
	}
	unknown := filepath.Join(dir, "eth9.toml")
	os.WriteFile(unknown, []byte(strings.Replace(static, "eth0", "eth9", 1)), 0o644)
	out, code = qxnet(t, append([]string{"apply", "--once", "--config", unknown}, pathFlags(dir, ns)...)...)
	if code == 0 || !strings.Contains(out, "eth9") {
		t.Errorf("apply --once on a missing interface = exit %d, %q; want failure naming eth9", code, out)
	}
}

// TestServeStatusApply runs `qx-net serve` in-process and drives it with the CLI.
func TestServeStatusApply(t *testing.T) {
	ns := netns(t)
	dir := t.TempDir()
	flags := pathFlags(dir, ns)
	os.MkdirAll(filepath.Join(dir, "quantix"), 0o755)
	os.WriteFile(filepath.Join(dir, "quantix/network.toml"), []byte(static), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"serve"}, flags...), pw, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(pr).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, pr)
	}()
	select {
	case line := <-ready:
		m, ok := quantix.ParseMarker(line)
		if !ok || m.Kind != quantix.MarkerReady || m.Get("service") != "network" || m.Get("addr") != "10.78.0.5/24" || m.Get("source") != "static" {
			t.Fatalf("first stdout line = %q, want the network ready marker", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ready marker")
	}
	sock := filepath.Join(dir, "run/network.sock")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"status", "--json", "--socket", sock}, &out, io.Discard); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var st network.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.Address != "10.78.0.5/24" || len(st.DefaultRoutes) != 1 {
		t.Errorf("status --json = %s, %v", out.String(), err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"status", "--socket", sock}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "source:          static") {
		t.Errorf("status = %v:\n%s", err, out.String())
	}

	moved := filepath.Join(dir, "moved.toml")
	os.WriteFile(moved, []byte(strings.Replace(static, "10.78.0.5/24", "10.78.0.6/24", 1)), 0o644)
	out.Reset()
	if err := run(context.Background(), []string{"apply", "--config", moved, "--socket", sock}, &out, io.Discard); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "rolls back at") || !strings.Contains(out.String(), "pending:         "+moved) {
		t.Errorf("apply output:\n%s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"confirm", "--socket", sock}, &out, io.Discard); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "quantix/network.toml")); !strings.Contains(string(b), "10.78.0.6/24") {
		t.Errorf("persistent file after confirm = %q", b)
	}
	// Rejected: the confirmed settings come back at once, verified.
	moved7 := filepath.Join(dir, "moved7.toml")
	os.WriteFile(moved7, []byte(strings.Replace(static, "10.78.0.5/24", "10.78.0.7/24", 1)), 0o644)
	if err := run(context.Background(), []string{"apply", "--config", moved7, "--socket", sock}, io.Discard, io.Discard); err != nil {
		t.Fatalf("apply moved7: %v", err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"rollback", "--socket", sock}, &out, io.Discard); err != nil {
		t.Fatalf("rollback: %v\n%s", err, out.String())
	}
	for _, want := range []string{"address:         10.78.0.6/24", "pending:         none", "(verified): rejected by qx-net rollback", "rolled back\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rollback output lacks %q:\n%s", want, out.String())
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "quantix/network.toml")); !strings.Contains(string(b), "10.78.0.6/24") {
		t.Errorf("persistent file after rollback = %q", b)
	}
	if err := run(context.Background(), []string{"rollback", "--socket", sock}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "nothing to roll back") {
		t.Errorf("rollback with nothing pending = %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(strings.Replace(static, "10.78.0.1", "10.79.0.1", 1)), 0o644)
	err := run(context.Background(), []string{"apply", "--config", bad, "--socket", sock}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), bad+":5: static.gateway: 10.79.0.1 is not inside 10.78.0.0/24") {
		t.Errorf("apply bad = %v", err)
	}
}
