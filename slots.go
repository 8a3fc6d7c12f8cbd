package quantix

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// A/B boot slots on QUANTIX-EFI (docs/design.md §16). Paths are relative to the
// ESP's root, with forward slashes, as GRUB and go-diskfs name them.
const (
	SlotA = "a"
	SlotB = "b"
	// ESPSlotsDir holds one folder per slot and the GRUB environment block.
	ESPSlotsDir = "EFI/quantix"
	// ESPEnv and ESPEnvBackup are the two copies of the GRUB environment block
	// (installer/bootenv): written one after the other, read first valid first.
	ESPEnv       = ESPSlotsDir + "/grubenv"
	ESPEnvBackup = ESPSlotsDir + "/grubenv.bak"
	// Files inside a slot folder.
	SlotKernel   = "vmlinuz"
	SlotInitrd   = "initrd.img"
	SlotManifest = "manifest.toml"
	// SlotMaxTries is how often a trial slot boots before GRUB gives up on it.
	SlotMaxTries = 3
)

// Kernel command line parameters GRUB adds for the booted slot.
const (
	ParamSlot  = "quantix.slot"  // a or b
	ParamTrial = "quantix.trial" // 1 while the slot is not yet marked good
)

// ESPSlotFile is the ESP path of a file in a slot: ESPSlotFile("a", SlotKernel) is
// EFI/quantix/a/vmlinuz.
func ESPSlotFile(slot, name string) string { return ESPSlotsDir + "/" + slot + "/" + name }

// OtherSlot is the slot that is not s.
func OtherSlot(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// ValidSlot reports whether s names a slot.
func ValidSlot(s string) bool { return s == SlotA || s == SlotB }

// SlotManifestInfo is a slot's manifest (SlotManifest): what the slot holds, so a
// reader can tell which release a slot boots and check its files.
type SlotManifestInfo struct {
	Image        string `toml:"image"`
	Version      string `toml:"version"`
	KernelSHA256 string `toml:"kernel_sha256"`
	InitrdSHA256 string `toml:"initrd_sha256"`
}

// Encode returns the TOML form of m.
func (m SlotManifestInfo) Encode() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# A Quantix boot slot: written by qx-install or an upgrade.\n")
	if err := toml.NewEncoder(&b).Encode(m); err != nil {
		return nil, fmt.Errorf("encode slot manifest: %w", err)
	}
	return b.Bytes(), nil
}

// ParseSlotManifest decodes and checks a slot manifest.
func ParseSlotManifest(b []byte) (SlotManifestInfo, error) {
	var m SlotManifestInfo
	if err := DecodeTOML(SlotManifest, b, &m); err != nil {
		return m, err
	}
	if m.Image == "" || m.Version == "" || len(m.KernelSHA256) != 64 || len(m.InitrdSHA256) != 64 {
		return m, fmt.Errorf("slot manifest: image, version and the kernel's and initramfs's sha256 are required")
	}
	return m, nil
}

// Release bundles (docs/design.md §16): a folder holding <image>.iso, its
// <image>.manifest.json (images/build), BundleSums over both and BundleSignature,
// an ed25519 signature of BundleSums made by `qx-image sign`.
const (
	BundleSums      = "SHA256SUMS"
	BundleSignature = "SHA256SUMS.sig"
	// TrustedKeysPath is where the image builder writes the public keys an image
	// accepts bundles from (the image definition's trusted_keys), one a line.
	TrustedKeysPath = "/etc/quantix/trusted-keys"
)

// Lines describes the slots for an operator, one line each: the booted slot and
// its state, each slot with what it holds, the next boot and the last rollback
// (qx-node upgrade status, qx-ctl controller show and the console's Upgrade
// screen print them).
func (st SlotsStatus) Lines() []string {
	trial := ""
	if st.Trial {
		trial = " (a trial, not judged yet)"
	}
	out := []string{fmt.Sprintf("booted: slot %s, state %s%s", st.Booted, st.State, trial)}
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
		l := fmt.Sprintf("slot %s: %s", s.Slot, what)
		if len(marks) > 0 {
			l += " [" + strings.Join(marks, ", ") + "]"
		}
		out = append(out, l)
	}
	out = append(out, fmt.Sprintf("next boot: slot %s (order %s)", st.Next, strings.Join(st.Order, " ")))
	if st.RolledBackFrom != "" {
		out = append(out, fmt.Sprintf("last rollback: from slot %s: %s", st.RolledBackFrom, st.Reason))
	}
	return out
}

// Staged returns the slot the next boot tries when it is not the booted one (a
// release was staged and waits for a reboot); ok is false when nothing is staged.
func (st SlotsStatus) Staged() (s SlotInfo, ok bool) {
	if st.Next == "" || st.Next == st.Booted {
		return SlotInfo{}, false
	}
	for _, s := range st.Slots {
		if s.Slot == st.Next && s.Version != "" {
			return s, true
		}
	}
	return SlotInfo{}, false
}
