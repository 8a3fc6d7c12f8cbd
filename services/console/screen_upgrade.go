package console

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/upgrade"
)

// upgradeScreen upgrades offline from a release bundle on a USB stick or CD
// (docs/design.md §16): it shows init's slots, scans the media for bundles,
// stages the chosen one through init (which verifies it; nothing is written when
// it refuses) and, as a separate step, reboots into it. Both steps wait for a y.
type upgradeScreen struct {
	slots    *quantix.SlotsStatus // nil until init answered
	slotsErr error
	media    []Medium // the last scan; the ones holding bundles are mounted
	scanned  bool
	scanErr  error
	sel      int    // the selected bundle (index into bundles())
	ask      string // askStage or askReboot awaiting y
	staging  bool   // a stage request is running
	result   []string
}

const (
	askStage  = "stage"
	askReboot = "reboot"
)

type slotsMsg struct {
	st  quantix.SlotsStatus
	err error
}
type mediaMsg struct {
	media []Medium
	err   error
}
type stageMsg struct {
	b   mediaBundle
	st  quantix.Staged
	err error
}
type releasedMsg struct{ err error }

// mediaBundle is a bundle found and the device it is on.
type mediaBundle struct {
	upgrade.Unverified
	Device string
}

func (u *ui) media() Media {
	return Media{SysBlock: u.cfg.SysBlock, DevDir: u.cfg.DevDir, Dir: u.cfg.MediaDir, BootLabel: u.cfg.VolumeLabel}
}

// open shows the screen and asks init for the slots.
func (s *upgradeScreen) open(u *ui) tea.Cmd {
	u.scr, s.ask = scrUpgrade, ""
	return s.slotsCmd(u)
}

func (s *upgradeScreen) slotsCmd(u *ui) tea.Cmd {
	in := u.cfg.Init
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := in.Slots(ctx)
		return slotsMsg{st, err}
	}
}

// close leaves the screen: the media it mounted are unmounted, unless a stage
// still reads them (its result unmounts them then).
func (s *upgradeScreen) close(u *ui) tea.Cmd {
	u.scr, s.ask = scrStatus, ""
	if s.staging {
		return nil
	}
	return s.releaseCmd()
}

func (s *upgradeScreen) releaseCmd() tea.Cmd {
	media := s.media
	s.media, s.scanned, s.sel = nil, false, 0
	for _, md := range media {
		if md.Dir != "" {
			return func() tea.Msg { return releasedMsg{Release(media)} }
		}
	}
	return nil
}

// bundles lists the bundles of the last scan, in the order shown.
func (s *upgradeScreen) bundles() []mediaBundle {
	var out []mediaBundle
	for _, md := range s.media {
		for _, b := range md.Bundles {
			out = append(out, mediaBundle{b, md.Device})
		}
	}
	return out
}

// upgradable reports whether init has slots to stage into.
func (s *upgradeScreen) upgradable() bool { return s.slots != nil }

func (s *upgradeScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	bs := s.bundles()
	if s.ask != "" {
		a := s.ask
		s.ask = ""
		if k.String() != "y" {
			u.msg = "Cancelled."
			return nil
		}
		switch a {
		case askStage:
			if s.sel < len(bs) {
				return s.stage(u, bs[s.sel])
			}
		case askReboot:
			in := u.cfg.Init
			u.busy = "Asking init to reboot into the new release..."
			return func() tea.Msg {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return doneMsg{"Reboot into the new release", in.Power(ctx, PowerReboot), "requested"}
			}
		}
		return nil
	}
	switch k.String() {
	case "esc":
		return s.close(u)
	case "m":
		if !s.upgradable() {
			return nil
		}
		u.msg, s.result = "", nil
		u.busy = "Scanning USB sticks and CDs for release bundles..."
		old, med := s.media, u.media()
		s.media, s.sel = nil, 0
		return func() tea.Msg {
			if err := Release(old); err != nil {
				return mediaMsg{old, err}
			}
			media, err := med.Scan()
			return mediaMsg{media, err}
		}
	case "up", "k", "ctrl+p":
		if s.sel > 0 {
			s.sel--
		}
	case "down", "j", "ctrl+n":
		if s.sel+1 < len(bs) {
			s.sel++
		}
	case "enter":
		if s.upgradable() && s.sel < len(bs) {
			s.ask, u.msg = askStage, ""
		}
	case "r":
		if s.slots != nil {
			if _, ok := s.slots.Staged(); ok {
				s.ask, u.msg = askReboot, ""
			}
		}
	}
	return nil
}

func (s *upgradeScreen) stage(u *ui, b mediaBundle) tea.Cmd {
	in := u.cfg.Init
	s.staging, s.result = true, nil
	u.busy = fmt.Sprintf("Verifying and writing %s %s from %s...", b.Image, b.Version, b.Device)
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), quantix.StageTimeout+5*time.Second)
		defer cancel()
		st, err := in.Stage(ctx, b.Dir)
		return stageMsg{b, st, err}
	}
}

