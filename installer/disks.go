package installer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/blockdev"
)

// Disk is one whole block device as the installer sees it.
type Disk struct {
	Name       string // sda, vda, nvme0n1
	Path       string // /dev/sda (under the scanned dev folder)
	Size       int64  // bytes
	SectorSize int64  // logical sector size in bytes
	Model      string
	Serial     string
	WWN        string
	Removable  bool
	Rotational bool
	ReadOnly   bool
	// Table is "gpt", "mbr" or "" (none found).
	Table string
	// Parts are the partitions the kernel knows (sysfs), with what is on them.
	Parts []Partition
	// Whole is a filesystem on the whole disk (no partition table), if any.
	Whole *FSInfo
	// Empty is true when the first and last MiB are all zeros: no partition
	// table, no filesystem, no signature of any kind.
	Empty bool
	// Mounts are mount points of the disk or its partitions (from /proc/self/mounts).
	Mounts []string
}

// Partition is one partition of a Disk.
type Partition struct {
	Name      string // sda1
	Number    int
	Start     int64 // bytes from the start of the disk
	Size      int64
	PartLabel string // the GPT partition name
	FS        *FSInfo
}

// FSInfo is a recognised filesystem.
type FSInfo struct {
	Type  string // ext4, vfat, iso9660
	Label string
}

// Labels returns every filesystem label and GPT partition name on the disk.
func (d *Disk) Labels() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	if d.Whole != nil {
		add(d.Whole.Label)
	}
	for _, p := range d.Parts {
		if p.FS != nil {
			add(p.FS.Label)
		}
		add(p.PartLabel)
	}
	return out
}

// HasLabel reports whether a filesystem on the disk carries label.
func (d *Disk) HasLabel(label string) bool {
	if d.Whole != nil && d.Whole.Label == label {
		return true
	}
	for _, p := range d.Parts {
		if p.FS != nil && p.FS.Label == label {
			return true
		}
	}
	return false
}

// QuantixLabels returns the QUANTIX-* labels on the disk (filesystems and GPT names).
func (d *Disk) QuantixLabels() []string {
	var out []string
	for _, l := range d.Labels() {
		if strings.HasPrefix(l, "QUANTIX-") {
			out = append(out, l)
		}
	}
	return out
}

// Contents describes what is on the disk in a few words, for lists and refusals.
func (d *Disk) Contents() string {
	if d.Empty {
		return "empty"
	}
	var parts []string
	if d.Whole != nil {
		parts = append(parts, fsString(d.Whole))
	}
	if d.Table != "" {
		s := fmt.Sprintf("%s, %d partition", d.Table, len(d.Parts))
		if len(d.Parts) != 1 {
			s += "s"
		}
		parts = append(parts, s)
	}
	for _, p := range d.Parts {
		s := p.Name
		if p.FS != nil {
			s += " " + fsString(p.FS)
		} else if p.PartLabel != "" {
			s += " " + strconv.Quote(p.PartLabel)
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "unknown data"
	}
	return strings.Join(parts, "; ")
}

func fsString(f *FSInfo) string {
	if f.Label == "" {
		return f.Type
	}
	return fmt.Sprintf("%s %q", f.Type, f.Label)
}

// Describe is one line for a disk: path, size, model, serial, contents.
func (d *Disk) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", d.Path, HumanSize(d.Size))
	if d.Model != "" {
		fmt.Fprintf(&b, " model %q", d.Model)
	}
	if d.Serial != "" {
		fmt.Fprintf(&b, " serial %q", d.Serial)
	}
	if d.WWN != "" {
		fmt.Fprintf(&b, " wwn %s", d.WWN)
	}
	if d.Removable {
		b.WriteString(" removable")
	}
	if d.Rotational {
		b.WriteString(" hdd")
	}
	fmt.Fprintf(&b, ": %s", d.Contents())
	return b.String()
}

