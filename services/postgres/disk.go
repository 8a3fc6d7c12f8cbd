package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/quantix/quantix"
)

// probeSpan is how much of the start and of the end of a device must be zero for it
// to count as blank. Partition tables, filesystem superblocks, RAID and LVM labels
// and their backups all live there.
const probeSpan = 1 << 20

// signature is a known on-disk structure, used to say what a non-blank device holds.
type signature struct {
	off  int64
	what string
	// match reports whether head (the first probeSpan bytes) has the signature.
	match func(head []byte, off int64) bool
}

func magicAt(magic string) func([]byte, int64) bool {
	return func(head []byte, off int64) bool {
		return int(off)+len(magic) <= len(head) && string(head[off:int(off)+len(magic)]) == magic
	}
}

var signatures = []signature{
	{0, "a LUKS encrypted volume", magicAt("LUKS\xba\xbe")},
	{0, "an XFS filesystem", magicAt("XFSB")},
	{0, "a squashfs filesystem", magicAt("hsqs")},
	{512, "a GPT partition table", magicAt("EFI PART")},
	{4096, "a GPT partition table (4K sectors)", magicAt("EFI PART")},
	{512, "an LVM physical volume", magicAt("LABELONE")},
	{1080, "an ext2/3/4 filesystem", magicAt("\x53\xef")},
	{4096, "a Linux RAID member", magicAt("\xfc\x4e\x2b\xa9")},
	{4086, "a swap area", magicAt("SWAPSPACE2")},
	{32769, "an ISO 9660 filesystem", magicAt("CD001")},
	{65600, "a btrfs filesystem", magicAt("_BHRfS_M")},
	{510, "an MBR partition table or boot sector", magicAt("\x55\xaa")},
}

// DescribeContent says what a device of the given size holds, reading its first and
// last MiB: "" when both are entirely zero (blank), else what was recognised (a
// partition table, a filesystem) or where the first non-zero byte is.
func DescribeContent(r io.ReaderAt, size int64) (string, error) {
	if size <= 0 {
		return "", fmt.Errorf("device has no size")
	}
	head := make([]byte, min(size, probeSpan))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read start: %w", err)
	}
	for _, s := range signatures {
		if s.match(head, s.off) {
			if s.off == 1080 {
				if l := ext4Label(head); l != "" {
					return fmt.Sprintf("%s labelled %q", s.what, l), nil
				}
			}
			return s.what, nil
		}
	}
	if i := firstNonZero(head); i >= 0 {
		return fmt.Sprintf("data at byte %d", i), nil
	}
	tailOff := max(size-probeSpan, 0)
	tail := make([]byte, size-tailOff)
	if _, err := r.ReadAt(tail, tailOff); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read end: %w", err)
	}
	if string(tail[len(tail)-min(len(tail), 512):][:min(len(tail), 8)]) == "EFI PART" {
		return "a backup GPT partition table at the end", nil
	}
	if i := firstNonZero(tail); i >= 0 {
		return fmt.Sprintf("data at byte %d (near the end)", tailOff+int64(i)), nil
	}
	return "", nil
}

func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// ext4Label returns the volume name of an ext2/3/4 superblock found in head, or "".
func ext4Label(head []byte) string {
	const sb = 1024
	if len(head) < sb+136 || binary.LittleEndian.Uint16(head[sb+56:]) != 0xef53 {
		return ""
	}
	name := head[sb+120 : sb+136]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return string(name)
}

// ReadLabel returns the ext2/3/4 filesystem label of the device or file at path,
// "" when it holds no such filesystem.
func ReadLabel(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 2048)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return ext4Label(head[:n]), nil
}

