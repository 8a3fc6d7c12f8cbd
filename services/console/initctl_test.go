package console

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd"
)

// shService is a service as /bin/sh runs it: it says it is ready, then waits for
// SIGTERM and exits 0.
func shService(name string, deps ...string) quantix.Service {
	return quantix.Service{Name: name, Command: "/bin/sh", DependsOn: deps, Args: []string{"-c",
		"echo 'QUANTIX: ready service=" + name + "'; echo " + name + " is up >&2; trap 'exit 0' TERM; while :; do sleep 0.05; done"}}
}

// TestInitClientRealSupervisor: the console's InitClient against qx-init's real
// control socket and supervisor with real child processes: states, a restart that
// replaces the process, an unknown name, power, and a restart refused during the
// poweroff.
func TestInitClientRealSupervisor(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Fatalf("no /bin/sh: run make deps (apt-get install dash)")
	}
	dir, err := os.MkdirTemp("", "qxcon") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup, err := initd.NewSupervisor(initd.SupervisorConfig{
		Services: []quantix.Service{shService("network"), shService("agent", "network")},
		LogDir:   filepath.Join(dir, "log"), Grace: 2 * time.Second,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	actions := make(chan quantix.HaltAction, 1)
	ctl := initd.NewControl(sup, actions, log)
	sock := filepath.Join(dir, "init.sock")
	ln, err := ctl.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-sup.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatal("services not ready")
	}

	c := InitClient{Socket: sock}
	byName := func() map[string]ServiceState {
		t.Helper()
		tctx, tcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer tcancel()
		svcs, err := c.Services(tctx)
		if err != nil {
			t.Fatalf("Services: %v", err)
		}
		m := map[string]ServiceState{}
		for _, s := range svcs {
			m[s.Name] = s
		}
		return m
	}
	before := byName()
	for _, name := range []string{"network", "agent"} {
		s := before[name]
		if s.State != quantix.ServiceReady || s.PID <= 0 || syscall.Kill(s.PID, 0) != nil || s.Origin != "init" || s.Since.IsZero() {
			t.Errorf("%s = %+v, want ready from init with a live pid", name, s)
		}
	}

	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if err := c.Restart(rctx, "network"); err != nil {
		t.Fatalf("Restart(network): %v", err)
	}
	after := byName()
	if n := after["network"]; n.PID == before["network"].PID || n.Restarts != 1 || syscall.Kill(before["network"].PID, 0) == nil {
		t.Errorf("network after restart = %+v, before %+v: want a new process, the old one gone", n, before["network"])
	}
	if a := after["agent"]; a.PID != before["agent"].PID {
		t.Errorf("agent pid %d -> %d: restarting network must not touch its dependants", before["agent"].PID, a.PID)
	}
	err = c.Restart(rctx, "nosuch")
	if err == nil || !strings.Contains(err.Error(), `restart nosuch: unknown service (services: network, agent)`) || errors.Is(err, quantix.ErrInitUnsupported) {
		t.Errorf("Restart(nosuch) = %v, want unknown service naming the known ones", err)
	}

	if err := c.Power(rctx, PowerReboot); err != nil {
		t.Fatalf("Power(reboot): %v", err)
	}
	if a := <-actions; a != quantix.Reboot {
		t.Errorf("init got %q, want reboot", a)
	}
	if err := c.Restart(rctx, "agent"); err == nil || !strings.Contains(err.Error(), "shutting down (reboot)") {
		t.Errorf("Restart during reboot = %v, want refused", err)
	}
}
