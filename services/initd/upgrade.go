package initd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/upgrade"
)

// ErrNotAB is the answer to the slots and stage requests on a live boot (the
// contract is quantix.ErrNotAB, which InitClient recognises).
var ErrNotAB = quantix.ErrNotAB

// Where init keeps what an upgrade needs to know across boots, on QUANTIX-DATA.
const (
	upgradeDir = quantix.DataDir + "/upgrade"
	// stagedFile records the last stage (slot, version, when), so that a later
	// rollback can tell which trial failed and which kept logs belong to it.
	stagedFile = "staged.toml"
	reasonFile = "reason.toml"
)

// SlotKeeper is init's side of the slots and stage requests on an installed A/B
// disk: it knows the booted slot and the verdict on it, and it is the one writer
// of the ESP (the trial's verdict and a stage never write at once).
type SlotKeeper struct {
	// WithESP mounts QUANTIX-EFI, runs fn on its folder and unmounts it.
	WithESP func(fn func(esp string) error) error
	// Image and Version are the running release; KeyFiles the trusted keys
	// (quantix.TrustedKeysPath, then quantix.SiteTrustedKeys, which may be
	// missing); DataDir holds the upgrade folder (quantix.DataDir).
	Image, Version string
	KeyFiles       []string
	DataDir        string
	Log            *slog.Logger

	mu              sync.Mutex
	booted          string
	trial           bool
	state           string
	rolledBack, why string
}

// NewSlotKeeper returns the keeper for a boot of slot (trial: quantix.trial=1).
func NewSlotKeeper(slot string, trial bool) *SlotKeeper {
	st := quantix.SlotGood
	if trial {
		st = quantix.SlotTrial
	}
	return &SlotKeeper{booted: slot, trial: trial, state: st}
}

// esp runs fn on the mounted ESP, one caller at a time.
func (k *SlotKeeper) esp(fn func(env bootenv.Files, esp string) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.WithESP(func(esp string) error { return fn(bootenv.OnESP(esp), esp) })
}

func (k *SlotKeeper) setState(state, from, why string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.state, k.rolledBack, k.why = state, from, why
	if state != quantix.SlotTrial {
		k.trial = false
	}
}

// Slots reads the environment block and both slots' manifests.
func (k *SlotKeeper) Slots() (quantix.SlotsStatus, error) {
	k.mu.Lock()
	st := quantix.SlotsStatus{Booted: k.booted, Trial: k.trial, State: k.state, RolledBackFrom: k.rolledBack, Reason: k.why}
	k.mu.Unlock()
	err := k.esp(func(env bootenv.Files, esp string) error {
		s, _, err := env.Read()
		if err != nil {
			return err
		}
		st.Order = s.Order[:]
		st.Next, _, _ = s.Boot()
		for _, name := range []string{quantix.SlotA, quantix.SlotB} {
			sl := *s.Slot(name)
			info := quantix.SlotInfo{Slot: name, Tries: sl.Tries, Good: sl.OK}
			if b, err := os.ReadFile(filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile(name, quantix.SlotManifest)))); err == nil {
				if m, err := quantix.ParseSlotManifest(b); err == nil {
					info.Image, info.Version = m.Image, m.Version
				}
			}
			st.Slots = append(st.Slots, info)
		}
		return nil
	})
	return st, err
}

