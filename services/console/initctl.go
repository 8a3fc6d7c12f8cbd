package console

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
)

// Power actions, as qx-init names them.
const (
	PowerReboot   = string(quantix.Reboot)
	PowerPoweroff = string(quantix.Poweroff)
)

// ServiceState is one supervised service as the console shows it: qx-init's
// status, or one read from /proc when qx-init cannot say (State "not running" is
// only found there).
type ServiceState struct {
	quantix.ServiceStatus
	// Origin says where the state came from: "init" or "/proc" (the fallback).
	Origin string `json:"-"`
}

// Init is what the console needs from the supervisor. InitClient talks to qx-init's
// control socket; tests may pass their own.
type Init interface {
	Services(ctx context.Context) ([]ServiceState, error)
	Restart(ctx context.Context, name string) error
	Power(ctx context.Context, action string) error
	// Slots and Stage are init's A/B upgrade requests (quantix.InitClient).
	Slots(ctx context.Context) (quantix.SlotsStatus, error)
	Stage(ctx context.Context, dir string) (quantix.Staged, error)
}

// InitClient is the console's Init: quantix.InitClient on Socket, plus a fallback
// for an init that does not answer services and restart (quantix.ErrInitUnsupported):
// Services then reads /proc and the logs ("running", "ready", "not running"), and
// Restart reports the error.
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

func (c InitClient) init() quantix.InitClient { return quantix.InitClient{Socket: c.Socket} }

// Power asks qx-init to stop every service cleanly and reboot or power off.
func (c InitClient) Power(ctx context.Context, action string) error {
	return c.init().Power(ctx, quantix.HaltAction(action))
}

// Restart asks qx-init to restart one service.
func (c InitClient) Restart(ctx context.Context, name string) error {
	return c.init().Restart(ctx, name)
}

// Slots asks qx-init for the A/B slots (an error wrapping quantix.ErrNotAB on a
// live boot).
func (c InitClient) Slots(ctx context.Context) (quantix.SlotsStatus, error) {
	return c.init().Slots(ctx)
}

// Stage asks qx-init to verify the bundle in dir and write it into the other slot.
func (c InitClient) Stage(ctx context.Context, dir string) (quantix.Staged, error) {
	return c.init().Stage(ctx, dir)
}

// Services asks qx-init for the service states; when it cannot answer, it falls
// back to /proc (is a process of that command running?) and the log (did it print
// its ready marker?), and marks the states as such.
func (c InitClient) Services(ctx context.Context) ([]ServiceState, error) {
	svcs, err := c.init().Services(ctx)
	if err == nil {
		out := make([]ServiceState, len(svcs))
		for i, s := range svcs {
			out[i] = ServiceState{ServiceStatus: s, Origin: "init"}
		}
		return out, nil
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
		st := ServiceState{ServiceStatus: quantix.ServiceStatus{Name: k.Name, State: "not running"}, Origin: "/proc"}
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