// HumanSize formats bytes as GiB/MiB with one decimal.
func HumanSize(n int64) string {
	switch {
	case n >= 1<<40:
		return fmt.Sprintf("%.1f TiB", float64(n)/(1<<40))
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	default:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
}

// Scanner lists disks. The roots are configurable so tests can use a fake sysfs
// tree and image files as device nodes.
type Scanner struct {
	SysBlock string // /sys/class/block
	DevDir   string // /dev
	Mounts   string // /proc/self/mounts
}

// DefaultScanner reads the running system.
func DefaultScanner() Scanner {
	return Scanner{SysBlock: "/sys/class/block", DevDir: "/dev", Mounts: "/proc/self/mounts"}
}

// skipDisk reports devices that are never install targets nor boot media.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "md", "nbd", "fd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Scan lists the whole disks with their properties and contents, sorted by name.
func (s Scanner) Scan() ([]*Disk, error) {
	entries, err := os.ReadDir(s.SysBlock)
	if err != nil {
		return nil, fmt.Errorf("scan disks: %w", err)
	}
	mounts := readMounts(s.Mounts)
	var disks []*Disk
	for _, e := range entries {
		name := e.Name()
		dir := filepath.Join(s.SysBlock, name)
		if fileExists(filepath.Join(dir, "partition")) || skipDisk(name) {
			continue
		}
		sectors := readInt(filepath.Join(dir, "size"))
		if sectors == 0 {
			continue // empty drive or unused device
		}
		d := &Disk{
			Name:       name,
			Path:       filepath.Join(s.DevDir, name),
			Size:       sectors * 512, // sysfs size is always in 512-byte units
			SectorSize: 512,
			Removable:  readInt(filepath.Join(dir, "removable")) == 1,
			ReadOnly:   readInt(filepath.Join(dir, "ro")) == 1,
			Rotational: readInt(filepath.Join(dir, "queue", "rotational")) == 1,
			Model:      readString(filepath.Join(dir, "device", "model")),
			Serial:     firstString(filepath.Join(dir, "serial"), filepath.Join(dir, "device", "serial")),
			WWN:        firstString(filepath.Join(dir, "wwid"), filepath.Join(dir, "device", "wwid")),
		}
		if d.Serial == "" {
			d.Serial = vpdSerial(filepath.Join(dir, "device", "vpd_pg80"))
		}
		if n := readInt(filepath.Join(dir, "queue", "logical_block_size")); n > 0 {
			d.SectorSize = n
		}
		// Partitions: sysfs subfolders holding a "partition" file.
		subs, _ := os.ReadDir(dir)
		for _, sub := range subs {
			pdir := filepath.Join(dir, sub.Name())
			if !fileExists(filepath.Join(pdir, "partition")) {
				continue
			}
			d.Parts = append(d.Parts, Partition{
				Name:   sub.Name(),
				Number: int(readInt(filepath.Join(pdir, "partition"))),
				Start:  readInt(filepath.Join(pdir, "start")) * 512,
				Size:   readInt(filepath.Join(pdir, "size")) * 512,
			})
		}
		sort.Slice(d.Parts, func(i, j int) bool { return d.Parts[i].Number < d.Parts[j].Number })
		for _, m := range mounts {
			if m.dev == d.Path || strings.HasPrefix(m.dev, d.Path) && isPartOf(m.dev, d) {
				d.Mounts = append(d.Mounts, m.dir)
			}
		}
		if err := probeDisk(d); err != nil {
			return nil, err
		}
		disks = append(disks, d)
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].Name < disks[j].Name })
	return disks, nil
}

func isPartOf(dev string, d *Disk) bool {
	for _, p := range d.Parts {
		if filepath.Base(dev) == p.Name {
			return true
		}
	}
	return false
}

