package installer

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/quantix/quantix"
)

// ErrRefused is wrapped when no disk may be used: the named disk breaks a safety
// rule, or the answer does not name exactly one disk. Nothing was written.
var ErrRefused = errors.New("install refused")

// MinDiskSize is the smallest disk the plan fits on with room for data.
const MinDiskSize = 2 << 30

// Protect says which disks must never be written: the running boot medium and the
// disk holding the answer file.
type Protect struct {
	// VolumeLabel is the running image's ISO label (QUANTIX-OS, QVDC).
	VolumeLabel string
	// Disks are names of disks known to hold the boot medium (e.g. found by device).
	Disks map[string]bool
}

// reason returns why d is protected, or "".
func (p Protect) reason(d *Disk) string {
	switch {
	case p.Disks[d.Name]:
		return "it holds the running boot medium"
	case p.VolumeLabel != "" && d.HasLabel(p.VolumeLabel):
		return fmt.Sprintf("it holds the running boot medium (%s)", p.VolumeLabel)
	case d.HasLabel(quantix.LabelInstall):
		return fmt.Sprintf("it holds the answer-file filesystem (%s)", quantix.LabelInstall)
	}
	return ""
}

// allowedMounts are the mounts the installer may undo itself: init mounts an
// earlier install's QUANTIX-CFG and QUANTIX-DATA there.
var allowedMounts = map[string]bool{quantix.ConfigDir: true, quantix.DataDir: true}

// SelectTarget applies the safety rules to the disks and returns the disk the
// target names, plus warnings for the operator (stale QUANTIX-* labels on other
// disks). It never touches a disk. Rules:
//   - never the boot medium or the answer-file disk, even when named;
//   - a removable disk only when named by path, serial or WWN;
//   - never a read-only disk, one below MinDiskSize, or one with other than
//     512-byte logical sectors;
//   - a disk holding anything (partitions, filesystems, any non-zero byte in its
//     first or last MiB) only with wipe;
//   - never a disk mounted elsewhere than /quantix or /var/lib/quantix.
func SelectTarget(disks []*Disk, t Target, wipe bool, p Protect) (*Disk, []string, error) {
	var d *Disk
	var err error
	if t.OnlyEmpty {
		d, err = onlyEmpty(disks, p)
	} else {
		d, err = findNamed(disks, t)
	}
	if err != nil {
		return nil, nil, err
	}
	if why := Refusal(d, t.explicit(), wipe, p); why != "" {
		return nil, nil, fmt.Errorf("%w: %s (%s): %s", ErrRefused, d.Path, t, why)
	}
	return d, StaleWarnings(disks, d), nil
}

// Refusal returns why d may not be the target, or "" when it may. explicit says
// the disk was named by path, serial or WWN.
func Refusal(d *Disk, explicit, wipe bool, p Protect) string {
	if why := p.reason(d); why != "" {
		return "never installing over " + strings.TrimPrefix(why, "it holds ")
	}
	if d.ReadOnly {
		return "the disk is read-only"
	}
	if d.Removable && !explicit {
		return "it is a removable disk; name it by path, serial or wwn to install on it"
	}
	if d.Size < MinDiskSize {
		return fmt.Sprintf("it is %s; at least %s is needed", HumanSize(d.Size), HumanSize(MinDiskSize))
	}
	if d.SectorSize != 512 {
		return fmt.Sprintf("its logical sector size is %d bytes; only 512 is supported", d.SectorSize)
	}
	for _, m := range d.Mounts {
		if !allowedMounts[m] {
			return fmt.Sprintf("it is mounted on %s; unmount it first", m)
		}
	}
	if !d.Empty && !wipe {
		return fmt.Sprintf("it is not empty (%s); set wipe = true to erase it", d.Contents())
	}
	return ""
}

func findNamed(disks []*Disk, t Target) (*Disk, error) {
	var match []*Disk
	what := t.String()
	for _, d := range disks {
		switch {
		case t.Path != "":
			base := filepath.Base(t.Path)
			if base == d.Name || t.Path == d.Path {
				match = append(match, d)
			}
			for _, p := range d.Parts {
				if p.Name == base {
					return nil, fmt.Errorf("%w: target.path %s is a partition; name the whole disk %s", ErrRefused, t.Path, d.Path)
				}
			}
		case t.Serial != "":
			if d.Serial != "" && strings.TrimSpace(t.Serial) == d.Serial {
				match = append(match, d)
			}
		case t.WWN != "":
			if d.WWN != "" && normWWN(t.WWN) == normWWN(d.WWN) {
				match = append(match, d)
			}
		}
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("%w: no disk has %s; disks: %s", ErrRefused, what, listDisks(disks))
	case 1:
		return match[0], nil
	}
	var names []string
	for _, d := range match {
		names = append(names, d.Path)
	}
	return nil, fmt.Errorf("%w: %d disks have %s (%s); name one by path", ErrRefused, len(match), what, strings.Join(names, ", "))
}

func onlyEmpty(disks []*Disk, p Protect) (*Disk, error) {
	var cands []*Disk
	var skipped []string
	for _, d := range disks {
		why := Refusal(d, false, false, p)
		if why == "" {
			cands = append(cands, d)
		} else {
			skipped = append(skipped, fmt.Sprintf("%s: %s", d.Path, why))
		}
	}
	switch len(cands) {
	case 1:
		return cands[0], nil
	case 0:
		return nil, fmt.Errorf("%w: target.only_empty: no disk is empty, fixed and large enough (%s)", ErrRefused, strings.Join(skipped, "; "))
	}
	var names []string
	for _, d := range cands {
		names = append(names, d.Path)
	}
	return nil, fmt.Errorf("%w: target.only_empty: %d disks are empty (%s); name one by path, serial or wwn", ErrRefused, len(cands), strings.Join(names, ", "))
}

func listDisks(disks []*Disk) string {
	if len(disks) == 0 {
		return "none found"
	}
	var s []string
	for _, d := range disks {
		s = append(s, d.Describe())
	}
	return strings.Join(s, "; ")
}

// StaleWarnings names the other disks that carry QUANTIX-* labels of an earlier
// install. The installed system boots with quantix.disk=<its GPT GUID>, so init
// mounts only the partitions of the disk it booted from; the labels are reported
// so the operator can wipe those disks.
func StaleWarnings(disks []*Disk, target *Disk) []string {
	var out []string
	for _, d := range disks {
		if d == target {
			continue
		}
		var ls []string
		for _, l := range d.QuantixLabels() {
			if isQuantixLabel(l) {
				ls = append(ls, l)
			}
		}
		if len(ls) == 0 {
			continue
		}
		sort.Strings(ls)
		out = append(out, fmt.Sprintf("%s carries %s from an earlier install; the installed system ignores it (it mounts only partitions on the disk it boots from) but consider wiping it",
			d.Path, strings.Join(ls, ", ")))
	}
	return out
}
