package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// The test binary doubles as qx-postgres, so the process contract (markers on
// stdout, exit statuses, SIGTERM) is tested on a real process.
func TestMain(m *testing.M) {
	if os.Getenv("QX_POSTGRES_BE_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func command(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "QX_POSTGRES_BE_MAIN=1")
	return cmd
}

func requirePostgres(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real PostgreSQL server; skipped with -short")
	}
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/postgres"); err != nil {
		t.Fatalf("PostgreSQL 15 is missing (%v): run make deps (apt-get install postgresql-15)", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("qx-postgres drops privileges to the postgres user: run the test as root")
	}
}

// setup writes a postgres.toml for a fresh folder the postgres user can reach.
func setup(t *testing.T, extra string) (root, config string) {
	t.Helper()
	root, err := os.MkdirTemp("/tmp", "qxpgcmd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	config = filepath.Join(root, "postgres.toml")
	toml := fmt.Sprintf("data_root = %q\nsocket_dir = %q\nport = %d\nsecrets = %q\n%s",
		filepath.Join(root, "data"), filepath.Join(root, "run"), port, filepath.Join(root, "secrets.toml"), extra)
	if err := os.WriteFile(config, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, config
}

func TestServeReadyAndSIGTERM(t *testing.T) {
	requirePostgres(t)
	root, config := setup(t, "")
	cmd := command(t, "serve", "--config", config)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var ready quantix.Marker
	timeout := time.After(2 * time.Minute)
	for ready.Kind == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("stdout closed before the ready marker; stderr:\n%s", stderr.String())
			}
			if m, ok := quantix.ParseMarker(line); ok && m.Kind == quantix.MarkerReady {
				ready = m
			} else if !ok {
				t.Errorf("stdout line %q is not a marker (logs belong on stderr)", line)
			}
		case <-timeout:
			cmd.Process.Kill()
			t.Fatalf("no ready marker within 2 minutes; stderr:\n%s", stderr.String())
		}
	}
	if ready.Get("service") != "postgres" || ready.Get("version") != "15" || ready.Get("data") != filepath.Join(root, "data", "postgresql") {
		t.Errorf("ready marker = %q", ready.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for range lines {
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("qx-postgres after SIGTERM: %v, want exit 0; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("qx-postgres did not exit within 30 s of SIGTERM")
	}
	if !strings.Contains(stderr.String(), "database system is shut down") {
		t.Errorf("stderr lacks the server's clean shutdown:\n%s", stderr.String())
	}
}

func TestExitStatus(t *testing.T) {
	requirePostgres(t)
	tests := []struct {
		name     string
		args     func(root, config string) []string
		prepare  func(t *testing.T, root string)
		extra    string
		status   int
		lastLine string
	}{
		{
			name: "another major version is EX_CONFIG",
			args: func(_, config string) []string { return []string{"serve", "--config", config} },
			prepare: func(t *testing.T, root string) {
				dir := filepath.Join(root, "data", "postgresql")
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("13\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			status:   78,
			lastLine: "holds a PostgreSQL 13 cluster but this appliance runs PostgreSQL 15",
		},
		{
			name:     "unknown key is EX_CONFIG",
			args:     func(_, config string) []string { return []string{"serve", "--config", config} },
			extra:    "listen = \"0.0.0.0\"\n",
			status:   78,
			lastLine: `postgres.toml:5: unknown key "listen"`,
		},
		{
			name:     "missing explicit config is EX_CONFIG",
			args:     func(root, _ string) []string { return []string{"serve", "--config", filepath.Join(root, "nope.toml")} },
			status:   78,
			lastLine: "nope.toml",
		},
		{
			name:     "unknown command",
			args:     func(_, _ string) []string { return []string{"start"} },
			status:   2,
			lastLine: `unknown command "start"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, config := setup(t, tt.extra)
			if tt.prepare != nil {
				tt.prepare(t, root)
			}
			cmd := command(t, tt.args(root, config)...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != tt.status {
				t.Fatalf("qx-postgres %v: %v, want exit status %d; output:\n%s", cmd.Args[1:], err, tt.status, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if last := lines[len(lines)-1]; !strings.Contains(last, tt.lastLine) {
				t.Errorf("last output line %q lacks %q", last, tt.lastLine)
			}
		})
	}
}

func TestPrepareDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("runs mkfs.ext4")
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		mkfs = "/usr/sbin/mkfs.ext4"
		if _, err := os.Stat(mkfs); err != nil {
			t.Fatalf("mkfs.ext4 is missing: run make deps (apt-get install e2fsprogs)")
		}
	}
	img := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "postgres.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf("data_device = %q\n", img)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Not allowed by the config: refused, exit 78.
	out, err := command(t, "prepare-disk", "--config", config).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 78 || !strings.Contains(string(out), "format_blank_data is false") {
		t.Fatalf("prepare-disk without permission: %v\n%s", err, out)
	}
	// The flag allows it.
	out, err = command(t, "prepare-disk", "--config", config, "--format-blank-data").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "formatted "+img+" as QUANTIX-DATA") {
		t.Fatalf("prepare-disk --format-blank-data: %v\n%s", err, out)
	}
	// The next boot finds it and formats nothing.
	before, _ := os.ReadFile(img)
	out, err = command(t, "prepare-disk", "--config", config, "--format-blank-data").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "QUANTIX-DATA is "+img) {
		t.Fatalf("prepare-disk on the formatted device: %v\n%s", err, out)
	}
	if after, _ := os.ReadFile(img); string(after) != string(before) {
		t.Errorf("prepare-disk changed the already formatted device")
	}
	// A device holding another filesystem is refused.
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "photos", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	out, err = command(t, "prepare-disk", "--config", config, "--format-blank-data").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 78 || !strings.Contains(string(out), `labelled "photos"`) {
		t.Fatalf("prepare-disk on a foreign filesystem: %v\n%s", err, out)
	}
}
