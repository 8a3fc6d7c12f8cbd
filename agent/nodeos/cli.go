package nodeos

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// WriteSlots prints init's slots for an operator (qx-node upgrade status).
func WriteSlots(w io.Writer, st quantix.SlotsStatus) {
	trial := ""
	if st.Trial {
		trial = " (a trial, not judged yet)"
	}
	fmt.Fprintf(w, "booted: slot %s, state %s%s\n", st.Booted, st.State, trial)
	for _, s := range st.Slots {
		what := "empty"
		if s.Version != "" {
			what = s.Image + " " + s.Version
		}
		var marks []string
		if s.Slot == st.Booted {
			marks = append(marks, "booted")
		}
		if s.Good {
			marks = append(marks, "good")
		}
		if s.Tries > 0 {
			marks = append(marks, fmt.Sprintf("%d tries left", s.Tries))
		}
		fmt.Fprintf(w, "slot %s: %s", s.Slot, what)
		if len(marks) > 0 {
			fmt.Fprintf(w, " [%s]", strings.Join(marks, ", "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "next boot: slot %s (order %s)\n", st.Next, strings.Join(st.Order, " "))
	if st.RolledBackFrom != "" {
		fmt.Fprintf(w, "last rollback: from slot %s: %s\n", st.RolledBackFrom, st.Reason)
	}
}

// Staged returns the slot the next boot tries when it is not the booted one (a
// release was staged), or an error saying that nothing is staged.
func Staged(st quantix.SlotsStatus) (quantix.SlotInfo, error) {
	if st.Next != "" && st.Next != st.Booted {
		for _, s := range st.Slots {
			if s.Slot == st.Next && s.Version != "" {
				return s, nil
			}
		}
	}
	return quantix.SlotInfo{}, fmt.Errorf("nothing is staged: the next boot is slot %s, the booted one; stage a release first (qx-node upgrade stage <bundle folder>)", st.Booted)
}

// WriteOrder prints what the agent did with the vDC's last upgrade order, as
// agent-state.json below dataDir says (nothing when there is none).
func WriteOrder(w io.Writer, dataDir string) error {
	st, err := loadState(filepath.Join(dataDir, StateFile))
	if err != nil {
		return err
	}
	p := st.progress()
	if p == nil {
		return nil
	}
	fmt.Fprintf(w, "vDC order: upgrade %s, release %s (%s): %s since %s", p.Upgrade, p.Release, p.Version, p.Phase, p.At.Format(time.RFC3339))
	if p.Error != "" {
		fmt.Fprintf(w, ": %s", p.Error)
	}
	fmt.Fprintln(w)
	return nil
}
