package console

import (
	"fmt"
	"os"
	"strings"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
)

// hostnameScreen sets the hostname, saved to QUANTIX-CFG and applied at once.
type hostnameScreen struct {
	name field
	err  string
}

type hostMsg struct {
	name string
	err  error
}

func newHostnameScreen() hostnameScreen { return hostnameScreen{name: field{max: 253}} }

// open starts from the running hostname.
func (h *hostnameScreen) open(u *ui) {
	h.name.value, h.err = "", ""
	if u.snap != nil {
		h.name.value = u.snap.Hostname
	}
	u.scr = scrHostname
}

func (h *hostnameScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	switch k.Type {
	case tea.KeyEsc:
		u.scr = scrStatus
		return nil
	case tea.KeyEnter:
		name, err := quantix.NormalizeHostname(strings.TrimSpace(h.name.value))
		if err != nil {
			h.err = err.Error()
			return nil
		}
		cfg := u.cfg
		u.busy = "Saving hostname..."
		return func() tea.Msg { return hostMsg{name, SaveHostname(cfg, name)} }
	}
	h.name.key(k)
	h.err = ""
	return nil
}

func (h *hostnameScreen) saved(u *ui, msg hostMsg) tea.Cmd {
	u.busy = ""
	if msg.err != nil {
		h.err = msg.err.Error()
		return nil
	}
	u.scr, h.err = scrStatus, ""
	u.msg = "Hostname " + msg.name + " set and saved."
	return u.gatherCmd()
}

func (h hostnameScreen) view(u *ui) ([]string, string) {
	b := []string{
		"Hostname (RFC 1123: letters, digits, hyphens, dots)", "",
		"  Hostname  " + h.name.render(true),
	}
	if h.err != "" {
		b = append(b, wrap("    ! "+h.err, u.width-1, 6)...)
	}
	b = append(b, "",
		"Saved to "+u.cfg.HostnameFile+" and set at once.")
	if u.cfg.Image != quantix.ImageQvDC {
		b = append(b, "The vDC knows nodes by hostname: a renamed node registers as a new",
			"node; delete the old one at the vDC.")
	}
	return b, "Enter Save  Esc Back"
}

// SaveHostname writes name to QUANTIX-CFG atomically (init reads it at boot), then
// sets it on the running system and in the session's /etc/hostname.
func SaveHostname(cfg *Config, name string) error {
	if err := quantix.WriteFileAtomic(cfg.HostnameFile, []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	if err := cfg.SetHostname(name); err != nil {
		return fmt.Errorf("saved, but set the running hostname: %w", err)
	}
	if cfg.EtcHostname != "" {
		if err := os.WriteFile(cfg.EtcHostname, []byte(name+"\n"), 0o644); err != nil {
			return fmt.Errorf("saved, but %w", err)
		}
	}
	return nil
}
