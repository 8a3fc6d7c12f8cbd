package initd

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
)

// controlLab is a supervisor of real child processes (this test binary in helper
// modes, see TestMain) answering on a real control socket.
type controlLab struct {
	sup     *Supervisor
	ctl     *Control
	socket  string
	events  string
	console *lockedBuffer
	actions chan quantix.HaltAction
	cancel  context.CancelFunc
	done    chan error
}

func startControlLab(t *testing.T, modes map[string]string, deps map[string][]string, order []string) *controlLab {
	t.Helper()
	sup, console, events, _ := newSup(t, modes, deps, order, nil)
	sup.cfg.Grace = 500 * time.Millisecond
	l := &controlLab{sup: sup, console: console, events: events, actions: make(chan quantix.HaltAction, 1), done: make(chan error, 1)}
	// Not t.TempDir: unix socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "qxinit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l.socket = filepath.Join(dir, "init.sock")
	l.ctl = NewControl(sup, l.actions, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := l.ctl.Listen(l.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() { l.done <- sup.Run(ctx) }()
	t.Cleanup(l.stop)
	return l
}

func (l *controlLab) stop() {
	l.cancel()
	<-l.done
	l.done <- nil // a second stop returns at once
}

// services asks over the socket, as qx-console and qx-init services do.
func (l *controlLab) services(t *testing.T) map[string]quantix.ServiceStatus {
	t.Helper()
	resp, err := ask(l.socket, "services", 5*time.Second)
	if err != nil {
		t.Fatalf("services: %v", err)
	}
	var out struct {
		Services []quantix.ServiceStatus `json:"services"`
	}
	dec := json.NewDecoder(strings.NewReader(resp))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("services answer %q: %v", resp, err)
	}
	m := map[string]quantix.ServiceStatus{}
	for _, s := range out.Services {
		m[s.Name] = s
	}
	return m
}

func (l *controlLab) waitState(t *testing.T, name, state string) quantix.ServiceStatus {
	t.Helper()
	var last quantix.ServiceStatus
	waitFor(t, name+" "+state, func() bool {
		last = l.services(t)[name]
		return last.State == state
	})
	return last
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// TestControlServicesAndRestart drives the supervisor through its control socket:
// states with real pids, a restart that stops the old process cleanly and starts a
// new one while the dependant keeps running, serialized concurrent restarts, a
// done service run again, a SIGTERM-ignoring service killed after the grace
// period, and an unknown name.
func TestControlServicesAndRestart(t *testing.T) {
	modes := map[string]string{"network": "ready", "agent": "ready", "setup": "once", "stubborn": "ignore-term"}
	l := startControlLab(t, modes, map[string][]string{"agent": {"network"}}, []string{"network", "agent", "setup", "stubborn"})
	select {
	case <-l.sup.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("not all ready; events %v", readEvents(t, l.events))
	}
	l.waitState(t, "setup", quantix.ServiceDone)
	st := l.services(t)
	for _, name := range []string{"network", "agent", "stubborn"} {
		s := st[name]
		if s.State != quantix.ServiceReady || !alive(s.PID) || s.Since.IsZero() || s.Restarts != 0 || s.LastError != "" {
			t.Errorf("%s = %+v, want ready with a live pid, no restarts", name, s)
		}
	}
	if s := st["setup"]; s.PID != 0 || s.Restarts != 0 {
		t.Errorf("setup = %+v, want done without a pid", s)
	}

	oldNet, agent := st["network"], st["agent"]
	if resp, err := ask(l.socket, "restart network", 10*time.Second); err != nil || resp != "ok" {
		t.Fatalf("restart network = %q, %v; want ok", resp, err)
	}
	if alive(oldNet.PID) {
		t.Errorf("the old network process %d still runs after the restart", oldNet.PID)
	}
	s := l.waitState(t, "network", quantix.ServiceReady)
	if s.PID == oldNet.PID || !alive(s.PID) || s.Restarts != 1 || !s.Since.After(oldNet.Since) {
		t.Errorf("network after restart = %+v (before %+v), want a new live pid, restarts 1", s, oldNet)
	}
	if a := l.services(t)["agent"]; a.PID != agent.PID || !alive(a.PID) || a.State != quantix.ServiceReady || a.Restarts != 0 {
		t.Errorf("agent after restarting network = %+v, want the same process %d still ready (dependants are not killed)", a, agent.PID)
	}
	ev := readEvents(t, l.events)
	if i, j := index(ev, "network stop"), lastIndex(ev, "network start"); i < 0 || j < i {
		t.Errorf("want a clean stop (SIGTERM) before the new start; events %v", ev)
	}
	if index(ev, "agent stop") >= 0 {
		t.Errorf("agent was stopped by its dependency's restart; events %v", ev)
	}

	// Two restarts at once: serialized, never two network processes at a time.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { _, errs[i] = ask(l.socket, "restart network", 10*time.Second) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Errorf("concurrent restart: %v", err)
		}
	}
	s = l.waitState(t, "network", quantix.ServiceReady)
	if s.Restarts != 3 {
		t.Errorf("network restarts = %d after three restarts, want 3", s.Restarts)
	}
	running := 0
	for _, e := range readEvents(t, l.events) {
		switch e {
		case "network start":
			running++
		case "network stop":
			running--
		}
		if running > 1 {
			t.Fatalf("two network processes ran at once; events %v", readEvents(t, l.events))
		}
	}

	// A finished service runs again.
	if _, err := ask(l.socket, "restart setup", 10*time.Second); err != nil {
		t.Errorf("restart setup: %v", err)
	}
	l.waitState(t, "setup", quantix.ServiceDone)
	if n := strings.Count(strings.Join(readEvents(t, l.events), "\n"), "setup start"); n != 2 {
		t.Errorf("setup ran %d times, want twice", n)
	}

	// SIGTERM ignored: killed after the grace period, then started again.
	old := l.services(t)["stubborn"]
	t0 := time.Now()
	if _, err := ask(l.socket, "restart stubborn", 10*time.Second); err != nil {
		t.Errorf("restart stubborn: %v", err)
	}
	if took := time.Since(t0); took < l.sup.Grace() {
		t.Errorf("stubborn restarted after %s, before the %s grace period", took, l.sup.Grace())
	}
	if s := l.waitState(t, "stubborn", quantix.ServiceReady); s.PID == old.PID || alive(old.PID) {
		t.Errorf("stubborn after restart = %+v; old pid %d alive %v", s, old.PID, alive(old.PID))
	}

	for _, tc := range []struct{ req, want string }{
		{"restart nope", `nope: unknown service (services: network, agent, setup, stubborn)`},
		{"restart", "restart needs one service name"},
		{"restart a b", "restart needs one service name"},
		{"status", `unknown request "status"`},
	} {
		if resp, err := ask(l.socket, tc.req, 5*time.Second); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s = %q, %v; want an error containing %q", tc.req, resp, err, tc.want)
		}
	}
}