func (s *upgradeScreen) slotsAnswered(msg slotsMsg) {
	s.slots, s.slotsErr = nil, msg.err
	if msg.err == nil {
		s.slots = &msg.st
	}
}

func (s *upgradeScreen) scannedMedia(u *ui, msg mediaMsg) {
	u.busy = ""
	s.media, s.scanned, s.scanErr, s.sel = msg.media, true, msg.err, 0
}

// staged takes init's answer: on success the media are unmounted (the new
// release is on the ESP) and the slots read again, so the reboot is offered.
func (s *upgradeScreen) staged(u *ui, msg stageMsg) tea.Cmd {
	u.busy, s.staging = "", false
	if msg.err != nil {
		s.result = []string{"Refused by init, nothing was written: " + msg.b.Image + " " + msg.b.Version + " on " + filepath.Base(msg.b.Device)}
		s.result = append(s.result, wrap("  "+msg.err.Error(), max(u.width-1, 20), 2)...)
		if u.scr != scrUpgrade {
			return s.releaseCmd()
		}
		return nil
	}
	st := msg.st
	s.result = []string{
		fmt.Sprintf("Staged %s %s into slot %s, signed by %s, in %.1f s.", st.Image, st.Version, st.Slot, st.SignedBy, st.Seconds),
		"It runs after a reboot, as a trial: if it fails, this release comes back.",
	}
	return tea.Batch(s.releaseCmd(), s.slotsCmd(u))
}

func (s *upgradeScreen) released(u *ui, msg releasedMsg) {
	if msg.err != nil {
		u.msg = "Unmount failed: " + msg.err.Error()
		return
	}
	u.msg = "Media unmounted: you may remove them."
}

func (s upgradeScreen) view(u *ui) ([]string, string) {
	b := []string{"Upgrade from a USB stick or CD", ""}
	switch {
	case errors.Is(s.slotsErr, quantix.ErrNotAB):
		return append(b, "This is a live boot, not an installed A/B disk: there is nothing to",
			"upgrade. Install the image first (the installer on the boot menu)."), "Esc Back"
	case s.slotsErr != nil:
		b = append(b, wrap("Slots unknown: "+s.slotsErr.Error(), max(u.width-1, 20), 2)...)
		return append(b, s.result...), "Esc Back"
	case s.slots == nil:
		return append(b, "Asking init for the slots..."), "Esc Back"
	}
	for _, l := range s.slots.Lines() {
		b = append(b, wrap(l, max(u.width-1, 20), 2)...)
	}
	staged, isStaged := s.slots.Staged()
	keys := "m Scan media  Esc Back"
	if isStaged {
		keys = "m Scan media  r Reboot into the new release  Esc Back"
	}
	b = append(b, "")
	bs := s.bundles()
	if s.scanned {
		switch {
		case s.scanErr != nil:
			b = append(b, "Scan failed: "+s.scanErr.Error())
		case len(s.media) == 0:
			b = append(b, "No USB stick or CD found (plug one in, then m).")
		}
		i := 0
		for _, md := range s.media {
			dev := filepath.Base(md.Device)
			switch {
			case md.Err != nil:
				b = append(b, wrap(dev+": "+md.Err.Error(), max(u.width-1, 20), 2)...)
			case len(md.Bundles) == 0:
				b = append(b, "no bundle found on "+md.Device)
			}
			for _, bd := range md.Bundles {
				mark := "  "
				if i == s.sel {
					mark = "> "
				}
				where := "/"
				if rel, _ := filepath.Rel(md.Dir, bd.Dir); rel != "." {
					where += filepath.ToSlash(rel)
				}
				b = append(b, fmt.Sprintf("%s%-10s %-12s %-6s %s:%s", mark, bd.Image, bd.Version, dev, md.Label, where))
				i++
			}
			for _, err := range md.Broken {
				b = append(b, wrap("  not a bundle: "+err.Error(), max(u.width-1, 20), 4)...)
			}
		}
		if len(bs) > 0 {
			keys = "Up/Down select  Enter Stage  " + keys
		}
	}
	if len(s.result) > 0 {
		b = append(b, "")
		b = append(b, s.result...)
	}
	switch s.ask {
	case askStage:
		if s.sel < len(bs) {
			bd := bs[s.sel]
			b = append(b, "", fmt.Sprintf("Stage %s %s into slot %s? y = yes, any other key = no",
				bd.Image, bd.Version, quantix.OtherSlot(s.slots.Booted)))
		}
	case askReboot:
		b = append(b, "", fmt.Sprintf("Reboot into slot %s (%s %s) now? y = yes, any other key = no", staged.Slot, staged.Image, staged.Version))
	}
	return b, keys
}