// TrustedKeys are the image's keys and the site's (a missing site file is no
// error; a missing or unreadable image file is).
func (k *SlotKeeper) TrustedKeys() ([]quantix.PublicKey, error) {
	var keys []quantix.PublicKey
	for i, p := range k.KeyFiles {
		ks, err := upgrade.LoadTrustedKeys(p)
		if err != nil {
			if i > 0 && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

// Stage verifies the bundle in dir and writes it into the slot that is not
// booted, as the next boot's trial. Nothing is written when it is refused or
// while this boot's own trial has not been judged.
func (k *SlotKeeper) Stage(dir string) (quantix.Staged, error) {
	t0 := time.Now()
	keys, err := k.TrustedKeys()
	if err != nil {
		return quantix.Staged{}, err
	}
	b, err := upgrade.Verify(dir, keys, upgrade.Rules{Image: k.Image, Running: k.Version})
	if err != nil {
		return quantix.Staged{}, err
	}
	k.mu.Lock()
	trial := k.trial
	k.mu.Unlock()
	if trial {
		return quantix.Staged{}, fmt.Errorf("%w (slot %s): wait for its verdict (%s marker) before staging another release", upgrade.ErrOnTrial, k.booted, quantix.MarkerSlot)
	}
	var staged *upgrade.Staged
	if err := k.esp(func(_ bootenv.Files, esp string) error {
		var err error
		staged, err = upgrade.Stage(b, esp, k.booted, k.Log)
		return err
	}); err != nil {
		return quantix.Staged{}, err
	}
	rec := fmt.Sprintf("slot = %q\nimage = %q\nversion = %q\nat = %s\n", staged.Slot, b.Image, b.Version, time.Now().UTC().Format(time.RFC3339))
	if err := os.MkdirAll(filepath.Join(k.DataDir, "upgrade"), 0o755); err == nil {
		if err := quantix.WriteFileAtomic(filepath.Join(k.DataDir, "upgrade", stagedFile), []byte(rec), 0o644); err != nil {
			k.Log.Warn("record the stage", "err", err)
		}
	}
	return quantix.Staged{Slot: staged.Slot, Image: b.Image, Version: b.Version, SignedBy: b.SignedBy, Seconds: time.Since(t0).Seconds()}, nil
}

// failedTrial is a failed trial's record, kept by keepFailedBoot.
type failedTrial struct {
	Slot    string  `toml:"slot"`
	Gate    string  `toml:"gate"`
	Error   string  `toml:"error"`
	Seconds float64 `toml:"seconds"`
}

// RollbackReason says why the trial of slot from failed: the reason its boot
// kept on QUANTIX-DATA when a gate failed, or, when that boot left none since
// the slot was staged, that it ended without a verdict (a panic, a hang the
// watchdog reset, or a power cut, on every try).
func RollbackReason(dataDir, from string) string {
	dir := filepath.Join(dataDir, "upgrade")
	var since time.Time
	var staged struct {
		Slot    string    `toml:"slot"`
		Version string    `toml:"version"`
		At      time.Time `toml:"at"`
	}
	if _, err := toml.DecodeFile(filepath.Join(dir, stagedFile), &staged); err == nil && staged.Slot == from {
		since = staged.At
	}
	kept, _ := filepath.Glob(filepath.Join(dir, "failed-"+from+"-*"))
	sort.Strings(kept) // the names end in a UTC time
	for i := len(kept) - 1; i >= 0; i-- {
		st, err := os.Stat(filepath.Join(kept[i], reasonFile))
		if err != nil || st.ModTime().Before(since) {
			continue
		}
		var f failedTrial
		if _, err := toml.DecodeFile(filepath.Join(kept[i], reasonFile), &f); err == nil {
			return fmt.Sprintf("health gate %q failed after %.0f s: %s (logs in %s)", f.Gate, f.Seconds, f.Error, kept[i])
		}
	}
	v := ""
	if staged.Version != "" && staged.Slot == from {
		v = " (" + staged.Version + ")"
	}
	return fmt.Sprintf("the trial of slot %s%s ended without a verdict on each of its %d tries: a kernel panic, a hang reset by the watchdog, or a power cut", from, v, quantix.SlotMaxTries)
}

// keepFailedBoot copies the service logs of a failed trial and its reason to
// QUANTIX-DATA, for RollbackReason and for the operator.
func keepFailedBoot(dataDir, logDir, slot string, v Verdict, log *slog.Logger) {
	dir := filepath.Join(dataDir, "upgrade", "failed-"+slot+"-"+time.Now().UTC().Format("20060102T150405Z"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Warn("keep the failed trial's logs", "err", err)
		return
	}
	var b strings.Builder
	_ = toml.NewEncoder(&b).Encode(failedTrial{Slot: slot, Gate: v.Gate, Error: v.Err.Error(), Seconds: v.Took.Seconds()})
	if err := quantix.WriteFileAtomic(filepath.Join(dir, reasonFile), []byte(b.String()), 0o644); err != nil {
		log.Warn("keep the failed trial's reason", "err", err)
	}
	logs, _ := filepath.Glob(filepath.Join(logDir, "*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			_ = quantix.WriteFileAtomic(filepath.Join(dir, filepath.Base(l)), b, 0o644)
		}
	}
	log.Info("kept the failed trial's logs", "dir", dir)
}
