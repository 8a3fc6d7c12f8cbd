package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/console"
)

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  string
		usage bool
	}{
		{"unknown flag", []string{"--bogus"}, "", "flag provided but not defined: -bogus", true},
		{"argument", []string{"--tty", "/dev/tty1", "extra"}, "", `unexpected argument "extra"`, true},
		{"unknown command", []string{"shell"}, "", `unknown command "shell"`, true},
		{"short password", []string{"hash-password"}, "short\n", "at least 8 characters", true},
		{"no password", []string{"hash-password"}, "", "read password from stdin", false},
		{"bad tty", []string{"--tty", "/nonexistent/tty9", "--image", "quantix-os"}, "", "open tty /nonexistent/tty9", false},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		stdin := strings.NewReader(tt.stdin)
		err := run(context.Background(), tt.args, stdin, &out, &out)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tt.want) || errors.As(err, &ue) != tt.usage {
			t.Errorf("%s: run(%q) = %v (usage error %v), want %q (usage error %v)", tt.name, tt.args, err, errors.As(err, &ue), tt.want, tt.usage)
		}
	}
}

func TestHashPasswordCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"hash-password"}, strings.NewReader("correct horse\n"), &out, &errb); err != nil {
		t.Fatal(err)
	}
	h := strings.TrimSpace(out.String())
	if err := console.VerifyPassword(h, "correct horse"); err != nil {
		t.Fatalf("hash-password printed %q: %v", h, err)
	}
	path := filepath.Join(t.TempDir(), "console", "password")
	out.Reset()
	if err := run(context.Background(), []string{"set-password", "--password-file", path}, strings.NewReader("correct horse"), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if err := (console.PasswordStore{Path: path}).Verify("correct horse"); err != nil {
		t.Fatalf("set-password: %v", err)
	}
}

// A console configured on a terminal this machine lacks exits 78 (EX_CONFIG), so
// init shows a fatal marker naming it and retries slowly instead of crash-looping.
func TestMissingTTYExitsConfig(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--name", "console-serial", "--tty", "/nonexistent/ttyS9", "--image", "quantix-os")
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != quantix.ExitConfig {
		t.Fatalf("qx-console on a missing tty: %v, want exit status %d\n%s", err, quantix.ExitConfig, out)
	}
	if !strings.Contains(string(out), "open tty /nonexistent/ttyS9: no such terminal on this machine") {
		t.Errorf("qx-console's error does not name the missing terminal:\n%s", out)
	}
}
