package initd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
)

// The test binary doubles as the services: QX_HELPER selects what it does, and it
// appends "<name> start|ready|stop" to QX_EVENTS so tests can check the order.
func TestMain(m *testing.M) {
	if mode := os.Getenv("QX_HELPER"); mode == "console" {
		os.Exit(consoleHelper(os.Args[1:]))
	} else if mode != "" {
		os.Exit(helper(mode, os.Getenv("QX_NAME"), os.Getenv("QX_EVENTS")))
	}
	os.Exit(m.Run())
}

func event(file, name, what string) {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(f, "%s %s\n", name, what)
	f.Close()
}

func helper(mode, name, events string) int {
	event(events, name, "start")
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	switch mode {
	case "ready", "ignore-term":
		fmt.Fprintln(os.Stderr, "level=INFO msg=starting")
		time.Sleep(50 * time.Millisecond)
		if mode == "ignore-term" {
			// Before the ready marker: a SIGTERM that came while Go swaps its
			// handler for SIG_IGN would still end the process.
			signal.Ignore(syscall.SIGTERM)
		}
		event(events, name, "ready")
		fmt.Println(quantix.ReadyMarker(name, "addr", "10.0.0.5/24"))
		if mode == "ignore-term" {
			for {
				time.Sleep(time.Hour)
			}
		}
		<-term
		event(events, name, "stop")
		return 0
	case "fail":
		fmt.Fprintln(os.Stderr, "level=ERROR msg=crashed")
		return 1
	case "config":
		fmt.Fprintln(os.Stderr, "level=ERROR msg=\"network.toml: gateway 10.0.1.1 is not inside 10.0.0.0/24\"")
		return quantix.ExitConfig
	case "once":
		fmt.Println("did the one thing")
		return 0
	}
	return 2
}

// consoleHelper stands in for qx-console: it opens its --tty, writes its
// arguments there, prints its ready marker and waits for SIGTERM.
func consoleHelper(args []string) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	name, tty := flagValue(args, "name"), flagValue(args, "tty")
	f, err := os.OpenFile(tty, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open tty:", err)
		return 1
	}
	defer f.Close()
	fmt.Fprintf(f, "%s args: %s\r\n", name, strings.Join(args, " "))
	fmt.Println(quantix.ReadyMarker(name, "tty", tty))
	<-term
	return 0
}

// lockedBuffer is a console the test can read while services write to it.
type lockedBuffer = syncbuf.Buffer

