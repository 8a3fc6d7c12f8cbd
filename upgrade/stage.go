package upgrade

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/installer/medium"
)

// ErrOnTrial is returned by Stage while the running slot is itself a trial: the
// other slot is then the fallback and must not be overwritten.
var ErrOnTrial = errors.New("the running slot is on trial")

// Staged is the result of Stage.
type Staged struct {
	Slot  string // the slot written
	State bootenv.State
	Took  time.Duration
}

// Stage writes b's kernel and initramfs into the slot that is not booted, on the
// ESP mounted at esp, and makes it the next boot's trial. First the target slot is
// taken out of the environment (no tries, not good), so a power cut while its
// files are written never boots them half-written; each file goes in through a
// temp file, fsync and rename, and is read back; last the environment says "new
// old" with SlotMaxTries tries for the new slot, not yet good. Nothing is written
// when the booted slot is not the good one (a trial: commit it first).
func Stage(b *Bundle, esp, booted string, log *slog.Logger) (*Staged, error) {
	t0 := time.Now()
	fail := func(err error) (*Staged, error) { return nil, fmt.Errorf("stage %s %s: %w", b.Image, b.Version, err) }
	if !quantix.ValidSlot(booted) {
		return fail(fmt.Errorf("booted slot %q: want a or b (%s on the kernel command line)", booted, quantix.ParamSlot))
	}
	env := bootenv.OnESP(esp)
	st, _, err := env.Read()
	if err != nil {
		return fail(err)
	}
	if !st.Slot(booted).OK {
		return fail(fmt.Errorf("%w (slot %s): let it prove itself and commit it before staging another release", ErrOnTrial, booted))
	}
	target := quantix.OtherSlot(booted)

	// Read the new boot files from the verified ISO before anything is written,
	// and only if it is still the file Verify checked.
	if got, err := quantix.FileSHA256(b.ISO); err != nil || got != b.ISOSHA256 {
		return fail(fmt.Errorf("%s changed since it was verified (sha256 %s, verified %s, %v): verify the bundle again", b.ISO, got, b.ISOSHA256, err))
	}
	med, err := medium.Open(b.ISO)
	if err != nil {
		return fail(err)
	}
	kernel, kerr := med.ReadFile(medium.Kernel)
	initrd, ierr := med.ReadFile(medium.Initrd)
	med.Close()
	if err := errors.Join(kerr, ierr); err != nil {
		return fail(fmt.Errorf("read the boot files from %s: %w", b.ISO, err))
	}
	man, err := quantix.SlotManifestInfo{Image: b.Image, Version: b.Version, KernelSHA256: sha(kernel), InitrdSHA256: sha(initrd)}.Encode()
	if err != nil {
		return fail(err)
	}

	*st.Slot(target) = bootenv.Slot{}
	if err := env.Write(st); err != nil {
		return fail(fmt.Errorf("take slot %s out of the boot order: %w", target, err))
	}
	log.Info("staging", "slot", target, "image", b.Image, "version", b.Version)
	if err := removeStaleTemps(filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile(target, ""))), log); err != nil {
		return fail(err)
	}
	// The manifest last: a slot with a manifest has all its files.
	for _, f := range []struct {
		name string
		data []byte
	}{{quantix.SlotKernel, kernel}, {quantix.SlotInitrd, initrd}, {quantix.SlotManifest, man}} {
		p := filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile(target, f.name)))
		if err := quantix.WriteFileAtomic(p, f.data, 0o644); err != nil {
			return fail(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return fail(err)
		}
		if !bytes.Equal(got, f.data) {
			return fail(fmt.Errorf("read back %s: sha256 %s, wrote %s", p, sha(got), sha(f.data)))
		}
	}
	st.Order = [2]string{target, booted}
	*st.Slot(target) = bootenv.Slot{Tries: quantix.SlotMaxTries}
	if err := env.Write(st); err != nil {
		return fail(fmt.Errorf("make slot %s the next boot's trial: %w", target, err))
	}
	d := time.Since(t0)
	log.Info("staged", "slot", target, "version", b.Version, "took", d.Round(time.Millisecond))
	return &Staged{Slot: target, State: st, Took: d}, nil
}

// removeStaleTemps deletes the temporary files a power cut during an earlier
// stage left in the slot's folder (quantix.WriteFileAtomic's ".<name>.tmp-*"):
// each is up to an initramfs in size, and a few would fill the ESP.
func removeStaleTemps(dir string, log *slog.Logger) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look for leftovers in %s: %w", dir, err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-") {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("remove a leftover of an earlier stage: %w", err)
			}
			log.Info("removed a leftover of an interrupted stage", "file", filepath.Join(dir, n))
		}
	}
	return nil
}