// probeDisk reads the disk's ends and partitions: partition table, filesystems,
// GPT names, emptiness. A disk that cannot be read is reported as holding data.
func probeDisk(d *Disk) error {
	f, err := os.Open(d.Path)
	if err != nil {
		// No node, no medium: keep it listed as unreadable (never "empty").
		d.Whole = &FSInfo{Type: "unreadable: " + err.Error()}
		return nil
	}
	defer f.Close()
	const mib = 1 << 20
	head := make([]byte, min(mib, d.Size))
	if _, err := f.ReadAt(head, 0); err != nil && err != io.EOF {
		d.Whole = &FSInfo{Type: "unreadable: " + err.Error()}
		return nil
	}
	tail := make([]byte, min(mib, d.Size))
	if _, err := f.ReadAt(tail, d.Size-int64(len(tail))); err != nil && err != io.EOF {
		d.Whole = &FSInfo{Type: "unreadable: " + err.Error()}
		return nil
	}
	d.Empty = allZero(head) && allZero(tail) && len(d.Parts) == 0
	d.Table = tableType(head, d.SectorSize)
	if t, l, ok := blockdev.ProbeLabel(f); ok {
		d.Whole = &FSInfo{Type: t, Label: l}
	}
	names := map[int]string{}
	if d.Table == "gpt" {
		names = gptNames(f, d.SectorSize)
	}
	for i := range d.Parts {
		p := &d.Parts[i]
		p.PartLabel = names[p.Number]
		if t, l, ok := blockdev.ProbeLabel(io.NewSectionReader(f, p.Start, p.Size)); ok {
			p.FS = &FSInfo{Type: t, Label: l}
		}
	}
	return nil
}

func allZero(b []byte) bool {
	return bytes.Count(b, []byte{0}) == len(b)
}

// tableType recognises a GPT (signature at LBA 1) or an MBR with used entries.
func tableType(head []byte, sector int64) string {
	if int64(len(head)) >= 2*sector && string(head[sector:sector+8]) == "EFI PART" {
		return "gpt"
	}
	if len(head) >= 512 && head[510] == 0x55 && head[511] == 0xAA {
		for i := 0; i < 4; i++ {
			e := head[446+16*i:]
			if e[4] != 0 && e[4] != 0xEE && binary.LittleEndian.Uint32(e[12:]) != 0 {
				return "mbr"
			}
		}
	}
	return ""
}

// gptNames reads the partition names of the primary GPT (best effort, for display
// and label reports).
func gptNames(r io.ReaderAt, sector int64) map[int]string {
	out := map[int]string{}
	h := make([]byte, 512)
	if _, err := r.ReadAt(h, sector); err != nil || string(h[:8]) != "EFI PART" {
		return out
	}
	lba := int64(binary.LittleEndian.Uint64(h[72:]))
	n := int(binary.LittleEndian.Uint32(h[80:]))
	size := int(binary.LittleEndian.Uint32(h[84:]))
	if n <= 0 || n > 1024 || size < 128 || size > 4096 {
		return out
	}
	ents := make([]byte, n*size)
	if _, err := r.ReadAt(ents, lba*sector); err != nil {
		return out
	}
	for i := 0; i < n; i++ {
		e := ents[i*size : i*size+128]
		if allZero(e[:16]) {
			continue
		}
		out[i+1] = utf16Name(e[56:128])
	}
	return out
}

func utf16Name(b []byte) string {
	var u []uint16
	for j := 0; j+1 < len(b); j += 2 {
		c := binary.LittleEndian.Uint16(b[j:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

type mount struct{ dev, dir string }

func readMounts(path string) []mount {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []mount
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "/") {
			out = append(out, mount{dev: f[0], dir: f[1]})
		}
	}
	return out
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func readString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func firstString(paths ...string) string {
	for _, p := range paths {
		if s := readString(p); s != "" {
			return s
		}
	}
	return ""
}

func readInt(p string) int64 {
	n, _ := strconv.ParseInt(readString(p), 10, 64)
	return n
}

// vpdSerial decodes the SCSI unit serial number VPD page (0x80).
func vpdSerial(p string) string {
	b, err := os.ReadFile(p)
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+n > len(b) {
		n = len(b) - 4
	}
	return strings.TrimSpace(string(b[4 : 4+n]))
}

// normWWN makes WWNs comparable: lower case, without "naa."/"eui."/"0x" prefixes.
func normWWN(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, p := range []string{"naa.", "eui.", "wwn-", "0x"} {
		s = strings.TrimPrefix(s, p)
	}
	return s
}

// isQuantixLabel reports the labels a Quantix install writes.
func isQuantixLabel(l string) bool {
	switch l {
	case quantix.LabelEFI, quantix.LabelConfig, quantix.LabelData:
		return true
	}
	return false
}
