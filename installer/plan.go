package installer

import (
	"fmt"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"

	"github.com/quantix/quantix"
)

// Partition sizes of the installed disk (docs/design.md §2).
const (
	MiB         = int64(1) << 20
	Align       = MiB // every partition starts on a MiB boundary
	ESPSize     = 512 * MiB
	BIOSSize    = 1 * MiB
	ConfigSize  = 256 * MiB
	MinDataSize = 1 << 30
)

// GPT partition types.
const (
	TypeESP      = gpt.EFISystemPartition                           // C12A7328-F81F-11D2-BA4B-00A0C93EC93B
	TypeBIOSBoot = gpt.Type("21686148-6449-6E6F-744E-656564454649") // GRUB's BIOS boot partition
	TypeLinux    = gpt.LinuxFilesystem                              // 0FC63DAF-8483-4772-8E79-3D69D8477DE4
)

// Filesystem kinds in a plan.
const (
	FSFat32 = "vfat"
	FSExt4  = "ext4"
	FSNone  = ""
)

// BIOSBootName is the GPT name of the BIOS boot partition (it has no filesystem).
const BIOSBootName = "QUANTIX-BIOS"

// PlannedPart is one partition of the plan.
type PlannedPart struct {
	Number int
	Name   string // GPT partition name; also the filesystem label
	Type   gpt.Type
	FS     string
	Start  int64 // bytes
	Size   int64 // bytes
	GUID   string
}

// End is the first byte after the partition.
func (p PlannedPart) End() int64 { return p.Start + p.Size }

// Plan is the layout the installer writes.
type Plan struct {
	DiskSize   int64
	SectorSize int64
	DiskGUID   string
	Parts      []PlannedPart
}

// NewPlan lays out a disk of size bytes with 512-byte sectors: QUANTIX-EFI (FAT32
// ESP, 512 MiB), the BIOS boot partition (1 MiB, GRUB core.img), QUANTIX-CFG (ext4,
// 256 MiB) and QUANTIX-DATA (ext4, the rest), each MiB-aligned, leaving the space
// the GPT needs at both ends. GUIDs are fresh random ones.
func NewPlan(size int64) (Plan, error) {
	p := Plan{DiskSize: size, SectorSize: 512, DiskGUID: uuid.NewString()}
	if size < MinDiskSize {
		return p, fmt.Errorf("plan: disk of %s is below the minimum %s", HumanSize(size), HumanSize(MinDiskSize))
	}
	// The backup GPT takes the last 33 sectors; keep the data end MiB-aligned below it.
	lastUsable := size - 33*512
	dataEnd := lastUsable / Align * Align
	at := Align
	add := func(name string, typ gpt.Type, fs string, sz int64) {
		p.Parts = append(p.Parts, PlannedPart{Number: len(p.Parts) + 1, Name: name, Type: typ, FS: fs, Start: at, Size: sz, GUID: uuid.NewString()})
		at += sz
	}
	add(quantix.LabelEFI, TypeESP, FSFat32, ESPSize)
	add(BIOSBootName, TypeBIOSBoot, FSNone, BIOSSize)
	add(quantix.LabelConfig, TypeLinux, FSExt4, ConfigSize)
	if dataEnd-at < MinDataSize {
		return p, fmt.Errorf("plan: only %s left for %s; need %s", HumanSize(dataEnd-at), quantix.LabelData, HumanSize(MinDataSize))
	}
	add(quantix.LabelData, TypeLinux, FSExt4, dataEnd-at)
	return p, nil
}

// Part returns the planned partition named name.
func (p Plan) Part(name string) PlannedPart {
	for _, q := range p.Parts {
		if q.Name == name {
			return q
		}
	}
	panic("plan has no partition " + name)
}

// Table is the GPT of the plan, as go-diskfs writes it.
func (p Plan) Table() *gpt.Table {
	t := &gpt.Table{LogicalSectorSize: int(p.SectorSize), PhysicalSectorSize: int(p.SectorSize), ProtectiveMBR: true, GUID: p.DiskGUID}
	for _, q := range p.Parts {
		t.Partitions = append(t.Partitions, &gpt.Partition{
			Index: q.Number,
			Start: uint64(q.Start / p.SectorSize),
			End:   uint64(q.End()/p.SectorSize) - 1,
			Size:  uint64(q.Size),
			Type:  q.Type,
			Name:  q.Name,
			GUID:  q.GUID,
		})
	}
	return t
}

// String shows the plan as a table, for the console and the log.
func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "GPT disk %s (%s)\n", p.DiskGUID, HumanSize(p.DiskSize))
	for _, q := range p.Parts {
		fs := q.FS
		if fs == "" {
			fs = "GRUB core.img"
		}
		fmt.Fprintf(&b, "  %d  %-13s %-14s %10s  at %s\n", q.Number, q.Name, fs, HumanSize(q.Size), HumanSize(q.Start))
	}
	return b.String()
}