// newSup builds a supervisor whose services are this test binary in the given modes.
func newSup(t *testing.T, modes map[string]string, deps map[string][]string, order []string, clock Clock) (*Supervisor, *lockedBuffer, string, string) {
	t.Helper()
	dir := t.TempDir()
	events := filepath.Join(dir, "events")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var svcs []quantix.Service
	for _, name := range order {
		// A tiny shell-free trampoline: the same binary, mode and name in its env.
		svcs = append(svcs, quantix.Service{
			Name: name, Command: "/usr/bin/env",
			Args:      []string{"QX_HELPER=" + modes[name], "QX_NAME=" + name, "QX_EVENTS=" + events, exe, "-test.run=^$"},
			DependsOn: deps[name],
		})
	}
	console := &lockedBuffer{}
	s, err := NewSupervisor(SupervisorConfig{
		Services: svcs, Console: console, LogDir: filepath.Join(dir, "log"), Clock: clock, Grace: 2 * time.Second,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, console, events, filepath.Join(dir, "log")
}

// runSup runs s until the test ends; the cleanup stops it and waits for Run.
func runSup(t testing.TB, s *Supervisor) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func readEvents(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func index(events []string, e string) int {
	for i, x := range events {
		if x == e {
			return i
		}
	}
	return -1
}

// TestSupervisorOrderReadinessStop: services start after their dependencies are
// ready, output reaches the console and the log files, and a stop goes in reverse
// start order with SIGTERM.
func TestSupervisorOrderReadinessStop(t *testing.T) {
	modes := map[string]string{"db": "ready", "network": "ready", "app": "ready", "web": "ready", "setup": "once"}
	deps := map[string][]string{"app": {"db", "network", "setup"}, "web": {"app"}}
	s, console, events, logDir := newSup(t, modes, deps, []string{"web", "app", "db", "network", "setup"}, nil)
	if diff := cmp.Diff([]string{"db", "network", "setup", "app", "web"}, s.Order()); diff != "" {
		t.Errorf("Order (-want +got):\n%s", diff)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("not all ready; events %v; console:\n%s", readEvents(t, events), console.String())
	}
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	ev := readEvents(t, events)
	for _, before := range []struct{ a, b string }{
		{"db ready", "app start"}, {"network ready", "app start"}, {"setup start", "app start"},
		{"app ready", "web start"},
		{"web stop", "app stop"}, {"app stop", "db stop"}, {"app stop", "network stop"}, {"network stop", "db stop"},
	} {
		ia, ib := index(ev, before.a), index(ev, before.b)
		if ia < 0 || ib < 0 || ia > ib {
			t.Errorf("want %q before %q; events: %v", before.a, before.b, ev)
		}
	}
	if n := strings.Count(strings.Join(ev, "\n"), "setup start"); n != 1 {
		t.Errorf("setup (exit 0) ran %d times, want once", n)
	}
	out := console.String()
	for _, want := range []string{
		quantix.ReadyMarker("db", "addr", "10.0.0.5/24") + "\n", // markers go to the console unprefixed
		"web: level=INFO msg=starting\n",
		"setup: did the one thing\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	log, err := os.ReadFile(filepath.Join(logDir, "app.log"))
	if err != nil || !strings.Contains(string(log), "QUANTIX: ready service=app") || !strings.Contains(string(log), "msg=starting") {
		t.Errorf("app.log = %q, %v; want its stdout and stderr", log, err)
	}
}

// fakeClock fires every After at once and records the delays asked for.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	delays []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.delays = append(c.delays, d)
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c *fakeClock) Delays() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.delays...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSupervisorBackoff: a crashing service is restarted after 1, 2, 4, 8, 16, 30,
// 30 s; its dependant never starts.
func TestSupervisorBackoff(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1700000000, 0)}
	s, _, events, _ := newSup(t, map[string]string{"crash": "fail", "dep": "ready"}, map[string][]string{"dep": {"crash"}}, []string{"crash", "dep"}, clock)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "seven restarts", func() bool { return len(clock.Delays()) >= 7 })
	cancel()
	<-done
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	for i := range want {
		want[i] *= time.Second
	}
	if diff := cmp.Diff(want, clock.Delays()[:7]); diff != "" {
		t.Errorf("restart delays (-want +got):\n%s", diff)
	}
	if i := index(readEvents(t, events), "dep start"); i >= 0 {
		t.Errorf("dep started although crash never became ready")
	}
}

// TestSupervisorExitConfig: exit 78 prints the fatal marker with the last stderr
// line and retries slowly.
func TestSupervisorExitConfig(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1700000000, 0)}
	s, console, _, _ := newSup(t, map[string]string{"network": "config"}, nil, []string{"network"}, clock)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "a retry", func() bool { return len(clock.Delays()) >= 2 })
	cancel()
	<-done
	if d := clock.Delays()[0]; d != ConfigRetry {
		t.Errorf("retry delay after exit 78 = %v, want %v", d, ConfigRetry)
	}
	want := quantix.FatalMarker("network", fmt.Errorf("%s", `level=ERROR msg="network.toml: gateway 10.0.1.1 is not inside 10.0.0.0/24"`))
	if !strings.Contains(console.String(), want+"\n") {
		t.Errorf("console lacks %q:\n%s", want, console.String())
	}
	if m, ok := quantix.ParseMarker(want); !ok || m.Get("service") != "network" {
		t.Errorf("fatal marker does not parse: %q", want)
	}
}

// TestSupervisorKillsAfterGrace: a service ignoring SIGTERM is killed after Grace.
func TestSupervisorKillsAfterGrace(t *testing.T) {
	s, _, events, _ := newSup(t, map[string]string{"stubborn": "ignore-term"}, nil, []string{"stubborn"}, nil)
	s.cfg.Grace = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("not ready: %v", readEvents(t, events))
	}
	t0 := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return: the service was not killed")
	}
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Errorf("stopped after %v, before the grace period", d)
	}
}

func TestNextBackoff(t *testing.T) {
	tests := []struct {
		prev, ran, want time.Duration
	}{
		{0, 0, time.Second},
		{time.Second, time.Second, 2 * time.Second},
		{8 * time.Second, 0, 16 * time.Second},
		{16 * time.Second, 0, 30 * time.Second},
		{30 * time.Second, 5 * time.Second, 30 * time.Second},
		{30 * time.Second, StableRun, time.Second}, // a stable minute resets
		{4 * time.Second, 2 * time.Minute, time.Second},
	}
	for _, tt := range tests {
		if got := NextBackoff(tt.prev, tt.ran); got != tt.want {
			t.Errorf("NextBackoff(%v, %v) = %v, want %v", tt.prev, tt.ran, got, tt.want)
		}
	}
}

