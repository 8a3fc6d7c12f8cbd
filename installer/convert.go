package installer

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
)

// ErrAlreadySlotted is returned by ConvertSingleSlot for a disk that has A/B slots.
var ErrAlreadySlotted = errors.New("the disk already has A/B boot slots")

// Conversion is what ConvertSingleSlot found and did.
type Conversion struct {
	Title, Cmdline string
	Slot           quantix.SlotManifestInfo
	Steps          []string
}

// legacyEntry matches the single-slot grub.cfg's menu entry (GrubConfig before A/B).
var legacyEntry = regexp.MustCompile(`(?m)^menuentry '([^']*)' --id quantix \{\n  linux /` +
	regexp.QuoteMeta(ESPLegacyKernel) + ` ([^\n]*)\n  initrd /` + regexp.QuoteMeta(ESPLegacyInitrd) + `\n\}`)

// ConvertSingleSlot converts a disk installed before A/B slots, in place: the
// kernel and initramfs under boot/ become slot a (with a manifest naming image and
// version, the running release), the slot environment is written with a good,
// grub.cfg chooses the slot, and the bootloaders (src's BOOTX64.EFI, core.img and
// boot.img, which carry the loadenv module) replace the old ones. QUANTIX-CFG and
// QUANTIX-DATA are not opened.
//
// The order keeps the disk bootable after a power cut at any step but one: slot a
// is written and read back while the old grub.cfg still boots boot/; the new
// grub.cfg boots slot a with the old bootloaders too (they lack load_env, so it
// takes the no-environment path, slot a); only the write of core.img into the BIOS
// boot partition (about 30 KiB) cannot be made atomic, and a cut there leaves BIOS
// boot broken until the conversion is run again (UEFI still boots). The old files
// are truncated and removed last; go-diskfs leaves one cluster of each allocated.
func ConvertSingleSlot(target string, src *Source, image, version string, log *slog.Logger) (*Conversion, error) {
	c := &Conversion{}
	step := func(name string) {
		c.Steps = append(c.Steps, name)
		log.Info("convert step", "target", target, "step", name)
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("convert %s to A/B slots: %w", target, fmt.Errorf(format, a...))
	}
	d, err := diskfs.Open(target, diskfs.WithOpenMode(diskfs.ReadWrite))
	if err != nil {
		return nil, fail("open: %w", err)
	}
	defer d.Close()
	tab, err := d.GetPartitionTable()
	if err != nil {
		return nil, fail("read partition table: %w", err)
	}
	g, ok := tab.(*gpt.Table)
	if !ok {
		return nil, fail("partition table is %s, want the gpt qx-install writes", tab.Type())
	}
	parts := map[string]int{}
	var bios *gpt.Partition
	for i, p := range g.Partitions {
		if p.Type == gpt.Unused {
			continue
		}
		parts[p.Name] = i + 1
		if p.Name == BIOSBootName {
			bios = p
		}
	}
	for _, name := range []string{quantix.LabelEFI, BIOSBootName, quantix.LabelConfig, quantix.LabelData} {
		if parts[name] == 0 {
			return nil, fail("no %s partition: not a disk qx-install wrote", name)
		}
	}
	esp, err := d.GetFilesystem(parts[quantix.LabelEFI])
	if err != nil {
		return nil, fail("open %s: %w", quantix.LabelEFI, err)
	}
	if esp.Type() != filesystem.TypeFat32 {
		return nil, fail("%s is %v, want FAT32", quantix.LabelEFI, esp.Type())
	}

	step("read the single-slot boot files")
	if _, err := statFS(esp, "/"+quantix.ESPEnv); err == nil {
		return nil, fmt.Errorf("convert %s: %w (%s exists)", target, ErrAlreadySlotted, quantix.ESPEnv)
	}
	if _, err := readFS(esp, "/"+ESPInstalled); err != nil {
		return nil, fail("no %s on %s: the install never finished; install again instead", ESPInstalled, quantix.LabelEFI)
	}
	cfg, err := readFS(esp, "/"+ESPGrubCfg)
	if err != nil {
		return nil, fail("%s: %w", ESPGrubCfg, err)
	}
	m := legacyEntry.FindStringSubmatch(string(cfg))
	if m == nil {
		return nil, fail("%s has no single-slot entry (menuentry '...' --id quantix booting /%s): not a layout this converts", ESPGrubCfg, ESPLegacyKernel)
	}
	c.Title, c.Cmdline = m[1], strings.TrimSpace(m[2])
	kernel, err := readFS(esp, "/"+ESPLegacyKernel)
	if err != nil {
		return nil, fail("%s: %w", ESPLegacyKernel, err)
	}
	initrd, err := readFS(esp, "/"+ESPLegacyInitrd)
	if err != nil {
		return nil, fail("%s: %w", ESPLegacyInitrd, err)
	}
	c.Slot = quantix.SlotManifestInfo{Image: image, Version: version, KernelSHA256: sum(kernel), InitrdSHA256: sum(initrd)}

	step("write slot a and the slot environment")
	slot, err := slotFiles(quantix.SlotA, image, version, kernel, initrd)
	if err != nil {
		return nil, fail("%w", err)
	}
	env, err := bootenv.Initial().Encode()
	if err != nil {
		return nil, fail("%w", err)
	}
	slot = append(slot, espFile{quantix.ESPEnv, env}, espFile{quantix.ESPEnvBackup, env})
	if err := writeESPFiles(esp, slot); err != nil {
		return nil, fail("%w", err)
	}
	if err := checkESPFiles(esp, slot); err != nil {
		return nil, fail("read back slot a: %w", err)
	}

	step("write grub.cfg that chooses the slot")
	boot := []espFile{{ESPGrubCfg, []byte(GrubConfig(c.Title, c.Cmdline))}, {ESPEFI, src.EFI}}
	if err := writeESPFiles(esp, boot); err != nil {
		return nil, fail("%w", err)
	}

	step("write the BIOS boot code and core.img")
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		return nil, fail("%w", err)
	}
	defer f.Close()
	sectorSize := int64(d.LogicalBlocksize)
	core, err := PatchCore(src.Core, bios.Start)
	if err != nil {
		return nil, fail("%w", err)
	}
	if int64(len(core)) > int64(bios.Size) {
		return nil, fail("core.img is %d bytes; the BIOS boot partition holds %d", len(core), bios.Size)
	}
	if _, err := f.WriteAt(core, int64(bios.Start)*sectorSize); err != nil {
		return nil, fail("write core.img: %w", err)
	}
	s0 := make([]byte, 512)
	if _, err := f.ReadAt(s0, 0); err != nil {
		return nil, fail("read MBR: %w", err)
	}
	mbr, err := PatchMBR(src.BootImg, s0, bios.Start)
	if err != nil {
		return nil, fail("%w", err)
	}
	if _, err := f.WriteAt(mbr, 0); err != nil {
		return nil, fail("write MBR: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fail("fsync: %w", err)
	}

	step("verify")
	if err := checkESPFiles(esp, append(slot, boot...)); err != nil {
		return nil, fail("verify: %w", err)
	}
	got := make([]byte, len(core))
	if _, err := f.ReadAt(got, int64(bios.Start)*sectorSize); err != nil || !bytes.Equal(got, core) {
		return nil, fail("verify: core.img in the BIOS boot partition differs from what was written (%v)", err)
	}

	step("remove the single-slot kernel and initramfs")
	for _, name := range []string{ESPLegacyKernel, ESPLegacyInitrd} {
		// Truncating first frees all but one of the file's clusters, which
		// go-diskfs's Remove would leave allocated.
		fl, err := esp.OpenFile("/"+name, os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return nil, fail("truncate %s: %w", name, err)
		}
		fl.Close()
		if err := esp.Remove("/" + name); err != nil {
			return nil, fail("remove %s: %w", name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return nil, fail("fsync: %w", err)
	}
	return c, nil
}

// writeESPFiles writes files on a go-diskfs FAT filesystem, each replacing what was
// there.
func writeESPFiles(esp filesystem.FileSystem, files []espFile) error {
	for _, fl := range files {
		if err := writeFAT(esp, fl.name, fl.data); err != nil {
			return err
		}
	}
	return nil
}

// checkESPFiles reads files back and compares them.
func checkESPFiles(esp filesystem.FileSystem, files []espFile) error {
	for _, fl := range files {
		b, err := readFS(esp, "/"+fl.name)
		if err != nil {
			return fmt.Errorf("%s: %w", quantix.LabelEFI, err)
		}
		if !bytes.Equal(b, fl.data) {
			return fmt.Errorf("%s:/%s has sha256 %s, want %s", quantix.LabelEFI, fl.name, sum(b), sum(fl.data))
		}
	}
	return nil
}
