package console

import (
	"fmt"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// View draws the current screen: at most height lines, each shorter than width
// (a line that fills the last column makes some terminals wrap), printable ASCII
// only. The screen draws its body and key line; the frame around them (header,
// footer) is the same for all.
func (m Model) View() string {
	var body []string
	var keys string
	u := &m.ui
	switch m.scr {
	case scrStatus:
		body, keys = m.status.view(u)
	case scrPassword, scrSetPassword:
		body, keys = m.auth.view(u)
	case scrNetwork:
		body, keys = m.net.view(u)
	case scrConfirm:
		body, keys = m.confirm.view(u)
	case scrHostname:
		body, keys = m.host.view(u)
	case scrNetTest:
		body, keys = m.test.view(u)
	case scrServices:
		body, keys = m.svc.view(u)
	case scrPower:
		body, keys = m.power.view(u)
	case scrUpgrade:
		body, keys = m.upg.view(u)
	}
	w, h := max(m.width, 20), max(m.height, 6)
	lines := []string{u.header(), strings.Repeat("=", w-1)}
	room := h - len(lines) - 2
	if len(body) > room {
		body = body[:room]
	}
	lines = append(lines, body...)
	for len(lines) < h-2 {
		lines = append(lines, "")
	}
	foot := m.msg
	if m.busy != "" {
		foot = m.busy
	}
	lines = append(lines, foot, keys)
	for i, l := range lines {
		lines[i] = clip(l, w-1)
	}
	return strings.Join(lines, "\n")
}

// clip makes s safe for any terminal: printable ASCII, at most n columns.
func clip(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= n {
			break
		}
		switch {
		case r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func (u *ui) header() string {
	name := "Quantix OS"
	if u.cfg.Image == quantix.ImageQvDC {
		name = "Quantix vDC"
	}
	h := fmt.Sprintf("%s %s (%s)", name, u.cfg.Version, u.cfg.Image)
	if u.snap != nil {
		h += "  host " + u.snap.Hostname
	}
	if u.unlocked {
		h += "  [unlocked]"
	} else {
		h += "  [locked]"
	}
	return h
}

func row(label, value string) string { return fmt.Sprintf("%-13s %s", label, value) }

func fmtDuration(d time.Duration) string {
	d = d.Round(time.Second)
	days := d / (24 * time.Hour)
	d -= days * 24 * time.Hour
	h, mi, s := d/time.Hour, (d%time.Hour)/time.Minute, (d%time.Minute)/time.Second
	if days > 0 {
		return fmt.Sprintf("%dd %02dh%02dm", days, h, mi)
	}
	return fmt.Sprintf("%02dh%02dm%02ds", h, mi, s)
}

// wrap splits s into lines of at most n columns at spaces, indenting the rest.
func wrap(s string, n, indent int) []string {
	var out []string
	for len(s) > n {
		i := strings.LastIndex(s[:n], " ")
		if i <= indent {
			i = n
		}
		out = append(out, s[:i])
		s = strings.Repeat(" ", indent) + strings.TrimLeft(s[i:], " ")
	}
	return append(out, s)
}

func errString(err error) string {
	if err == nil {
		return "no answer"
	}
	return err.Error()
}
