package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd"
)

const (
	keyEnter = "\r"
	keyEsc   = "\x1b"
	keyDown  = "\x1b[B"
	keyUp    = "\x1b[A"
	keyClear = "\x15" // ctrl+u
)

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("pty test: skipped with -short")
	}
}

// TestFirstBootPasswordAndHostname: with no password, the first change asks for
// one (typed twice); the hostname is validated next to the field, then saved
// atomically to QUANTIX-CFG and set on the running system (in a UTS namespace of
// its own); nothing outside VT100 and ASCII reaches the terminal.
func TestFirstBootPasswordAndHostname(t *testing.T) {
	skipShort(t)
	e := newEnv(t)
	host, _ := os.Hostname()
	tm := startConsole(t, startOpts{uts: true}, e.args()...)
	tm.waitFor(5*time.Second, "NOTHING PERSISTS", "No console password yet", "[locked]")
	if !strings.Contains(tm.stdout.String(), "QUANTIX: ready service=console") {
		t.Errorf("no ready marker on stdout: %q", tm.stdout.String())
	}

	tm.send("h")
	tm.waitFor(3*time.Second, "No console password is set", "New password")
	tm.send("short", keyEnter)
	tm.waitFor(3*time.Second, "at least 8 characters")
	tm.send(keyClear, "correct horse", keyEnter, "correct hors", keyEnter)
	tm.waitFor(3*time.Second, "The two passwords differ")
	tm.send("correct horse", keyEnter, "correct horse", keyEnter)
	text := tm.waitFor(5*time.Second, "Hostname (RFC 1123", "[unlocked]")
	if strings.Contains(text, "correct horse") {
		t.Fatalf("the password is shown on the screen:\n%s", framed(text))
	}
	h, err := os.ReadFile(e.passwordFile)
	if err != nil {
		t.Fatalf("password not stored: %v", err)
	}
	if !strings.HasPrefix(string(h), "$argon2id$v=19$") || strings.Contains(string(h), "correct horse") {
		t.Fatalf("password file holds %q, want an argon2id hash", h)
	}
	if fi, _ := os.Stat(e.passwordFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("password file mode %v, want 0600", fi.Mode().Perm())
	}

	tm.send(keyClear, "bad_name", keyEnter)
	tm.waitFor(3*time.Second, `invalid hostname: "bad_name" contains '_'`)
	if _, err := os.Stat(e.hostnameFile); err == nil {
		t.Fatalf("an invalid hostname was saved")
	}
	tm.send(keyClear, "Node-7", keyEnter)
	tm.waitFor(5*time.Second, "Hostname node-7 set and saved", "host node-7")
	b, err := os.ReadFile(e.hostnameFile)
	if err != nil || string(b) != "node-7\n" {
		t.Fatalf("hostname file = %q, %v; want \"node-7\\n\"", b, err)
	}
	if now, _ := os.Hostname(); now != host {
		t.Fatalf("the test's own hostname changed to %q: the UTS namespace leaked", now)
	}
	// Lock again: the next change asks for the password.
	tm.send("l")
	tm.waitFor(3*time.Second, "Console locked.", "[locked]")
	tm.send("h")
	tm.waitFor(3*time.Second, "This needs the console password.")
	tm.send(keyEsc)
	tm.waitFor(3*time.Second, "n Network")
}

// realInit is qx-init's control socket and supervisor (services/initd) running the
// image's services as /bin/sh stand-ins that log and say they are ready. Power
// requests are not carried out: they arrive on actions.
type realInit struct {
	sup     *initd.Supervisor
	actions chan quantix.HaltAction
}

