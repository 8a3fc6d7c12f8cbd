package console

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// networkScreen is the management network form. Apply hands it to the network
// service's safe apply; a change that waits for confirmation goes on to the
// confirm screen.
type networkScreen struct {
	form      NetForm
	in        [3]field // address, gateway, dns
	focus     int      // 0 mode, 1 address, 2 gateway, 3 dns, 4 apply
	errs      map[string]string
	note      string
	validated bool // Apply was pressed once: errors follow every key from now on
}

type applyMsg struct {
	res network.ApplyResult
	err error
}

func newNetworkScreen() networkScreen {
	return networkScreen{errs: map[string]string{}, in: [3]field{{max: 43}, {max: 39}, {max: 120}}}
}

// open starts the form from the saved settings, else from what the service
// reports.
func (n *networkScreen) open(u *ui) {
	var st *network.Status
	if u.snap != nil {
		st = u.snap.Net
	}
	f, err := LoadForm(u.cfg.NetworkConfig, st)
	n.form, n.focus, n.errs, n.validated, n.note = f, 0, map[string]string{}, false, ""
	if err != nil {
		n.note = "Saved settings not used: " + err.Error()
	}
	n.in[0].value, n.in[1].value, n.in[2].value = f.Address, f.Gateway, f.DNS
	u.scr = scrNetwork
}

func (n *networkScreen) sync() {
	n.form.Address, n.form.Gateway, n.form.DNS = n.in[0].value, n.in[1].value, n.in[2].value
	if n.validated {
		n.errs = n.form.Validate()
	}
}

func (n *networkScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	switch k.Type {
	case tea.KeyEsc:
		u.scr = scrStatus
		return nil
	case tea.KeyDown, tea.KeyTab, tea.KeyCtrlN:
		n.focus = (n.focus + 1) % 5
		return nil
	case tea.KeyUp, tea.KeyShiftTab, tea.KeyCtrlP:
		n.focus = (n.focus + 4) % 5
		return nil
	case tea.KeyEnter:
		if n.focus < 4 {
			n.focus++
			return nil
		}
		n.sync()
		n.validated = true
		n.errs = n.form.Validate()
		if len(n.errs) > 0 {
			return nil
		}
		data, err := n.form.TOML()
		if err != nil {
			n.errs = map[string]string{fieldOf(err): fieldMessage(err)}
			return nil
		}
		u.busy = "Applying the new settings and checking the gateway..."
		sock, timeout, probe := u.cfg.NetworkSocket, u.cfg.ConfirmTimeout, probeURL(u)
		return func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), timeout+60*time.Second)
			defer cancel()
			res, err := network.Client{Socket: sock}.Apply(ctx, "console", data, timeout, probe)
			return applyMsg{res, err}
		}
	}
	if n.focus == 0 {
		switch k.String() {
		case " ", "left", "right", "h", "l":
			if n.form.Mode == network.ModeStatic {
				n.form.Mode = network.ModeDHCP
			} else {
				n.form.Mode = network.ModeStatic
			}
		case "d":
			n.form.Mode = network.ModeDHCP
		case "s":
			n.form.Mode = network.ModeStatic
		}
		n.sync()
		return nil
	}
	if n.focus >= 1 && n.focus <= 3 {
		n.in[n.focus-1].key(k)
		n.sync()
	}
	return nil
}

// probeURL is what the network service checks besides the gateway after an apply:
// the vDC on Quantix-OS (a node that cannot reach it is as good as cut off).
func probeURL(u *ui) string {
	if u.cfg.Image == quantix.ImageQvDC || u.snap == nil || u.snap.Agent == nil || u.snap.Agent.VDC == "" {
		return ""
	}
	return strings.TrimRight(u.snap.Agent.VDC, "/") + quantix.PathHealthz
}

// applied takes the network service's answer to Apply. It returns the result when
// the change waits for confirmation (the confirm screen shows it next).
func (n *networkScreen) applied(u *ui, msg applyMsg) *network.ApplyResult {
	if msg.err != nil {
		if msg.res.RolledBack {
			n.note = "Rolled back: " + msg.err.Error()
		} else {
			n.errs = map[string]string{fieldOf(msg.err): fieldMessage(msg.err)}
		}
		return nil
	}
	res := msg.res
	if res.Committed {
		u.scr = scrStatus
		u.msg = "Network settings applied and saved to " + filepath.Base(res.SavedTo) + "."
		return nil
	}
	return &res
}

func (n networkScreen) view(u *ui) ([]string, string) {
	mark := func(i int) string {
		if n.focus == i {
			return "> "
		}
		return "  "
	}
	mode := "( ) DHCP   (*) Static"
	if n.form.Mode != network.ModeStatic {
		mode = "(*) DHCP   ( ) Static"
	}
	iface := n.form.Base.Interface
	if iface == "" {
		iface = network.InterfaceAuto
	}
	b := []string{"Management network on interface " + iface, ""}
	b = append(b, mark(0)+"Mode            "+mode)
	b = append(b, n.fieldErr(u, FieldMode)...)
	b = append(b, mark(1)+"Address/prefix  "+n.in[0].render(n.focus == 1))
	b = append(b, n.fieldErr(u, FieldAddress)...)
	b = append(b, mark(2)+"Gateway         "+n.in[1].render(n.focus == 2))
	b = append(b, n.fieldErr(u, FieldGateway)...)
	b = append(b, mark(3)+"DNS servers     "+n.in[2].render(n.focus == 3))
	b = append(b, n.fieldErr(u, FieldDNS)...)
	b = append(b, "", mark(4)+"< Apply >")
	b = append(b, n.fieldErr(u, FieldOther)...)
	if n.form.Mode != network.ModeStatic {
		b = append(b, "", "In DHCP mode an address here is the fallback when no lease comes.")
	}
	b = append(b, fmt.Sprintf("Apply tests the new settings; you then have %s to keep them,", u.cfg.ConfirmTimeout))
	b = append(b, "else the previous ones come back by themselves.")
	if n.note != "" {
		b = append(b, "", n.note)
	}
	keys := "Tab/Down next  Up prev  Enter next/apply  Space mode  Esc Back"
	return b, keys
}

// fieldErr is the error of one field, drawn under it.
func (n networkScreen) fieldErr(u *ui, key string) []string {
	e, ok := n.errs[key]
	if !ok {
		return nil
	}
	return wrap("    ! "+e, u.width-1, 6)
}
