package console

import (
	"fmt"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// View draws the current screen: at most height lines, each shorter than width
// (a line that fills the last column makes some terminals wrap), printable ASCII
// only.
func (m Model) View() string {
	var body []string
	var keys string
	switch m.scr {
	case scrStatus:
		body, keys = m.viewStatus()
	case scrPassword, scrSetPassword:
		body, keys = m.viewPassword()
	case scrNetwork:
		body, keys = m.viewNetwork()
	case scrConfirm:
		body, keys = m.viewConfirm()
	case scrHostname:
		body, keys = m.viewHostname()
	case scrNetTest:
		body, keys = m.viewNetTest()
	case scrServices:
		body, keys = m.viewServices()
	case scrPower:
		body, keys = m.viewPower()
	}
	w, h := max(m.width, 20), max(m.height, 6)
	lines := []string{m.header(), strings.Repeat("=", w-1)}
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

func (m Model) header() string {
	name := "Quantix OS"
	if m.cfg.Image == quantix.ImageQvDC {
		name = "Quantix vDC"
	}
	h := fmt.Sprintf("%s %s (%s)", name, m.cfg.Version, m.cfg.Image)
	if m.snap != nil {
		h += "  host " + m.snap.Hostname
	}
	if m.unlocked {
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

func (m Model) viewStatus() ([]string, string) {
	keys := "n Network  h Hostname  t Test network  s Services  p Power"
	if m.unlocked {
		keys += "  l Lock"
	}
	keys += "  ^L Redraw"
	s := m.snap
	if s == nil {
		return []string{"Reading the system state..."}, keys
	}
	var b []string
	if !s.Persistent {
		why := "no " + quantix.LabelConfig + " disk"
		if s.PersistErr != nil {
			why = s.PersistErr.Error()
		}
		b = append(b, "WARNING: "+why+": NOTHING PERSISTS. Changes are lost at reboot.")
	}
	if n := s.Net; n != nil && n.Pending != nil {
		b = append(b, fmt.Sprintf("PENDING network change: rolls back at %s unless confirmed (press c).",
			n.Pending.Deadline.Format("15:04:05")))
	}
	if !s.PasswordSet {
		b = append(b, "No console password yet: the first change asks you to set one.")
	}
	if len(b) > 0 {
		b = append(b, "")
	}
	if n := s.Net; n != nil {
		iface := n.Interface
		if n.MAC != "" {
			iface += " (" + n.MAC + ")"
		}
		b = append(b, row("Interface", iface))
		addr := n.Address
		if addr == "" {
			addr = "none"
		}
		b = append(b, row("Address", fmt.Sprintf("%s  source %s  (mode %s)", addr, n.Source, n.Mode)))
		gw := n.Gateway
		if gw == "" {
			gw = "none"
		}
		b = append(b, row("Gateway", gw))
		dns := strings.Join(n.DNS, ", ")
		if dns == "" {
			dns = "none"
		}
		b = append(b, row("DNS", dns))
		if n.LastRollback != nil {
			b = append(b, row("Rolled back", n.LastRollback.At.Format("15:04:05")+": "+n.LastRollback.Reason))
		}
	} else {
		b = append(b, row("Network", "unknown: "+errString(s.NetErr)))
	}
	if u := s.URL(m.cfg); u != "" {
		b = append(b, row("Open", u))
	}
	if m.cfg.Image == quantix.ImageQvDC {
		if s.Phases != nil {
			b = append(b, row("Nodes", FormatPhases(s.Phases)))
		} else {
			b = append(b, row("Nodes", "unknown: "+errString(s.VDCErr)))
		}
	} else if a := s.Agent; a != nil {
		reg := a.State
		if a.Registration.Result != "" {
			reg += " (" + a.Registration.Result + ")"
		}
		b = append(b, row("Registration", reg))
		id := a.NodeID
		if id == "" {
			id = "none yet"
		}
		b = append(b, row("Node ID", id))
		if a.VDC != "" {
			b = append(b, row("vDC", a.VDC))
		}
		if a.Error != "" {
			b = append(b, row("Agent error", a.Error))
		}
	} else if s.AgentErr != nil {
		b = append(b, row("Registration", "unknown: "+s.AgentErr.Error()))
	}
	if s.ServicesErr != nil {
		b = append(b, row("Services", "unknown: "+s.ServicesErr.Error()))
	} else if len(s.Services) > 0 {
		var parts []string
		for _, sv := range s.Services {
			parts = append(parts, sv.Name+" "+sv.State)
		}
		b = append(b, wrap(row("Services", strings.Join(parts, ", ")), m.width-1, 14)...)
	}
	b = append(b, row("Uptime", fmtDuration(s.Uptime)))
	return b, keys
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

func (m Model) viewPassword() ([]string, string) {
	var b []string
	if m.scr == scrSetPassword {
		b = append(b,
			"No console password is set. Choose one now: it protects every change made",
			"at this console (network, hostname, restarts, power). It is stored hashed",
			"on "+quantix.LabelConfig+" ("+m.cfg.PasswordFile+").",
			"",
			fmt.Sprintf("  New password    %s", m.pw.render(m.pwFocus == 0)),
			fmt.Sprintf("  Again           %s", m.pw2.render(m.pwFocus == 1)),
		)
	} else {
		b = append(b, "This needs the console password.", "",
			fmt.Sprintf("  Password  %s", m.pw.render(true)))
	}
	if m.pwErr != "" {
		b = append(b, "", "  ! "+m.pwErr)
	}
	return b, "Enter OK  Esc Cancel"
}

func (m Model) viewNetwork() ([]string, string) {
	mark := func(i int) string {
		if m.focus == i {
			return "> "
		}
		return "  "
	}
	mode := "( ) DHCP   (*) Static"
	if m.form.Mode != network.ModeStatic {
		mode = "(*) DHCP   ( ) Static"
	}
	iface := m.form.Base.Interface
	if iface == "" {
		iface = network.InterfaceAuto
	}
	b := []string{"Management network on interface " + iface, ""}
	b = append(b, mark(0)+"Mode            "+mode)
	b = append(b, m.fieldErr(FieldMode)...)
	b = append(b, mark(1)+"Address/prefix  "+m.formIn[0].render(m.focus == 1))
	b = append(b, m.fieldErr(FieldAddress)...)
	b = append(b, mark(2)+"Gateway         "+m.formIn[1].render(m.focus == 2))
	b = append(b, m.fieldErr(FieldGateway)...)
	b = append(b, mark(3)+"DNS servers     "+m.formIn[2].render(m.focus == 3))
	b = append(b, m.fieldErr(FieldDNS)...)
	b = append(b, "", mark(4)+"< Apply >")
	b = append(b, m.fieldErr(FieldOther)...)
	if m.form.Mode != network.ModeStatic {
		b = append(b, "", "In DHCP mode an address here is the fallback when no lease comes.")
	}
	b = append(b, fmt.Sprintf("Apply tests the new settings; you then have %s to keep them,", m.cfg.ConfirmTimeout))
	b = append(b, "else the previous ones come back by themselves.")
	if m.formNote != "" {
		b = append(b, "", m.formNote)
	}
	keys := "Tab/Down next  Up prev  Enter next/apply  Space mode  Esc Back"
	return b, keys
}

func (m Model) fieldErr(key string) []string {
	e, ok := m.formErrs[key]
	if !ok {
		return nil
	}
	return wrap("    ! "+e, m.width-1, 6)
}

func (m Model) viewConfirm() ([]string, string) {
	r := m.applyRes
	if r == nil {
		return []string{"Nothing is waiting for confirmation."}, "Esc Back"
	}
	gw := "yes"
	if !r.GatewayReachable {
		gw = "NO: " + r.CheckError
	}
	left := ""
	if !r.Deadline.IsZero() {
		left = fmt.Sprintf("%ds", max(0, int(r.Deadline.Sub(m.now).Seconds())))
	}
	b := []string{
		"The new settings are active.", "",
		row("Address", r.Status.Address+"  source "+r.Status.Source),
		row("Gateway", r.Status.Gateway),
		row("Reachable", gw),
		"",
		"Keep them and save them to " + quantix.LabelConfig + "?",
		"If you do nothing they roll back in " + left + ".",
	}
	return b, "y Keep and save   n/Esc Roll back now"
}

func (m Model) viewHostname() ([]string, string) {
	b := []string{
		"Hostname (RFC 1123: letters, digits, hyphens, dots)", "",
		"  Hostname  " + m.host.render(true),
	}
	if m.hostErr != "" {
		b = append(b, wrap("    ! "+m.hostErr, m.width-1, 6)...)
	}
	b = append(b, "",
		"Saved to "+m.cfg.HostnameFile+" and set at once.")
	if m.cfg.Image != quantix.ImageQvDC {
		b = append(b, "The vDC knows nodes by hostname: a renamed node registers as a new",
			"node; delete the old one at the vDC.")
	}
	return b, "Enter Save  Esc Back"
}

func (m Model) viewNetTest() ([]string, string) {
	if m.checks == nil {
		return []string{"Testing gateway, DNS and vDC..."}, "Esc Back"
	}
	var b []string
	for _, c := range m.checks {
		res := "FAIL"
		if c.OK {
			res = "ok  "
		}
		b = append(b, wrap(fmt.Sprintf("%s  %-28s %s", res, c.Name, c.Detail), m.width-1, 6)...)
	}
	return b, "r Run again  Esc Back"
}

func (m Model) viewServices() ([]string, string) {
	var b []string
	s := m.snap
	if s == nil || len(s.Services) == 0 {
		if s != nil && s.ServicesErr != nil {
			b = append(b, "Services unknown: "+s.ServicesErr.Error())
		} else {
			b = append(b, "No services known.")
		}
		return b, "Esc Back"
	}
	for i, sv := range s.Services {
		mark := "  "
		if i == m.svcSel {
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
	if s.Services[0].Origin == "/proc" {
		b = append(b, "(state from /proc and the logs: qx-init does not report it)")
	}
	if m.svcSel < len(s.Services) {
		name := s.Services[m.svcSel].Name
		if m.svcAsk {
			b = append(b, "", "Restart "+name+"? y = yes, any other key = no")
		}
		b = append(b, "--- "+m.cfg.LogDir+"/"+name+".log")
		room := m.height - 4 - len(b)
		logs := m.svcLog
		if m.svcErr != "" {
			logs = []string{m.svcErr}
		}
		if len(logs) > room {
			logs = logs[len(logs)-max(room, 0):]
		}
		b = append(b, logs...)
	}
	return b, "Up/Down select  r Restart  Esc Back"
}

func (m Model) viewPower() ([]string, string) {
	b := []string{
		"Power", "",
		"  r  Reboot: stop every service cleanly, then restart the machine",
		"  o  Power off: stop every service cleanly, then switch off",
	}
	if m.powerAs != "" {
		b = append(b, "", fmt.Sprintf("Really %s this machine now? y = yes, any other key = no", m.powerAs))
	}
	return b, "r Reboot  o Power off  Esc Back"
}
