package vdctest

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
)

// Process is a qx-vdc running as its own process, for faults a goroutine cannot
// have: frozen with SIGSTOP (a stalled machine or VM), killed with SIGKILL.
type Process struct {
	URL string // https://127.0.0.1:port: the agents' URL (its ready marker's)
	Pin string // the agent CA pin (its ready marker's agent_ca_pin)
	Log *syncbuf.Buffer

	cmd    *exec.Cmd
	exited chan struct{}
}

// BuildVDC builds qx-vdc into a folder of t and returns the binary's path.
func BuildVDC(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "qx-vdc")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/quantix/quantix/vdc/cmd/qx-vdc").CombinedOutput()
	if err != nil {
		t.Fatalf("go build qx-vdc: %v\n%s", err, out)
	}
	return bin
}

// StartProcess runs bin serve on opts.DatabaseURL (required) with opts' interval
// and tokens, waits for its ready marker and stops it when t ends.
func StartProcess(t testing.TB, bin string, opts Options) *Process {
	t.Helper()
	if opts.DatabaseURL == "" || len(opts.JoinTokens) == 0 || opts.AdminToken == "" {
		t.Fatal("vdctest.StartProcess needs DatabaseURL, JoinTokens and AdminToken")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "vdc.toml")
	toml := fmt.Sprintf("ui_listen = \"127.0.0.1:0\"\nsecrets_file = %q\ndata_dir = %q\n", filepath.Join(dir, "secrets.toml"), filepath.Join(dir, "data"))
	if opts.DatabaseTimeout != 0 {
		toml += fmt.Sprintf("database_timeout = %q\n", opts.DatabaseTimeout)
	}
	if err := os.WriteFile(conf, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	iv := opts.HeartbeatInterval
	if iv == 0 {
		iv = 2 * time.Second
	}
	p := &Process{Log: &syncbuf.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, "serve", "--config", conf, "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--database-url", opts.DatabaseURL, "--join-token", opts.JoinTokens[0], "--admin-token", opts.AdminToken,
		"--heartbeat-interval", iv.String())
	p.cmd.Stderr = p.Log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := p.cmd.Start
	if opts.StartCmd != nil {
		start = func() error { return opts.StartCmd(p.cmd) }
	}
	if err := start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	ready := make(chan quantix.Marker, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m, ok := quantix.ParseMarker(sc.Text()); ok && m.Kind == quantix.MarkerReady {
				select {
				case ready <- m:
				default:
				}
			}
		}
	}()
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.Thaw()
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			t.Errorf("qx-vdc (pid %d) ignored SIGTERM for 30s", p.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("qx-vdc (pid %d) log:\n%s", p.cmd.Process.Pid, p.Log.String())
		}
	})
	select {
	case m := <-ready:
		p.URL, p.Pin = m.Get("url"), m.Get("agent_ca_pin")
	case <-p.exited:
		t.Fatalf("qx-vdc exited before it was ready (%v):\n%s", p.cmd.ProcessState, p.Log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("qx-vdc not ready after 60s:\n%s", p.Log.String())
	}
	return p
}

// AgentTransport is an HTTP transport that trusts the process's agent CA (by its
// pin), as an agent does.
func (p *Process) AgentTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: quantix.PinnedTLS([]string{p.Pin}, nil)}
}

// Freeze stops the process with SIGSTOP; Thaw resumes it (SIGCONT).
func (p *Process) Freeze() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }
func (p *Process) Thaw() error   { return p.cmd.Process.Signal(syscall.SIGCONT) }
