package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd"
)

// TestClientCommands runs qx-init's client commands against a real supervisor and
// its control socket: services (table and JSON), restart, and their errors.
func TestClientCommands(t *testing.T) {
	dir, err := os.MkdirTemp("", "qxinit") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup, err := initd.NewSupervisor(initd.SupervisorConfig{Services: []quantix.Service{
		{Name: "network", Command: "/bin/sh", Args: []string{"-c", "echo 'QUANTIX: ready service=network'; trap 'exit 0' TERM; while :; do sleep 0.05; done"}},
		{Name: "broken", Command: "/bin/sh", Args: []string{"-c", "echo 'cannot work' >&2; exit 3"}},
	}, Grace: 2 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "init.sock")
	ln, err := initd.NewControl(sup, make(chan quantix.HaltAction, 1), log).Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-sup.Ready("network")
	deadline := time.Now().Add(10 * time.Second)
	for sup.Services()[1].LastError == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}

	var out bytes.Buffer
	if err := runClient(context.Background(), quantix.InitClient{Socket: sock}, []string{"services"}, &out); err != nil {
		t.Fatalf("services: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "SERVICE") || !strings.HasPrefix(lines[1], "network  ready") ||
		!strings.Contains(lines[2], "broken") || !strings.HasSuffix(lines[2], "cannot work") {
		t.Errorf("services table:\n%s", out.String())
	}
	out.Reset()
	if err := runClient(context.Background(), quantix.InitClient{Socket: sock}, []string{"services", "--json"}, &out); err != nil {
		t.Fatalf("services --json: %v", err)
	}
	var js struct{ Services []quantix.ServiceStatus }
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.Services) != 2 || js.Services[0].PID <= 0 {
		t.Errorf("services --json = %s (%v)", out.String(), err)
	}
	old := js.Services[0].PID

	out.Reset()
	if err := runClient(context.Background(), quantix.InitClient{Socket: sock}, []string{"restart", "network"}, &out); err != nil || out.String() != "network restarted\n" {
		t.Fatalf("restart network = %q, %v", out.String(), err)
	}
	if now := sup.Services()[0]; now.PID == old || now.Restarts != 1 {
		t.Errorf("network after restart = %+v, old pid %d", now, old)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"restart", "nope"}, "restart nope: unknown service (services: network, broken)"},
		{[]string{"restart"}, "usage: qx-init restart NAME"},
		{[]string{"services", "-v"}, `unexpected argument "-v"`},
		{[]string{"poweroff", "now"}, "poweroff takes no arguments"},
		{[]string{"halt"}, `unknown command "halt"`},
	} {
		if err := runClient(context.Background(), quantix.InitClient{Socket: sock}, tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("qx-init %s = %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