func startInit(t *testing.T, e *env) *realInit {
	t.Helper()
	sh := func(name string, deps ...string) quantix.Service {
		return quantix.Service{Name: name, Command: "/bin/sh", DependsOn: deps, Args: []string{"-c",
			"echo line one; echo 'QUANTIX: ready service=" + name + " addr=10.0.0.5/24'; echo the last line; trap 'exit 0' TERM; while :; do sleep 0.05; done"}}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup, err := initd.NewSupervisor(initd.SupervisorConfig{
		Services: []quantix.Service{sh("network"), sh("agent", "network")}, LogDir: e.logDir, Grace: 2 * time.Second,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	ri := &realInit{sup: sup, actions: make(chan quantix.HaltAction, 1)}
	ln, err := initd.NewControl(sup, ri.actions, log).Listen(e.initSocket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		<-done
	})
	select {
	case <-sup.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatal("init's services not ready")
	}
	return ri
}

func (ri *realInit) service(name string) quantix.ServiceStatus {
	for _, s := range ri.sup.Services() {
		if s.Name == name {
			return s
		}
	}
	return quantix.ServiceStatus{}
}

// TestPowerNeedsPassword: power needs the password; wrong ones are refused and
// slowed down; reboot asks for confirmation and then goes to init. The services
// screen shows init's states and a service's log, and restarts it through init.
func TestPowerNeedsPassword(t *testing.T) {
	skipShort(t)
	e := newEnv(t)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"set-password", "--password-file", e.passwordFile},
		strings.NewReader("s3cret-console\n"), &out, &out); err != nil {
		t.Fatalf("set-password: %v: %s", err, out.String())
	}
	ri := startInit(t, e)
	tm := startConsole(t, startOpts{}, e.args()...)
	tm.waitFor(5*time.Second, "Uptime")

	tm.send("p")
	tm.waitFor(3*time.Second, "This needs the console password.")
	for i := 1; i <= 3; i++ {
		tm.send("wrong-password", keyEnter)
		tm.waitFor(5*time.Second, fmt.Sprintf("Wrong password (%d failed).", i))
	}
	tm.send("s3cret-console", keyEnter)
	tm.waitFor(3*time.Second, "Too many wrong passwords: wait")
	time.Sleep(1100 * time.Millisecond)
	tm.send(keyClear, "s3cret-console", keyEnter)
	tm.waitFor(5*time.Second, "Power off: stop every service")
	tm.send("r")
	tm.waitFor(3*time.Second, "Really reboot this machine now?")
	tm.send("x")
	tm.waitFor(3*time.Second, "Cancelled.")
	select {
	case a := <-ri.actions:
		t.Fatalf("init got %q before any confirmation", a)
	default:
	}

	// Services: init's states and pids, a service's log, a restart through init.
	old := ri.service("network")
	tm.send(keyEsc, "s")
	tm.waitFor(3*time.Second, fmt.Sprintf("> network      ready pid %d", old.PID), "agent        ready pid", "the last line", "network.log")
	tm.send("r", "y")
	tm.waitFor(10*time.Second, "Restart network: done.")
	now := ri.service("network")
	if now.PID == old.PID || now.Restarts != 1 {
		t.Fatalf("network after the console's restart = %+v, before %+v: want a new process", now, old)
	}
	tm.waitFor(5*time.Second, fmt.Sprintf("> network      ready pid %d restarts 1", now.PID))

	tm.send(keyEsc, "p", "r", "y")
	tm.waitFor(3*time.Second, "Reboot: requested.")
	select {
	case a := <-ri.actions:
		if a != quantix.Reboot {
			t.Fatalf("init got %q, want reboot", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("init got no reboot request")
	}
	// A reboot is under way: init refuses restarts.
	tm.send(keyEsc, "s", keyDown)
	tm.waitFor(3*time.Second, "> agent")
	tm.send("r", "y")
	tm.waitFor(5*time.Second, "Restart agent failed", "shutting down (reboot)")
}

// TestRestartCleanly: the console survives a kill and comes back on the same
// terminal (init restarts it): the screen is redrawn in full.
func TestRestartCleanly(t *testing.T) {
	skipShort(t)
	e := newEnv(t)
	tm := startConsole(t, startOpts{}, e.args()...)
	tm.waitFor(5*time.Second, "Uptime")
	tm.send("p")
	tm.waitFor(3*time.Second, "No console password is set")
	tm.kill()
	// The next instance on the same pty starts from a clean screen.
	tm.scr.Write([]byte("garbage left by the kernel\r\n"))
	tm.start(startOpts{}, e.args()...)
	text := tm.waitFor(5*time.Second, "Uptime", "n Network")
	if strings.Contains(text, "garbage") || strings.Contains(text, "New password") {
		t.Fatalf("screen not redrawn after restart:\n%s", framed(text))
	}
}

// TestTerminalTypes: whatever TERM says (a VGA console, a serial vt100, an xterm,
// nothing), the console draws with VT100 sequences and ASCII only (checked when
// the test ends) and reads the keys; --baud sets the line speed of the terminal.
func TestTerminalTypes(t *testing.T) {
	skipShort(t)
	for _, term := range []string{"vt100", "linux", "xterm-256color", "dumb", ""} {
		t.Run("TERM="+term, func(t *testing.T) {
			e := newEnv(t)
			writeFile(t, e.logDir+"/agent.log", "agent log line\n")
			tm := startConsole(t, startOpts{term: term}, e.args("--baud", "115200")...)
			tm.waitFor(5*time.Second, "Uptime", "n Network")
			tm.send("s", keyDown)
			tm.waitFor(3*time.Second, "> agent", "agent log line")
			tm.send(keyEsc)
			tm.waitFor(3*time.Second, "n Network")
			tm.send("t")
			tm.waitFor(5*time.Second, "FAIL  network service", "r Run again")
		})
	}
}
