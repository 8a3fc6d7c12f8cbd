package console

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// confirmScreen shows a network change that is active but not yet kept: the
// operator keeps it (the service saves it) or rolls it back now; doing nothing
// lets the service roll it back at the deadline.
type confirmScreen struct {
	res *network.ApplyResult // the change waiting; nil: nothing known
}

type confirmMsg struct{ err error }
type rollbackMsg struct {
	st       network.Status
	err      error
	deadline string // when the service rolls back by itself, "" if unknown
}

// open shows the change pending in the snapshot (one applied before this console
// started, or before the operator left the screen).
func (c *confirmScreen) open(u *ui) {
	if c.res == nil && u.snap != nil && u.snap.Net != nil && u.snap.Net.Pending != nil {
		p := u.snap.Net.Pending
		c.res = &network.ApplyResult{Applied: true, GatewayReachable: p.GatewayReachable, CheckError: p.CheckError,
			Deadline: p.Deadline, Status: *u.snap.Net}
	}
	u.scr = scrConfirm
}

// show shows the change an apply just made.
func (c *confirmScreen) show(u *ui, res *network.ApplyResult) {
	c.res = res
	u.scr = scrConfirm
}

func (c *confirmScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	switch k.String() {
	case "y", "Y":
		u.busy = "Confirming..."
		sock := u.cfg.NetworkSocket
		return func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, err := network.Client{Socket: sock}.Confirm(ctx)
			return confirmMsg{err}
		}
	case "n", "N", "esc":
		// Rejected: the network service restores the last good settings now (and
		// verifies them) rather than at the deadline.
		dl := ""
		if c.res != nil && !c.res.Deadline.IsZero() {
			dl = c.res.Deadline.Format("15:04:05")
		}
		u.busy = "Not kept: restoring the previous settings..."
		sock := u.cfg.NetworkSocket
		return func() tea.Msg {
			// A DHCP configuration is verified once its lease is back.
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			st, err := network.Client{Socket: sock}.Rollback(ctx, "the console")
			return rollbackMsg{st, err, dl}
		}
	}
	return nil
}

func (c *confirmScreen) confirmed(u *ui, msg confirmMsg) tea.Cmd {
	u.busy = ""
	if msg.err != nil {
		u.msg = "Confirm failed: " + msg.err.Error()
		return u.gatherCmd()
	}
	c.res = nil
	u.scr = scrStatus
	u.msg = "Network settings kept and saved to " + filepath.Base(u.cfg.NetworkConfig) + "."
	return u.gatherCmd()
}

func (c *confirmScreen) rolledBack(u *ui, msg rollbackMsg) tea.Cmd {
	u.busy = ""
	u.scr, c.res = scrStatus, nil
	switch {
	case msg.err == nil:
		addr := msg.st.Address
		if addr == "" {
			addr = "no address"
		}
		u.msg = "Not kept: the previous settings are back (" + addr + ", " + msg.st.Source + ")."
	case msg.deadline != "" && msg.st.LastRollback == nil:
		// The request itself failed: the service still rolls back at the deadline.
		u.msg = "Roll back failed: " + msg.err.Error() + "; the previous settings come back at " + msg.deadline + "."
	default:
		u.msg = "Roll back: " + msg.err.Error()
	}
	return u.gatherCmd()
}

func (c confirmScreen) view(u *ui) ([]string, string) {
	r := c.res
	if r == nil {
		return []string{"Nothing is waiting for confirmation."}, "Esc Back"
	}
	gw := "yes"
	if !r.GatewayReachable {
		gw = "NO: " + r.CheckError
	}
	left := ""
	if !r.Deadline.IsZero() {
		left = fmt.Sprintf("%ds", max(0, int(r.Deadline.Sub(u.now).Seconds())))
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
