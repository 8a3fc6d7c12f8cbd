package console

import (
	"context"
	"fmt"
	"github.com/quantix/quantix"
	"path/filepath"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// servicesScreen lists init's services with the tail of the selected one's log,
// and restarts one (after the password and a y).
type servicesScreen struct {
	sel    int
	log    []string
	logErr string
	ask    bool // "Restart <name>?" waits for y
}

type logMsg struct {
	name  string
	lines []string
	err   error
}

// open shows the list from the top of its log.
func (s *servicesScreen) open(u *ui) tea.Cmd {
	u.scr, s.ask, s.log = scrServices, false, nil
	return s.logCmd(u)
}

// askRestart asks whether to restart the selected service.
func (s *servicesScreen) askRestart(u *ui) { u.scr, s.ask = scrServices, true }

func serviceNames(snap *Snapshot) []string {
	var out []string
	if snap != nil {
		for _, s := range snap.Services {
			out = append(out, s.Name)
		}
	}
	return out
}

// logCmd reads the selected service's log again.
func (s *servicesScreen) logCmd(u *ui) tea.Cmd {
	names := serviceNames(u.snap)
	if s.sel >= len(names) {
		return nil
	}
	name, path := names[s.sel], filepath.Join(u.cfg.LogDir, names[s.sel]+".log")
	return func() tea.Msg {
		lines, err := TailLines(path, 40)
		return logMsg{name, lines, err}
	}
}

// logged takes a log read; one of a service no longer selected is dropped.
func (s *servicesScreen) logged(u *ui, msg logMsg) {
	if names := serviceNames(u.snap); s.sel < len(names) && names[s.sel] == msg.name {
		s.log, s.logErr = msg.lines, ""
		if msg.err != nil {
			s.logErr = msg.err.Error()
		}
	}
}

// key returns actRestart when the operator asks to restart the selected service.
func (s *servicesScreen) key(u *ui, k tea.KeyMsg) (tea.Cmd, action) {
	names := serviceNames(u.snap)
	if s.ask {
		s.ask = false
		if k.String() == "y" && s.sel < len(names) {
			name, in := names[s.sel], u.cfg.Init
			u.busy = "Restarting " + name + "..."
			return func() tea.Msg {
				// init stops it (SIGTERM, SIGKILL after its grace period) and starts it.
				ctx, cancel := context.WithTimeout(context.Background(), quantix.StopGrace+15*time.Second)
				defer cancel()
				return doneMsg{"Restart " + name, in.Restart(ctx, name), "done"}
			}, ""
		}
		u.msg = "Restart cancelled."
		return nil, ""
	}
	switch k.String() {
	case "esc":
		u.scr = scrStatus
	case "up", "k", "ctrl+p":
		if s.sel > 0 {
			s.sel--
			s.log = nil
			return s.logCmd(u), ""
		}
	case "down", "j", "ctrl+n":
		if s.sel+1 < len(names) {
			s.sel++
			s.log = nil
			return s.logCmd(u), ""
		}
	case "r":
		if s.sel < len(names) {
			u.msg = ""
			return nil, actRestart
		}
	}
	return nil, ""
}

func (s servicesScreen) view(u *ui) ([]string, string) {
	var b []string
	snap := u.snap
	if snap == nil || len(snap.Services) == 0 {
		if snap != nil && snap.ServicesErr != nil {
			b = append(b, "Services unknown: "+snap.ServicesErr.Error())
		} else {
			b = append(b, "No services known.")
		}
		return b, "Esc Back"
	}
	for i, sv := range snap.Services {
		mark := "  "
		if i == s.sel {
			mark = "> "
		}
		st := sv.State
		if sv.PID > 0 {
			st += fmt.Sprintf(" pid %d", sv.PID)
		}
		if sv.Restarts > 0 {
			st += fmt.Sprintf(" restarts %d", sv.Restarts)
		}
		if sv.LastError != "" && (sv.State == quantix.ServiceFailed || sv.State == quantix.ServiceRestarting) {
			st += ": " + sv.LastError
		}
		b = append(b, fmt.Sprintf("%s%-12s %s", mark, sv.Name, st))
	}
	if snap.Services[0].Origin == "/proc" {
		b = append(b, "(state from /proc and the logs: qx-init does not report it)")
	}
	if s.sel < len(snap.Services) {
		name := snap.Services[s.sel].Name
		if s.ask {
			b = append(b, "", "Restart "+name+"? y = yes, any other key = no")
		}
		b = append(b, "--- "+u.cfg.LogDir+"/"+name+".log")
		room := u.height - 4 - len(b)
		logs := s.log
		if s.logErr != "" {
			logs = []string{s.logErr}
		}
		if len(logs) > room {
			logs = logs[len(logs)-max(room, 0):]
		}
		b = append(b, logs...)
	}
	return b, "Up/Down select  r Restart  Esc Back"
}
