package nodeos

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/quantix/quantix"
)

// state is agent-state.json: how far the agent got with which order.
type state struct {
	Upgrade string    `json:"upgrade"`
	Release string    `json:"release"`
	Version string    `json:"version"`
	Phase   string    `json:"phase"` // quantix.Upgrade*; "" = not started
	Error   string    `json:"error,omitempty"`
	At      time.Time `json:"at"`
	// Slot is the slot init staged the release into.
	Slot string `json:"slot,omitempty"`
	// BootID and FromVersion are the boot and the version that asked for the
	// reboot: another boot id means it happened.
	BootID      string `json:"boot_id,omitempty"`
	FromVersion string `json:"from_version,omitempty"`
	// Committed: the new version booted and init committed its slot; the
	// bundle was removed.
	Committed bool `json:"committed,omitempty"`
}

// progress is what a heartbeat reports about the order; nil before it started.
func (s state) progress() *quantix.UpgradeProgress {
	if s.Upgrade == "" || s.Phase == "" {
		return nil
	}
	return &quantix.UpgradeProgress{Upgrade: s.Upgrade, Release: s.Release, Version: s.Version, Phase: s.Phase, Error: s.Error, At: s.At}
}

// loadState reads the state; a missing file is no order.
func loadState(path string) (state, error) {
	var s state
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return state{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func saveState(path string, s state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return quantix.WriteFileAtomic(path, append(b, '\n'), 0o600)
}
