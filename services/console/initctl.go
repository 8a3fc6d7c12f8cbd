package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quantix/quantix"
	initd "github.com/quantix/quantix/services/init"
)

// Power actions, as qx-init names them.
const (
	PowerReboot   = string(initd.ActionReboot)
	PowerPoweroff = string(initd.ActionPoweroff)
)

// ServiceState is one supervised service as the console shows it.
type ServiceState struct {
	Name  string `json:"name"`
	State string `json:"state"` // initd.State*, or "not running" (the /proc fallback)
	PID   int    `json:"pid,omitempty"`
	// Since is when the current state began, when known.
	Since     time.Time `json:"since,omitzero"`
	Restarts  int       `json:"restarts,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	// Origin says where the state came from: "init" or "/proc" (the fallback).
	Origin string `json:"-"`
}

// Init is what the console needs from the supervisor. InitClient talks to qx-init's
// control socket; tests may pass their own.
type Init interface {
	Services(ctx context.Context) ([]ServiceState, error)
	Restart(ctx context.Context, name string) error
	Power(ctx context.Context, action string) error
}

// ErrInitUnsupported says that the running qx-init does not answer a request.
var ErrInitUnsupported = errors.New("qx-init does not support this request")

// InitClient talks to qx-init over its control socket (initd.ControlSocket), one
// line per request and one line per answer (initd.Control serves it):
//
//	poweroff | reboot          -> "ok" | "error: ..."
//	services                   -> {"services":[ServiceState...]} | "error: ..."
//	restart <name>             -> "ok" (stopped and started again) | "error: ..."
//
// State words are initd's: waiting, running, ready, restarting, failed, done,
// stopping, stopped. Against an init that does not answer services and restart,
// Services falls back to reading /proc and the logs ("running", "ready", "not
// running"), and Restart reports ErrInitUnsupported.
type InitClient struct {
	Socket string
	// Known lists the image's services (from the image config) for the fallback.
	Known []KnownService
	// ProcRoot is /proc; LogDir is /var/log/quantix.
	ProcRoot string
	LogDir   string
}

// KnownService is a service of the image, as its image config names it.
type KnownService struct {
	Name    string
	Command string
}

func (c InitClient) request(ctx context.Context, line string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return "", fmt.Errorf("connect to qx-init at %s: %w", c.Socket, err)
	}
	defer conn.Close()
	// A restart may take qx-init's grace period: the caller's deadline rules when
	// it has one.
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok {
		dl = d
	}
	conn.SetDeadline(dl)
	if _, err := fmt.Fprintln(conn, line); err != nil {
		return "", fmt.Errorf("send %q to qx-init: %w", line, err)
	}
	r := bufio.NewReader(conn)
	resp, err := r.ReadString('\n')
	if err != nil && resp == "" {
		return "", fmt.Errorf("%q: no answer from qx-init: %w", line, err)
	}
	resp = strings.TrimSpace(resp)
	if strings.HasPrefix(resp, "error: unknown request") {
		return "", fmt.Errorf("%q: %w (%s)", line, ErrInitUnsupported, resp)
	}
	if e, ok := strings.CutPrefix(resp, "error: "); ok {
		return "", fmt.Errorf("%s: %s", line, e)
	}
	return resp, nil
}

// Power asks qx-init to stop every service cleanly and reboot or power off.
func (c InitClient) Power(ctx context.Context, action string) error {
	if action != PowerReboot && action != PowerPoweroff {
		return fmt.Errorf("power: unknown action %q", action)
	}
	resp, err := c.request(ctx, action)
	if err != nil {
		return err
	}
	if resp != "ok" {
		return fmt.Errorf("%s: qx-init answered %q", action, resp)
	}
	return nil
}

// Restart asks qx-init to restart one service.
func (c InitClient) Restart(ctx context.Context, name string) error {
	if strings.ContainsAny(name, " \n") || name == "" {
		return fmt.Errorf("restart: bad service name %q", name)
	}
	resp, err := c.request(ctx, "restart "+name)
	if err != nil {
		return err
	}
	if resp != "ok" {
		return fmt.Errorf("restart %s: qx-init answered %q", name, resp)
	}
	return nil
}

// Services asks qx-init for the service states; when it cannot answer, it falls
// back to /proc (is a process of that command running?) and the log (did it print
// its ready marker?), and marks the states as such.
func (c InitClient) Services(ctx context.Context) ([]ServiceState, error) {
	resp, err := c.request(ctx, "services")
	if err == nil {
		var out struct {
			Services []ServiceState `json:"services"`
		}
		if err := json.Unmarshal([]byte(resp), &out); err != nil {
			return nil, fmt.Errorf("services: bad answer from qx-init: %w", err)
		}
		for i := range out.Services {
			out.Services[i].Origin = "init"
		}
		return out.Services, nil
	}
	if len(c.Known) == 0 {
		return nil, err
	}
	return c.fromProc(), nil
}

func (c InitClient) fromProc() []ServiceState {
	procRoot := c.ProcRoot
	if procRoot == "" {
		procRoot = "/proc"
	}
	running := map[string]int{} // command base name -> pid
	ents, _ := os.ReadDir(procRoot)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv0, _, _ := strings.Cut(string(b), "\x00")
		base := filepath.Base(argv0)
		if _, ok := running[base]; !ok {
			running[base] = pid
		}
	}
	var out []ServiceState
	for _, k := range c.Known {
		st := ServiceState{Name: k.Name, State: "not running", Origin: "/proc"}
		if pid, ok := running[filepath.Base(k.Command)]; ok {
			st.State, st.PID = "running", pid
			if lastReady(filepath.Join(c.LogDir, k.Name+".log"), k.Name) {
				st.State = "ready"
			}
		}
		out = append(out, st)
	}
	return out
}

// lastReady reports whether the log's last marker from the service is its ready
// marker (and not a fatal one).
func lastReady(logPath, name string) bool {
	lines, err := TailLines(logPath, 200)
	if err != nil {
		return false
	}
	for i := len(lines) - 1; i >= 0; i-- {
		m, ok := quantix.ParseMarker(lines[i])
		if !ok || (m.Get("service") != name && m.Get("service") != "") {
			continue
		}
		switch m.Kind {
		case quantix.MarkerReady:
			return true
		case quantix.MarkerFatal:
			return false
		}
	}
	return false
}

// TailLines returns up to n last lines of the file at path, reading at most its
// last 64 KiB.
func TailLines(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const max = 64 << 10
	off := fi.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	s := strings.TrimRight(string(buf), "\n")
	if s == "" {
		return nil, nil
	}
	lines := strings.Split(s, "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first one is cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}
