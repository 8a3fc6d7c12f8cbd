package console

import (
	"context"
	"fmt"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// powerScreen reboots or powers off through init, after a y.
type powerScreen struct {
	as string // PowerReboot or PowerPoweroff awaiting "y"; "" asks for r or o
}

func (p *powerScreen) open(u *ui) { u.scr, p.as = scrPower, "" }

func (p *powerScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	if p.as != "" {
		a := p.as
		p.as = ""
		if k.String() == "y" {
			in := u.cfg.Init
			u.busy = "Asking init to " + a + "..."
			return func() tea.Msg {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return doneMsg{strings.ToUpper(a[:1]) + a[1:], in.Power(ctx, a), "requested"}
			}
		}
		u.msg = "Cancelled."
		return nil
	}
	switch k.String() {
	case "esc":
		u.scr = scrStatus
	case "r":
		p.as, u.msg = PowerReboot, ""
	case "o":
		p.as, u.msg = PowerPoweroff, ""
	}
	return nil
}

func (p powerScreen) view(u *ui) ([]string, string) {
	b := []string{
		"Power", "",
		"  r  Reboot: stop every service cleanly, then restart the machine",
		"  o  Power off: stop every service cleanly, then switch off",
	}
	if p.as != "" {
		b = append(b, "", fmt.Sprintf("Really %s this machine now? y = yes, any other key = no", p.as))
	}
	return b, "r Reboot  o Power off  Esc Back"
}
