package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/medium"
	"github.com/quantix/quantix/services/blockdev"
)

// Verified is what the read-back found, for the summary.
type Verified struct {
	DiskGUID     string
	KernelSHA256 string
	InitrdSHA256 string
	EFISHA256    string
	Checks       []string
}

// Verify reads the disk back through a fresh handle and compares it with the job:
// the GPT (GUIDs, types, names, ranges), the MBR boot code and core.img, the ESP's
// label and the sha256 of every file on it, the filesystem labels of QUANTIX-CFG and
// QUANTIX-DATA, and every configuration file's bytes and mode. marker says whether
// INSTALL-INCOMPLETE must still be on the ESP (before Finish) or gone (after).
func Verify(job Job, marker bool) (*Verified, error) {
	p := job.Plan
	v := &Verified{DiskGUID: p.DiskGUID}
	ok := func(format string, a ...any) { v.Checks = append(v.Checks, fmt.Sprintf(format, a...)) }

	d, err := diskfs.Open(job.Target, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("verify: open %s: %w", job.Target, err)
	}
	defer d.Close()
	tab, err := d.GetPartitionTable()
	if err != nil {
		return nil, fmt.Errorf("verify: read partition table: %w", err)
	}
	g, isGPT := tab.(*gpt.Table)
	if !isGPT {
		return nil, fmt.Errorf("verify: partition table is %s, want gpt", tab.Type())
	}
	if g.RecoveredFromBackup {
		return nil, errors.New("verify: the primary GPT is damaged (read from the backup)")
	}
	if !strings.EqualFold(g.GUID, p.DiskGUID) {
		return nil, fmt.Errorf("verify: disk GUID %s, want %s", g.GUID, p.DiskGUID)
	}
	var used []*gpt.Partition
	for _, gp := range g.Partitions {
		if gp.Type != gpt.Unused {
			used = append(used, gp)
		}
	}
	if len(used) != len(p.Parts) {
		return nil, fmt.Errorf("verify: %d partitions, want %d", len(used), len(p.Parts))
	}
	for i, q := range p.Parts {
		gp := used[i]
		if gp.Name != q.Name || !strings.EqualFold(string(gp.Type), string(q.Type)) || !strings.EqualFold(gp.GUID, q.GUID) ||
			int64(gp.Start)*p.SectorSize != q.Start || (int64(gp.End)+1)*p.SectorSize != q.End() {
			return nil, fmt.Errorf("verify: partition %d is %q %s %s sectors %d-%d, want %q %s %s at %d-%d",
				i+1, gp.Name, gp.Type, gp.GUID, gp.Start, gp.End, q.Name, q.Type, q.GUID, q.Start/p.SectorSize, q.End()/p.SectorSize-1)
		}
	}
	ok("GPT %s: %d partitions with names, types, GUIDs and ranges as planned", p.DiskGUID, len(p.Parts))

	f, err := os.Open(job.Target)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer f.Close()
	bios := p.Part(BIOSBootName)
	s0 := make([]byte, 512)
	if _, err := f.ReadAt(s0, 0); err != nil {
		return nil, fmt.Errorf("verify: read MBR: %w", err)
	}
	wantMBR, err := PatchMBR(job.Source.BootImg, s0, uint64(bios.Start/p.SectorSize))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(s0, wantMBR) || s0[446+4] != 0xEE {
		return nil, errors.New("verify: MBR boot code or protective MBR differs from what was written")
	}
	core, err := PatchCore(job.Source.Core, uint64(bios.Start/p.SectorSize))
	if err != nil {
		return nil, err
	}
	got := make([]byte, len(core))
	if _, err := f.ReadAt(got, bios.Start); err != nil {
		return nil, fmt.Errorf("verify: read core.img: %w", err)
	}
	if !bytes.Equal(got, core) {
		return nil, errors.New("verify: core.img in the BIOS boot partition differs from what was written")
	}
	ok("MBR boot code and core.img (%d bytes) at sector %d", len(core), bios.Start/p.SectorSize)

	// Labels as the kernel-side probe (init's) sees them.
	for _, q := range p.Parts {
		if q.FS == FSNone {
			continue
		}
		typ, label, found := blockdev.ProbeLabel(io.NewSectionReader(f, q.Start, q.Size))
		if !found || typ != q.FS || label != q.Name {
			return nil, fmt.Errorf("verify: partition %d holds %q labelled %q, want %s labelled %s", q.Number, typ, label, q.FS, q.Name)
		}
	}
	ok("filesystem labels QUANTIX-EFI (vfat), QUANTIX-CFG (ext4), QUANTIX-DATA (ext4)")

	esp, err := d.GetFilesystem(p.Part(quantix.LabelEFI).Number)
	if err != nil {
		return nil, fmt.Errorf("verify: open QUANTIX-EFI: %w", err)
	}
	if esp.Type() != filesystem.TypeFat32 {
		return nil, fmt.Errorf("verify: QUANTIX-EFI is %v, want FAT32", esp.Type())
	}
	files, err := job.espFiles()
	if err != nil {
		return nil, err
	}
	sums := map[string]*string{quantix.ESPSlotFile(quantix.SlotA, quantix.SlotKernel): &v.KernelSHA256,
		quantix.ESPSlotFile(quantix.SlotA, quantix.SlotInitrd): &v.InitrdSHA256, ESPEFI: &v.EFISHA256}
	for _, c := range files[1:] { // the marker is checked below
		b, err := readFS(esp, "/"+c.name)
		if err != nil {
			return nil, fmt.Errorf("verify: QUANTIX-EFI: %w", err)
		}
		if sum(b) != sum(c.data) {
			return nil, fmt.Errorf("verify: QUANTIX-EFI:/%s has sha256 %s, the source %s", c.name, sum(b), sum(c.data))
		}
		if p := sums[c.name]; p != nil {
			*p = sum(b)
		}
	}
	_, merr := readFS(esp, "/"+ESPIncomplete)
	_, ierr := readFS(esp, "/"+ESPInstalled)
	switch {
	case marker && (merr != nil || ierr == nil):
		return nil, fmt.Errorf("verify: want %s and no %s on QUANTIX-EFI (%v)", ESPIncomplete, ESPInstalled, merr)
	case !marker && (merr == nil || ierr != nil):
		return nil, fmt.Errorf("verify: want %s and no %s on QUANTIX-EFI (%v)", ESPInstalled, ESPIncomplete, ierr)
	}
	ok("QUANTIX-EFI: slot a kernel sha256 %s, initramfs sha256 %s, manifest, BOOTX64.EFI, grub.cfg, both slot environment copies", v.KernelSHA256[:16], v.InitrdSHA256[:16])

	cfg, err := d.GetFilesystem(p.Part(quantix.LabelConfig).Number)
	if err != nil {
		return nil, fmt.Errorf("verify: open QUANTIX-CFG: %w", err)
	}
	for _, name := range job.Config.Names() {
		want := job.Config[name]
		b, err := readFS(cfg, name)
		if err != nil {
			return nil, fmt.Errorf("verify: QUANTIX-CFG: %w", err)
		}
		if !bytes.Equal(b, want.Data) {
			return nil, fmt.Errorf("verify: QUANTIX-CFG:/%s differs from what was written", name)
		}
		st, err := statFS(cfg, name)
		if err != nil {
			return nil, fmt.Errorf("verify: QUANTIX-CFG: %w", err)
		}
		if st.Mode().Perm() != want.Mode {
			return nil, fmt.Errorf("verify: QUANTIX-CFG:/%s has mode %v, want %v", name, st.Mode().Perm(), want.Mode)
		}
	}
	ok("QUANTIX-CFG: %s", strings.Join(job.Config.Names(), ", "))
	return v, nil
}

// readFS reads a whole file from a go-diskfs filesystem. It reads with one buffer
// of the file's size: go-diskfs v1.9.4's FAT File.Read returns wrong bytes when a
// file is read in several small pieces (io.ReadAll does that).
func readFS(fsys filesystem.FileSystem, name string) ([]byte, error) {
	st, err := statFS(fsys, name)
	if err != nil {
		return nil, err
	}
	fl, err := fsys.OpenFile(name, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	defer fl.Close()
	return medium.ReadSized(fl, st.Size(), name)
}

func statFS(fsys filesystem.FileSystem, name string) (os.FileInfo, error) {
	name = strings.TrimPrefix(name, "/")
	if s, ok := fsys.(interface {
		Stat(string) (os.FileInfo, error)
	}); ok {
		return s.Stat(name)
	}
	dir, base := "", name
	if i := strings.LastIndex(name, "/"); i >= 0 {
		dir, base = name[:i], name[i+1:]
	}
	if dir == "" {
		dir = "."
	}
	ents, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read folder %s: %w", dir, err)
	}
	for _, e := range ents {
		if e.Name() == base {
			return e.Info()
		}
	}
	return nil, fmt.Errorf("stat %s: %w", name, os.ErrNotExist)
}
