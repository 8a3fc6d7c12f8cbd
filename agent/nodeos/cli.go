package nodeos

import (
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/quantix/quantix"
)

// Staged returns the slot the next boot tries when it is not the booted one (a
// release was staged), or an error saying that nothing is staged.
func Staged(st quantix.SlotsStatus) (quantix.SlotInfo, error) {
	if s, ok := st.Staged(); ok {
		return s, nil
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