// TestControlRestartFails: a service whose program is gone cannot start again; the
// restart says why and the state shows it.
func TestControlRestartFails(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "svc.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'QUANTIX: ready service=svc'\ntrap 'exit 0' TERM\nwhile :; do sleep 0.05; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	console := &lockedBuffer{}
	sup, err := NewSupervisor(SupervisorConfig{Services: []quantix.Service{{Name: "svc", Command: script}}, Console: console, Grace: 2 * time.Second},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	runSup(t, sup)
	select {
	case <-sup.Ready("svc"):
	case <-time.After(10 * time.Second):
		t.Fatalf("svc not ready:\n%s", console.String())
	}
	if err := os.Remove(script); err != nil {
		t.Fatal(err)
	}
	err = sup.Restart(context.Background(), "svc")
	if err == nil || !strings.Contains(err.Error(), "restart svc: start "+script) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Restart(svc) with its program gone = %v, want the start error", err)
	}
	s := sup.Services()[0]
	if s.State != quantix.ServiceFailed || s.PID != 0 || !strings.Contains(s.LastError, "no such file") {
		t.Errorf("svc = %+v, want failed naming the missing program", s)
	}
	waitFor(t, "the fatal marker", func() bool { return bytes.Contains([]byte(console.String()), []byte("QUANTIX: fatal service=svc")) })
}

