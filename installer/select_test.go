package installer

import (
	"errors"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

func mkDisk(name string, mod func(*Disk)) *Disk {
	d := &Disk{Name: name, Path: "/dev/" + name, Size: 100 << 30, SectorSize: 512, Empty: true, Serial: "SN-" + name, WWN: "naa.5000c500" + name}
	if mod != nil {
		mod(d)
	}
	return d
}

func withData(d *Disk) {
	d.Empty = false
	d.Table = "gpt"
	d.Parts = []Partition{{Name: d.Name + "1", Number: 1, FS: &FSInfo{Type: "ext4", Label: "srv"}}}
}

func TestSelectTarget(t *testing.T) {
	iso := func(d *Disk) { d.Empty = false; d.Whole = &FSInfo{Type: "iso9660", Label: "QUANTIX-OS"} }
	stick := func(d *Disk) {
		d.Empty, d.Removable = false, true
		d.Whole = &FSInfo{Type: "vfat", Label: quantix.LabelInstall}
	}
	stale := func(d *Disk) {
		d.Empty, d.Table = false, "gpt"
		d.Parts = []Partition{
			{Name: d.Name + "1", Number: 1, PartLabel: quantix.LabelEFI, FS: &FSInfo{Type: "vfat", Label: quantix.LabelEFI}},
			{Name: d.Name + "3", Number: 3, PartLabel: quantix.LabelConfig, FS: &FSInfo{Type: "ext4", Label: quantix.LabelConfig}},
		}
	}
	p := Protect{VolumeLabel: "QUANTIX-OS"}
	for _, c := range []struct {
		name    string
		disks   []*Disk
		target  Target
		wipe    bool
		protect Protect
		want    string // disk name, or "" for a refusal
		err     string
		warn    string
	}{
		{name: "by path", disks: []*Disk{mkDisk("sda", nil), mkDisk("sdb", nil)}, target: Target{Path: "/dev/sdb"}, want: "sdb"},
		{name: "by symlink base name", disks: []*Disk{mkDisk("nvme0n1", nil)}, target: Target{Path: "/dev/nvme0n1"}, want: "nvme0n1"},
		{name: "by serial", disks: []*Disk{mkDisk("sda", nil), mkDisk("sdb", nil)}, target: Target{Serial: "SN-sda"}, want: "sda"},
		{name: "by wwn any form", disks: []*Disk{mkDisk("sda", nil), mkDisk("sdb", nil)}, target: Target{WWN: "0x5000C500SDB"}, want: "sdb"},
		{name: "unknown path", disks: []*Disk{mkDisk("sda", nil)}, target: Target{Path: "/dev/sdz"}, err: "no disk has path /dev/sdz"},
		{name: "unknown serial", disks: []*Disk{mkDisk("sda", nil)}, target: Target{Serial: "nope"}, err: "no disk has serial nope"},
		{name: "partition named", disks: []*Disk{mkDisk("sda", withData)}, target: Target{Path: "/dev/sda1"}, wipe: true, err: "is a partition; name the whole disk /dev/sda"},
		{name: "duplicate serial", disks: []*Disk{mkDisk("sda", func(d *Disk) { d.Serial = "X" }), mkDisk("sdb", func(d *Disk) { d.Serial = "X" })}, target: Target{Serial: "X"}, err: "2 disks have serial X"},
		{name: "boot medium named", disks: []*Disk{mkDisk("sr0", iso)}, target: Target{Path: "/dev/sr0"}, wipe: true, err: "never installing over the running boot medium (QUANTIX-OS)"},
		{name: "boot medium by device", disks: []*Disk{mkDisk("sdc", nil)}, target: Target{Path: "/dev/sdc"}, protect: Protect{Disks: map[string]bool{"sdc": true}}, err: "never installing over the running boot medium"},
		{name: "answer stick named", disks: []*Disk{mkDisk("sdb", stick)}, target: Target{Path: "/dev/sdb"}, wipe: true, err: "answer-file filesystem (QUANTIX-INSTALL)"},
		{name: "removable named", disks: []*Disk{mkDisk("sdb", func(d *Disk) { d.Removable = true })}, target: Target{Serial: "SN-sdb"}, want: "sdb"},
		{name: "removable not chosen as only empty", disks: []*Disk{mkDisk("sdb", func(d *Disk) { d.Removable = true })}, target: Target{OnlyEmpty: true}, err: "removable disk"},
		{name: "data without wipe", disks: []*Disk{mkDisk("sda", withData)}, target: Target{Path: "/dev/sda"}, err: `not empty (gpt, 1 partition; sda1 ext4 "srv"); set wipe = true`},
		{name: "data with wipe", disks: []*Disk{mkDisk("sda", withData)}, target: Target{Path: "/dev/sda"}, wipe: true, want: "sda"},
		{name: "unknown bytes need wipe", disks: []*Disk{mkDisk("sda", func(d *Disk) { d.Empty = false })}, target: Target{Path: "/dev/sda"}, err: "not empty (unknown data)"},
		{name: "read-only", disks: []*Disk{mkDisk("sda", func(d *Disk) { d.ReadOnly = true })}, target: Target{Path: "/dev/sda"}, err: "read-only"},
		{name: "too small", disks: []*Disk{mkDisk("sda", func(d *Disk) { d.Size = 1 << 30 })}, target: Target{Path: "/dev/sda"}, err: "at least 2.0 GiB"},
		{name: "4Kn", disks: []*Disk{mkDisk("sda", func(d *Disk) { d.SectorSize = 4096 })}, target: Target{Path: "/dev/sda"}, err: "logical sector size is 4096"},
		{name: "mounted elsewhere", disks: []*Disk{mkDisk("sda", func(d *Disk) { d.Mounts = []string{"/mnt"} })}, target: Target{Path: "/dev/sda"}, wipe: true, err: "mounted on /mnt"},
		{name: "mounted by init is fine", disks: []*Disk{mkDisk("sda", func(d *Disk) { stale(d); d.Mounts = []string{quantix.ConfigDir} })}, target: Target{Path: "/dev/sda"}, wipe: true, want: "sda"},
		{name: "only empty", disks: []*Disk{mkDisk("sr0", iso), mkDisk("sda", withData), mkDisk("sdb", nil), mkDisk("sdc", stick)}, target: Target{OnlyEmpty: true}, want: "sdb"},
		{name: "only empty, none", disks: []*Disk{mkDisk("sda", withData)}, target: Target{OnlyEmpty: true}, err: "no disk is empty"},
		{name: "only empty, several", disks: []*Disk{mkDisk("sda", nil), mkDisk("sdb", nil)}, target: Target{OnlyEmpty: true}, err: "2 disks are empty (/dev/sda, /dev/sdb)"},
		{name: "only empty ignores wipe", disks: []*Disk{mkDisk("sda", withData)}, target: Target{OnlyEmpty: true}, wipe: true, err: "no disk is empty"},
		{name: "stale labels reported", disks: []*Disk{mkDisk("vda", stale), mkDisk("vdb", nil)}, target: Target{Path: "/dev/vdb"}, want: "vdb", warn: "/dev/vda carries QUANTIX-CFG, QUANTIX-EFI from an earlier install"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr := c.protect
			if pr.VolumeLabel == "" {
				pr.VolumeLabel = p.VolumeLabel
			}
			d, warns, err := SelectTarget(c.disks, c.target, c.wipe, pr)
			if c.err != "" {
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("SelectTarget = %v, %v; want ErrRefused containing %q", d, err, c.err)
				}
				return
			}
			if err != nil || d.Name != c.want {
				t.Fatalf("SelectTarget = %v, %v; want %s", d, err, c.want)
			}
			if c.warn != "" && (len(warns) != 1 || !strings.Contains(warns[0], c.warn)) {
				t.Errorf("warnings %q, want one containing %q", warns, c.warn)
			}
			if c.warn == "" && len(warns) != 0 {
				t.Errorf("unexpected warnings %q", warns)
			}
		})
	}
}
