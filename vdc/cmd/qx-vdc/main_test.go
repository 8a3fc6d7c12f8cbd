package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestMain runs the real main when re-executed by the process tests.
func TestMain(m *testing.M) {
	if os.Getenv("QX_VDC_RUN_MAIN") == "1" {
		os.Args = append([]string{"qx-vdc"}, strings.Fields(os.Getenv("QX_VDC_ARGS"))...)
		main()
		os.Exit(0)
	}
	vdctest.Main(m)
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"migrate"}, "migrate needs up or status"},
		{[]string{"migrate", "sideways"}, "migrate needs up or status"},
		{[]string{"serve", "--heartbeat-interval", "soon"}, "heartbeat-interval"},
		{[]string{"serve", "--no-such-flag"}, "no-such-flag"},
		{[]string{"serve", "--heartbeat-interval", "1ms"}, "heartbeat_interval"},
		{[]string{"serve", "--config", "/nonexistent/vdc.toml"}, "/nonexistent/vdc.toml"},
		{[]string{"serve", "extra"}, `unexpected argument "extra"`},
		{[]string{"serve", "--ui-listen", "nope"}, "ui_listen"},
		{[]string{"serve", "--tls-key", "/k.pem"}, "tls_cert and tls_key go together"},
	}
	for _, tc := range cases {
		var out, errb bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errb)
		if !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error()+errb.String(), tc.want) {
			t.Errorf("run(%q) = %v (stderr %q), want a configuration error naming %q", tc.args, err, errb.String(), tc.want)
		}
	}
}

func TestMigrateCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	dbURL := vdctest.Shared(t).NewDatabase(t)
	ctx := context.Background()
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "status", "--database-url", dbURL}, "schema version 0 of 10 (10 pending)"},
		{[]string{"migrate", "up", "--database-url", dbURL}, "applied 10 migration(s)\nschema version 10 of 10 (0 pending)"},
		{[]string{"migrate", "up", "--database-url", dbURL}, "applied 0 migration(s)"},
		{[]string{"migrate", "status", "--database-url", dbURL}, "schema version 10 of 10 (0 pending)"},
	}
	for _, s := range steps {
		var out, errb bytes.Buffer
		if err := run(ctx, s.args, &out, &errb); err != nil {
			t.Fatalf("run(%q): %v\n%s", s.args[:2], err, errb.String())
		}
		if !strings.Contains(out.String(), s.want) {
			t.Errorf("run(%q) printed %q, want %q", s.args[:2], out.String(), s.want)
		}
	}
}

// TestServeProcess runs qx-vdc serve as a process: it prints the ready marker on
// stdout, and SIGTERM stops it with status 0 within a few seconds; a bad
// configuration exits 78.
func TestServeProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := vdctest.Shared(t)
	dbURL := pg.NewDatabase(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "vdc.toml")
	os.WriteFile(conf, []byte("listen = \"127.0.0.1:0\"\nui_listen = \"127.0.0.1:0\"\nheartbeat_interval = \"3s\"\nsecrets_file = \""+filepath.Join(dir, "secrets.toml")+"\"\ndata_dir = \""+dir+"\"\n"), 0o644)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "QX_VDC_RUN_MAIN=1",
		"QX_VDC_ARGS=serve --config "+conf+" --database-url "+dbURL+" --join-token 0123456789abcdef0123")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var ready quantix.Marker
	var sawToken bool
	deadline := time.After(30 * time.Second)
	for ready.Kind == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("qx-vdc exited before ready:\n%s", stderr.String())
			}
			if m, ok := quantix.ParseMarker(l); ok {
				switch m.Kind {
				case quantix.MarkerAdminToken:
					sawToken = true
				case quantix.MarkerReady:
					ready = m
				}
			}
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("no ready marker in 30s:\n%s", stderr.String())
		}
	}
	if ready.Get("service") != "vdc" || !strings.HasPrefix(ready.Get("url"), "https://127.0.0.1:") || !quantix.ValidPin(ready.Get("agent_ca_pin")) ||
		!strings.HasPrefix(ready.Get("ui"), "https://127.0.0.1:") {
		t.Errorf("ready marker = %v", ready)
	}
	if !sawToken {
		t.Errorf("first start without an admin token printed no admin-token line")
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if err != nil || time.Since(start) > 5*time.Second {
		t.Errorf("after SIGTERM: %v after %s, want exit 0 within 5s\n%s", err, time.Since(start), stderr.String())
	}

	// A configuration error exits 78 (EX_CONFIG).
	bad := exec.Command(os.Args[0], "-test.run=^$")
	bad.Env = append(os.Environ(), "QX_VDC_RUN_MAIN=1", "QX_VDC_ARGS=serve --config "+conf+" --database-url postgres://quantix@127.0.0.1:1/x")
	out, err := bad.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != quantix.ExitConfig || !strings.Contains(string(out), "database_password") {
		t.Errorf("serve without any database password: %v\n%s; want exit 78 naming database_password", err, out)
	}
}