func TestNewSupervisorRejects(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, svcs := range [][]quantix.Service{
		{{Name: "a", Command: "/x", DependsOn: []string{"b"}}, {Name: "b", Command: "/x", DependsOn: []string{"a"}}},
		{{Name: "a", Command: "/x"}, {Name: "a", Command: "/y"}},
		{{Name: "a"}},
	} {
		if _, err := NewSupervisor(SupervisorConfig{Services: svcs}, log); err == nil {
			t.Errorf("NewSupervisor(%+v) = nil error", svcs)
		}
	}
}

func TestIsPowerPress(t *testing.T) {
	ev := func(typ, code uint16, value int32) []byte {
		b := make([]byte, inputEventSize)
		binary.LittleEndian.PutUint16(b[16:], typ)
		binary.LittleEndian.PutUint16(b[18:], code)
		binary.LittleEndian.PutUint32(b[20:], uint32(value))
		return b
	}
	tests := []struct {
		ev   []byte
		want bool
	}{
		{ev(evKey, keyPower, 1), true},
		{ev(evKey, keyPower, 0), false}, // release
		{ev(evKey, 30, 1), false},       // KEY_A
		{ev(0, 0, 0), false},            // EV_SYN
	}
	for i, tt := range tests {
		if got := isPowerPress(tt.ev); got != tt.want {
			t.Errorf("case %d: isPowerPress = %v, want %v", i, got, tt.want)
		}
	}
}

// TestSupervisorMissingCommand: a service whose program is missing from the image
// is fatal at once (the image is wrong), not a silent restart loop.
func TestSupervisorMissingCommand(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1700000000, 0)}
	console := &lockedBuffer{}
	s, err := NewSupervisor(SupervisorConfig{
		Services: []quantix.Service{{Name: "vdc", Command: "/nonexistent/qx-vdc"}},
		Console:  console, Clock: clock,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "a retry", func() bool { return len(clock.Delays()) >= 1 })
	cancel()
	<-done
	m, ok := quantix.ParseMarker(strings.SplitN(console.String(), "\n", 2)[0])
	if !ok || m.Kind != quantix.MarkerFatal || m.Get("service") != "vdc" || !strings.Contains(m.Get("err"), "/nonexistent/qx-vdc") {
		t.Errorf("console = %q, want a fatal marker naming the command", console.String())
	}
	if d := clock.Delays()[0]; d != ConfigRetry {
		t.Errorf("retry after a failed start = %v, want %v", d, ConfigRetry)
	}
}

// TestSupervisorKillsProcessGroup: a service's children go with it, whether the
// supervisor stops the service (SIGTERM to the group) or the service exits and
// leaves a child behind that still holds its output open.
func TestSupervisorKillsProcessGroup(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		stop         bool // stop the supervisor, else wait for the service's own exit
	}{
		{"stopped", `sleep 600 & echo $! > "$1"; echo "QUANTIX: ready service=svc"; wait`, true},
		{"exited", `sleep 600 & echo $! > "$1"; echo "QUANTIX: ready service=svc"; exit 3`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "child.pid")
			sup, err := NewSupervisor(SupervisorConfig{
				Services: []quantix.Service{{Name: "svc", Command: "/bin/sh", Args: []string{"-c", tc.script, "sh", pidFile}}},
				Grace:    5 * time.Second,
			}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			runDone := make(chan error, 1)
			go func() { runDone <- sup.Run(ctx) }()
			defer func() {
				cancel()
				select {
				case <-runDone:
				case <-time.After(10 * time.Second):
					t.Error("supervisor did not stop within 10 s")
				}
			}()
			select {
			case <-sup.Ready("svc"):
			case <-time.After(10 * time.Second):
				t.Fatal("service not ready within 10 s")
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			var child int
			if _, err := fmt.Sscan(string(b), &child); err != nil {
				t.Fatalf("child pid %q: %v", b, err)
			}
			if tc.stop {
				cancel()
				select {
				case <-runDone:
				case <-time.After(10 * time.Second):
					t.Fatal("supervisor did not stop within 10 s")
				}
				runDone <- nil
			}
			deadline := time.Now().Add(10 * time.Second)
			for runs(child) {
				if time.Now().After(deadline) {
					t.Fatalf("the service's child %d still runs 10 s after the service ended", child)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// runs reports whether pid runs; a zombie waiting to be reaped does not, unlike
// for alive.
func runs(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses: "pid (comm) S ...".
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
