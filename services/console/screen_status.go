package console

import (
	"fmt"
	"strings"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
)

// statusScreen is the first screen: what the machine is, and the menu of the
// others. It keeps no state of its own; it draws the snapshot.
type statusScreen struct{}

func (statusScreen) key(u *ui, k tea.KeyMsg) action {
	u.msg = ""
	switch k.String() {
	case "n":
		return actNetwork
	case "c":
		if u.snap != nil && u.snap.Net != nil && u.snap.Net.Pending != nil {
			return actConfirm
		}
	case "h":
		return actHostname
	case "t":
		return actTest
	case "s":
		return actServices
	case "u":
		return actUpgrade
	case "p":
		return actPower
	case "l":
		return actLock
	}
	return ""
}

func (statusScreen) view(u *ui) ([]string, string) {
	keys := "n Network  h Host  t Test  s Services  u Upgrade  p Power"
	if u.unlocked {
		keys += "  l Lock"
	}
	keys += "  ^L Redraw"
	s := u.snap
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
	if url := s.URL(u.cfg); url != "" {
		b = append(b, row("Open", url))
	}
	if u.cfg.Image == quantix.ImageQvDC {
		if s.Phases != nil {
			b = append(b, row("Nodes", FormatPhases(s.Phases)))
		} else {
			b = append(b, row("Nodes", "unknown: "+errString(s.VDCErr)))
		}
		if s.AgentCAPin != "" {
			b = append(b, row("Agent CA pin", s.AgentCAPin))
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
		if h := a.Hypervisor; h.State != "" {
			b = append(b, row("Hypervisor", HypervisorText(h)))
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
		b = append(b, wrap(row("Services", strings.Join(parts, ", ")), u.width-1, 14)...)
	}
	b = append(b, row("Uptime", fmtDuration(s.Uptime)))
	return b, keys
}

// HypervisorText is the status screen's hypervisor line: state, libvirt, QEMU and
// accelerator, the reason when it is unavailable, and a warning when VM definitions
// and disks are kept in RAM.
func HypervisorText(h quantix.Hypervisor) string {
	var parts []string
	if h.Version != "" {
		parts = append(parts, "libvirt "+h.Version)
	}
	if h.QEMUVersion != "" {
		parts = append(parts, "QEMU "+h.QEMUVersion)
	}
	if h.Accelerator != "" {
		parts = append(parts, h.Accelerator)
	}
	s := h.State
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	if h.State != quantix.HypervisorAvailable && h.Reason != "" {
		s += ": " + h.Reason
	}
	if h.Persistent != nil && !*h.Persistent {
		s += "; no QUANTIX-DATA: VMs are kept in RAM and lost at reboot"
	}
	return s
}