// TestControlRefusesRestartDuringShutdown: once a poweroff is accepted, restarts
// are refused; the supervisor refuses them too once it stops.
func TestControlRefusesRestartDuringShutdown(t *testing.T) {
	l := startControlLab(t, map[string]string{"network": "ready"}, nil, []string{"network"})
	select {
	case <-l.sup.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatal("not ready")
	}
	if err := (quantix.InitClient{Socket: l.socket}).Power(context.Background(), quantix.Poweroff); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	if a := <-l.actions; a != quantix.Poweroff {
		t.Errorf("action = %q, want poweroff", a)
	}
	if _, err := ask(l.socket, "restart network", 5*time.Second); err == nil || !strings.Contains(err.Error(), "the system is shutting down (poweroff)") {
		t.Errorf("restart during poweroff = %v, want refused", err)
	}
	if s := l.services(t)["network"]; s.State != quantix.ServiceReady || s.Restarts != 0 {
		t.Errorf("network = %+v, want untouched by the refused restart", s)
	}
	l.stop()
	if err := l.sup.Restart(context.Background(), "network"); err == nil || !strings.Contains(err.Error(), ErrShuttingDown.Error()) {
		t.Errorf("Restart after stop = %v, want ErrShuttingDown", err)
	}
	if s := l.sup.Services()[0]; s.State != quantix.ServiceStopped || s.PID != 0 {
		t.Errorf("network after stop = %+v, want stopped", s)
	}
}

func lastIndex(events []string, e string) int {
	for i := len(events) - 1; i >= 0; i-- {
		if events[i] == e {
			return i
		}
	}
	return -1
}

// stuckClock never fires: a service in its backoff wait stays there until a
// restart wakes it. It records the delays asked for.
type stuckClock struct{ fakeClock }

func (c *stuckClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.delays = append(c.delays, d)
	return make(chan time.Time)
}

// TestRestartResetsBackoff: a crashing service waiting out its backoff starts at
// once on a restart request, and its backoff starts again from the minimum; its
// dependant, still waiting for it, cannot be restarted.
func TestRestartResetsBackoff(t *testing.T) {
	clock := &stuckClock{fakeClock{now: time.Unix(1700000000, 0)}}
	s, _, events, _ := newSup(t, map[string]string{"crash": "fail", "dep": "ready"}, map[string][]string{"dep": {"crash"}}, []string{"crash", "dep"}, clock)
	runSup(t, s)
	waitFor(t, "the first backoff", func() bool { return len(clock.Delays()) == 1 })
	if st := s.Services()[0]; st.State != quantix.ServiceRestarting || st.LastError != "level=ERROR msg=crashed" || st.PID != 0 {
		t.Errorf("crash = %+v, want restarting with its last stderr line", st)
	}
	for i := 0; i < 2; i++ {
		if err := s.Restart(context.Background(), "crash"); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		waitFor(t, "the next backoff", func() bool { return len(clock.Delays()) == i+2 })
	}
	if diff := cmp.Diff([]time.Duration{time.Second, time.Second, time.Second}, clock.Delays()); diff != "" {
		t.Errorf("backoff delays (-want +got):\n%s", diff)
	}
	if n := strings.Count(strings.Join(readEvents(t, events), "\n"), "crash start"); n != 3 {
		t.Errorf("crash started %d times, want 3", n)
	}
	if st := s.Services()[0]; st.Restarts != 2 {
		t.Errorf("restarts = %d, want 2", st.Restarts)
	}
	// Its dependant never started: nothing to restart yet.
	if err := s.Restart(context.Background(), "dep"); err == nil || err.Error() != "restart dep: not started yet: it waits for crash to be ready" {
		t.Errorf("Restart(dep) = %v, want refused: it waits for crash", err)
	}
	if st := s.Services()[1]; st.State != quantix.ServiceWaiting || st.PID != 0 || st.Restarts != 0 {
		t.Errorf("dep = %+v, want waiting", st)
	}
}

// BenchmarkRestart is `qx-init restart` of a /bin/sh service over the control
// socket: SIGTERM, the process gone, a new one started.
//
//	go test -run '^$' -bench Restart -benchtime 20x ./services/init/
func BenchmarkRestart(b *testing.B) {
	dir, err := os.MkdirTemp("", "qxinit")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup, err := NewSupervisor(SupervisorConfig{Services: []quantix.Service{{Name: "svc", Command: "/bin/sh",
		Args: []string{"-c", "echo 'QUANTIX: ready service=svc'; trap 'exit 0' TERM; while :; do sleep 0.01; done"}}}, Grace: 5 * time.Second}, log)
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "init.sock")
	ln, err := NewControl(sup, make(chan quantix.HaltAction, 1), log).Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-sup.Ready("svc")
	for b.Loop() {
		if _, err := ask(sock, "restart svc", 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/op")
}

// ask sends one request through the shared client, as qx-init's CLI does.
func ask(socket, req string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return quantix.InitClient{Socket: socket}.Ask(ctx, req)
}