// skipDevice says which kernel block devices never hold QUANTIX-DATA on an appliance
// (loop devices are skipped too, so a build host's test images are never picked up).
func skipDevice(name string) bool {
	for _, p := range []string{"ram", "zram", "loop", "fd", "sr", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// ObserveDisks gathers DiskFacts: every block device listed in SysBlock (opened under
// DevDir) whose ext4 label is QUANTIX-DATA, and the content of the configured device.
func ObserveDisks(cfg DiskConfig, log *slog.Logger) (DiskFacts, error) {
	f := DiskFacts{Configured: cfg.Device, FormatAllowed: cfg.FormatBlank}
	ents, err := os.ReadDir(cfg.SysBlock)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return f, fmt.Errorf("list block devices %s: %w", cfg.SysBlock, err)
	}
	for _, e := range ents {
		if skipDevice(e.Name()) {
			continue
		}
		dev := filepath.Join(cfg.DevDir, e.Name())
		label, err := ReadLabel(dev)
		if err != nil {
			// Empty card readers and detached loop devices cannot be read; they hold
			// nothing of ours.
			log.Debug("skip unreadable block device", "dev", dev, "err", err)
			continue
		}
		if label == quantix.LabelData {
			f.Labelled = append(f.Labelled, dev)
		}
	}
	sort.Strings(f.Labelled)
	if cfg.Device == "" {
		return f, nil
	}
	content, err := deviceContent(cfg.Device)
	if errors.Is(err, fs.ErrNotExist) {
		f.ConfiguredMissing = true
		return f, nil
	}
	if err != nil {
		return f, err
	}
	f.ConfiguredContent = content
	// The configured device formatted on an earlier boot is QUANTIX-DATA now, even
	// where it is not listed as a block device (a partition not yet rescanned).
	if label, err := ReadLabel(cfg.Device); err == nil && label == quantix.LabelData && !contains(f.Labelled, cfg.Device) {
		f.Labelled = append(f.Labelled, cfg.Device)
		sort.Strings(f.Labelled)
	}
	return f, nil
}

func deviceContent(path string) (string, error) {
	d, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer d.Close()
	// Seeking to the end gives the size of block devices and regular files alike.
	size, err := d.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("size of %s: %w", path, err)
	}
	c, err := DescribeContent(d, size)
	if err != nil {
		return "", fmt.Errorf("probe %s: %w", path, err)
	}
	return c, nil
}

// DiskResult says what PrepareDataDisk found or did.
type DiskResult struct {
	Action DiskAction
	// Device is the QUANTIX-DATA device (found or just formatted); "" for DiskNone.
	Device string
}

// PrepareDataDisk finds QUANTIX-DATA, and formats the configured device as ext4
// labelled QUANTIX-DATA when it is blank and format_blank_data allows it. It mounts
// nothing: init mounts QUANTIX-DATA by label, so run this before init's mount step
// (`qx-postgres prepare-disk`). Errors wrap quantix.ErrConfig when an operator must act.
func PrepareDataDisk(ctx context.Context, cfg DiskConfig, log *slog.Logger) (DiskResult, error) {
	facts, err := ObserveDisks(cfg, log)
	if err != nil {
		return DiskResult{}, err
	}
	action, dev, err := DecideDisk(facts)
	if err != nil {
		return DiskResult{Action: action}, err
	}
	res := DiskResult{Action: action, Device: dev}
	switch action {
	case DiskUse:
		log.Info("found QUANTIX-DATA", "dev", dev)
	case DiskNone:
		log.Info("no QUANTIX-DATA device and none configured")
	case DiskFormat:
		if err := FormatDataDevice(ctx, dev, cfg.Mkfs, log); err != nil {
			return res, err
		}
	}
	return res, nil
}

// FormatDataDevice formats dev (a block device, or a regular file for tests) as ext4
// labelled QUANTIX-DATA. It checks again, just before, that dev is blank, and reads
// the label back afterwards.
func FormatDataDevice(ctx context.Context, dev, mkfs string, log *slog.Logger) error {
	content, err := deviceContent(dev)
	if err != nil {
		return fmt.Errorf("format %s: %w", dev, err)
	}
	if content != "" {
		return configErrorf("format %s: not blank (%s): refusing to format a disk holding foreign data", dev, content)
	}
	if mkfs == "" {
		if mkfs, err = findProgram("mkfs.ext4"); err != nil {
			return fmt.Errorf("format %s: %w", dev, err)
		}
	}
	log.Info("formatting blank device as QUANTIX-DATA", "dev", dev, "mkfs", mkfs)
	// -F: dev may be a regular file (tests) and must not prompt; it was checked blank.
	cmd := exec.CommandContext(ctx, mkfs, "-F", "-q", "-t", "ext4", "-L", quantix.LabelData,
		"-E", "lazy_itable_init=1,lazy_journal_init=1", dev)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("format %s: %s: %w: %s", dev, mkfs, err, strings.TrimSpace(string(out)))
	}
	label, err := ReadLabel(dev)
	if err != nil {
		return fmt.Errorf("format %s: read label back: %w", dev, err)
	}
	if label != quantix.LabelData {
		return fmt.Errorf("format %s: label reads back as %q, want %q", dev, label, quantix.LabelData)
	}
	log.Info("formatted QUANTIX-DATA", "dev", dev)
	return nil
}

// findProgram looks for name in PATH and then in the sbin folders, which a service's
// PATH may lack.
func findProgram(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or the sbin folders (Debian package e2fsprogs)", name)
}
