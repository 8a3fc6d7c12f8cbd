package console

import (
	"errors"
	"fmt"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
)

// passwordScreen stands before every change: it asks for the console password
// (scrPassword), or has one chosen, typed twice, when none is set yet
// (scrSetPassword). Wrong passwords in a row make it wait longer and longer.
type passwordScreen struct {
	pending     action // what was asked for: done once the password is given
	pw, pw2     field
	focus       int // 0 the password, 1 the second copy (scrSetPassword)
	err         string
	failures    int
	lockedUntil time.Time
}

type verifyMsg struct{ err error }
type setPwMsg struct{ err error }

func newPasswordScreen() passwordScreen {
	return passwordScreen{pw: field{max: 256, secret: true}, pw2: field{max: 256, secret: true}}
}

// open asks for the password before a.
func (p *passwordScreen) open(u *ui, a action) {
	p.pending, p.err, p.pw.value, p.pw2.value, p.focus = a, "", "", "", 0
	set, err := PasswordStore{Path: u.cfg.PasswordFile}.IsSet()
	switch {
	case err != nil:
		u.msg = err.Error()
	case set:
		u.scr = scrPassword
	default:
		u.scr = scrSetPassword
	}
}

func (p *passwordScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	if k.Type == tea.KeyEsc {
		u.scr = scrStatus
		if p.pending == actRestart {
			u.scr = scrServices
		}
		p.pending, p.err = "", ""
		return nil
	}
	cur := &p.pw
	if u.scr == scrSetPassword && p.focus == 1 {
		cur = &p.pw2
	}
	switch k.Type {
	case tea.KeyTab, tea.KeyDown, tea.KeyUp, tea.KeyShiftTab:
		if u.scr == scrSetPassword {
			p.focus = 1 - p.focus
		}
		return nil
	case tea.KeyEnter:
	default:
		cur.key(k)
		return nil
	}
	if u.scr == scrPassword {
		if wait := time.Until(p.lockedUntil); wait > 0 {
			p.err = fmt.Sprintf("Too many wrong passwords: wait %ds.", int(wait.Seconds())+1)
			return nil
		}
		pw, path := p.pw.value, u.cfg.PasswordFile
		u.busy = "Checking password..."
		return func() tea.Msg { return verifyMsg{PasswordStore{Path: path}.Verify(pw)} }
	}
	if p.focus == 0 {
		if err := CheckNewPassword(p.pw.value); err != nil {
			p.err = err.Error()
			return nil
		}
		p.focus, p.err = 1, ""
		return nil
	}
	if p.pw.value != p.pw2.value {
		p.err, p.pw2.value, p.focus = "The two passwords differ; type them again.", "", 0
		p.pw.value = ""
		return nil
	}
	pw, path := p.pw.value, u.cfg.PasswordFile
	u.busy = "Saving password..."
	return func() tea.Msg { return setPwMsg{PasswordStore{Path: path}.Set(pw)} }
}

// verified takes the answer of the password check; true means unlocked, and the
// pending action is next.
func (p *passwordScreen) verified(u *ui, err error) bool {
	u.busy = ""
	if err != nil {
		p.failures++
		p.pw.value = ""
		if p.failures >= 3 {
			d := time.Second << min(p.failures-3, 5)
			p.lockedUntil = time.Now().Add(d)
		}
		p.err = fmt.Sprintf("Wrong password (%d failed).", p.failures)
		if !errors.Is(err, ErrWrongPassword) {
			p.err = err.Error()
		}
		return false
	}
	p.failures, u.unlocked, p.pw.value, p.err = 0, true, "", ""
	return true
}

// saved takes the answer of saving a new password; true means unlocked, and the
// pending action is next.
func (p *passwordScreen) saved(u *ui, err error) bool {
	u.busy = ""
	if err != nil {
		p.err = err.Error()
		return false
	}
	u.unlocked, p.pw.value, p.pw2.value, p.err = true, "", "", ""
	u.msg = "Console password set."
	return true
}

func (p passwordScreen) view(u *ui) ([]string, string) {
	var b []string
	if u.scr == scrSetPassword {
		b = append(b,
			"No console password is set. Choose one now: it protects every change made",
			"at this console (network, hostname, restarts, power). It is stored hashed",
			"on "+quantix.LabelConfig+" ("+u.cfg.PasswordFile+").",
			"",
			fmt.Sprintf("  New password    %s", p.pw.render(p.focus == 0)),
			fmt.Sprintf("  Again           %s", p.pw2.render(p.focus == 1)),
		)
	} else {
		b = append(b, "This needs the console password.", "",
			fmt.Sprintf("  Password  %s", p.pw.render(true)))
	}
	if p.err != "" {
		b = append(b, "", "  ! "+p.err)
	}
	return b, "Enter OK  Esc Cancel"
}
