package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/quantix/quantix/services/console/vt"
	"github.com/quantix/quantix/tests/syncbuf"
)

// mainEnv makes the test binary run main() itself: the tests drive the real
// program, flags and all, in a pty.
const mainEnv = "QX_CONSOLE_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// terminal is qx-console running on the slave side of a pty, opened by the
// program itself through --tty, with a VT100 screen on the master side.
type terminal struct {
	t      testing.TB
	cmd    *exec.Cmd
	master *os.File
	slave  *os.File
	scr    *vt.Screen
	stdout syncbuf.Buffer
	stderr syncbuf.Buffer
	done   chan error
	// sent is when the last key was written (for the latency measurement).
	sent time.Time
}

// env is the console's file layout inside a test folder.
type env struct {
	dir          string
	passwordFile string
	hostnameFile string
	netConfig    string
	netSocket    string
	initSocket   string
	logDir       string
	mountinfo    string
	imageConfig  string
}

func newEnv(t testing.TB) *env {
	dir := t.TempDir()
	e := &env{
		dir:          dir,
		passwordFile: filepath.Join(dir, "quantix/console/password"),
		hostnameFile: filepath.Join(dir, "quantix/hostname"),
		netConfig:    filepath.Join(dir, "quantix/network/network.toml"),
		netSocket:    filepath.Join(dir, "run/network.sock"),
		initSocket:   filepath.Join(dir, "run/init.sock"),
		logDir:       filepath.Join(dir, "log"),
		mountinfo:    filepath.Join(dir, "mountinfo"),
		imageConfig:  filepath.Join(dir, "image.toml"),
	}
	for _, d := range []string{"run", "log", "quantix"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// No QUANTIX-CFG mounted: only the root filesystem.
	writeFile(t, e.mountinfo, "22 1 0:21 / / rw,relatime - rootfs rootfs rw\n")
	writeFile(t, e.imageConfig, `image = "quantix-os"
version = "0.1.0"
hostname = "quantix"
[[service]]
name = "network"
command = "/bin/qx-net"
[[service]]
name = "agent"
command = "/bin/qx-node"
depends_on = ["network"]
`)
	return e
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (e *env) args(extra ...string) []string {
	return append([]string{
		"--image-config", e.imageConfig,
		"--password-file", e.passwordFile,
		"--hostname-file", e.hostnameFile,
		"--etc-hostname", "",
		"--network-socket", e.netSocket,
		"--network-config", e.netConfig,
		"--init-socket", e.initSocket,
		"--log-dir", e.logDir,
		"--config-dir", filepath.Join(e.dir, "quantix"),
		"--mountinfo", e.mountinfo,
		"--refresh", "1s",
	}, extra...)
}

type startOpts struct {
	netns string // run inside this named network namespace (ip netns exec)
	uts   bool   // a new UTS namespace, so setting the hostname is safe
	term  string // TERM; default vt100
}

func startConsole(t testing.TB, o startOpts, args ...string) *terminal {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	if err := pty.Setsize(master, &pty.Winsize{Rows: 24, Cols: 80}); err != nil {
		t.Fatal(err)
	}
	tm := &terminal{t: t, master: master, slave: slave, scr: vt.New(24, 80)}
	// The slave stays open here until the end: with no slave open, reads on the
	// master fail with EIO, and the program opens the slave by its path later.
	go io.Copy(tm.scr, master)
	t.Cleanup(func() {
		tm.stop()
		master.Close()
		slave.Close()
		if u := tm.scr.Unknown(); len(u) > 0 && !t.Failed() {
			t.Errorf("qx-console wrote sequences a VT100 does not know: %q", u)
		}
		if n := tm.scr.NonASCII(); n > 0 && !t.Failed() {
			t.Errorf("qx-console wrote %d bytes beyond ASCII", n)
		}
		if t.Failed() {
			t.Logf("qx-console stderr:\n%s", tm.stderr.String())
		}
	})
	tm.start(o, args...)
	return tm
}

// start runs qx-console on the terminal's pty.
func (tm *terminal) start(o startOpts, args ...string) {
	t := tm.t
	t.Helper()
	argv := append([]string{os.Args[0], "--tty", tm.slave.Name()}, args...)
	if o.netns != "" {
		argv = append([]string{"ip", "netns", "exec", o.netns}, argv...)
	}
	tm.done = make(chan error, 1)
	tm.cmd = exec.Command(argv[0], argv[1:]...)
	term := o.term
	if term == "" {
		term = "vt100"
	}
	tm.cmd.Env = append(os.Environ(), mainEnv+"=1", "TERM="+term)
	tm.cmd.Stdout, tm.cmd.Stderr = &tm.stdout, &tm.stderr
	if o.uts {
		tm.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
	}
	if err := tm.cmd.Start(); err != nil {
		t.Fatalf("start qx-console: %v", err)
	}
	go func() { tm.done <- tm.cmd.Wait() }()
}

// stop ends qx-console with SIGTERM, as init does, and wants a clean exit.
func (tm *terminal) stop() {
	t := tm.t
	if tm.cmd == nil {
		return
	}
	tm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-tm.done:
		if err != nil && !t.Failed() {
			t.Errorf("qx-console did not stop cleanly on SIGTERM: %v\nstderr:\n%s", err, tm.stderr.String())
		}
	case <-time.After(10 * time.Second):
		tm.cmd.Process.Kill()
		t.Errorf("qx-console did not stop within 10s of SIGTERM")
	}
	tm.cmd = nil
}

// kill ends qx-console with SIGKILL (a crash).
func (tm *terminal) kill() {
	tm.cmd.Process.Kill()
	<-tm.done
	tm.cmd = nil
}

// send types keys: text, or "\r" (Enter), "\x1b" (Esc), "\x1b[B" (Down)...
func (tm *terminal) send(keys ...string) {
	tm.t.Helper()
	for _, k := range keys {
		tm.sent = time.Now()
		if _, err := tm.master.Write([]byte(k)); err != nil {
			tm.t.Fatalf("type %q: %v", k, err)
		}
		if k == "\x1b" {
			// A lone Esc must arrive on its own to be read as the Esc key.
			time.Sleep(150 * time.Millisecond)
		}
	}
}

// waitFor waits until the screen shows every one of want.
func (tm *terminal) waitFor(timeout time.Duration, want ...string) string {
	tm.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		text := tm.scr.Text()
		missing := ""
		for _, w := range want {
			if !strings.Contains(text, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return text
		}
		select {
		case err := <-tm.done:
			tm.t.Fatalf("qx-console exited (%v) while waiting for %q\nscreen:\n%s\nstderr:\n%s", err, missing, text, tm.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("screen does not show %q after %s:\n%s", missing, timeout, framed(text))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func framed(text string) string {
	var b strings.Builder
	for i, l := range strings.Split(text, "\n") {
		fmt.Fprintf(&b, "%2d|%s\n", i+1, l)
	}
	return b.String()
}
