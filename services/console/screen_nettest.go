package console

import (
	"context"
	"fmt"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// netTestScreen tests the management network (gateway, DNS, vDC) and shows the
// results.
type netTestScreen struct {
	checks []CheckResult // nil while the test runs
}

type checksMsg []CheckResult

// start runs the test again.
func (n *netTestScreen) start(u *ui) tea.Cmd {
	u.scr, n.checks = scrNetTest, nil
	var st *network.Status
	if u.snap != nil {
		st = u.snap.Net
	}
	vdc := u.cfg.VDCURL
	if u.cfg.Image != quantix.ImageQvDC {
		vdc = ""
		if u.snap != nil && u.snap.Agent != nil {
			vdc = u.snap.Agent.VDC
		}
	}
	u.busy = "Testing the management network..."
	return func() tea.Msg { return checksMsg(TestNetwork(context.Background(), st, vdc, 3*time.Second)) }
}

func (n *netTestScreen) key(u *ui, k tea.KeyMsg) tea.Cmd {
	switch {
	case k.Type == tea.KeyEsc:
		u.scr = scrStatus
	case k.String() == "r" || k.Type == tea.KeyEnter:
		return n.start(u)
	}
	return nil
}

func (n *netTestScreen) done(u *ui, msg checksMsg) {
	u.busy = ""
	n.checks = msg
}

func (n netTestScreen) view(u *ui) ([]string, string) {
	if n.checks == nil {
		return []string{"Testing gateway, DNS and vDC..."}, "Esc Back"
	}
	var b []string
	for _, c := range n.checks {
		res := "FAIL"
		if c.OK {
			res = "ok  "
		}
		b = append(b, wrap(fmt.Sprintf("%s  %-28s %s", res, c.Name, c.Detail), u.width-1, 6)...)
	}
	return b, "r Run again  Esc Back"
}
