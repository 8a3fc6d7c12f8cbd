// Package blockdev finds filesystems on the machine's block devices by label, as
// init (mounting QUANTIX-CFG and QUANTIX-DATA) and the installer (finding its
// answer-file stick, the boot medium and what a disk holds) both need: it reads
// ext4, FAT and ISO9660 labels and GPT disk GUIDs straight from the devices, with
// no blkid in the image.
package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Filesystem is a block device holding a labelled filesystem.
type Filesystem struct {
	Device string // /dev/sdb1
	Disk   string // the whole disk it lives on: sdb
	Type   string // ext4, vfat, iso9660
	Label  string
	// Removable: the disk is a removable medium (a CD drive, most USB sticks:
	// sysfs removable=1) or hangs off a USB bus (USB disks that say removable=0).
	Removable bool
}

// ProbeLabel reads the filesystem type and label from the start of a block device:
// ext2/3/4 (superblock at 1024), FAT12/16/32 (boot sector) and ISO9660 (primary
// volume descriptor at 32768). It returns ok=false for anything else.
func ProbeLabel(r io.ReaderAt) (fsType, label string, ok bool) {
	buf := make([]byte, 34*1024)
	n, _ := r.ReadAt(buf, 0)
	buf = buf[:n]
	// ISO9660 first: a hybrid ISO also carries an MBR signature.
	if len(buf) >= 32768+72 && string(buf[32769:32774]) == "CD001" && buf[32768] == 1 {
		return "iso9660", strings.TrimRight(string(buf[32808:32840]), " \x00"), true
	}
	if len(buf) >= 2048 && binary.LittleEndian.Uint16(buf[1024+0x38:]) == 0xEF53 {
		return "ext4", cString(buf[1024+0x78 : 1024+0x88]), true
	}
	if len(buf) >= 512 && buf[510] == 0x55 && buf[511] == 0xAA {
		switch {
		case string(buf[0x52:0x57]) == "FAT32":
			return "vfat", fatLabel(buf[0x47:0x52]), true
		case string(buf[0x36:0x39]) == "FAT":
			return "vfat", fatLabel(buf[0x2B:0x36]), true
		}
	}
	return "", "", false
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func fatLabel(b []byte) string {
	l := strings.TrimRight(string(b), " \x00")
	if l == "NO NAME" {
		return ""
	}
	return l
}

// ScanFilesystems lists the labelled filesystems on the block devices under sysBlock
// (/sys/class/block), opening the device nodes under devDir (/dev).
func ScanFilesystems(sysBlock, devDir string) ([]Filesystem, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("scan block devices: %w", err)
	}
	var out []Filesystem
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "zram") {
			continue
		}
		if size, err := os.ReadFile(filepath.Join(sysBlock, name, "size")); err == nil && strings.TrimSpace(string(size)) == "0" {
			continue // empty CD drive, unused device
		}
		disk := name
		if _, err := os.Stat(filepath.Join(sysBlock, name, "partition")); err == nil {
			if real, err := filepath.EvalSymlinks(filepath.Join(sysBlock, name)); err == nil {
				disk = filepath.Base(filepath.Dir(real))
			}
		}
		f, err := os.Open(filepath.Join(devDir, name))
		if err != nil {
			continue // no node (yet), or no medium
		}
		typ, label, ok := ProbeLabel(f)
		f.Close()
		if ok {
			out = append(out, Filesystem{Device: filepath.Join(devDir, name), Disk: disk, Type: typ, Label: label,
				Removable: removable(sysBlock, disk)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out, nil
}

// removable reports whether disk (a whole disk under sysBlock) is removable or
// on USB: its removable flag, or "/usb" in the device path its sysfs link names.
func removable(sysBlock, disk string) bool {
	if b, err := os.ReadFile(filepath.Join(sysBlock, disk, "removable")); err == nil && strings.TrimSpace(string(b)) == "1" {
		return true
	}
	real, err := filepath.EvalSymlinks(filepath.Join(sysBlock, disk))
	return err == nil && strings.Contains(real, "/usb")
}

// ErrNoFilesystem is returned by FindByLabel when no filesystem has the label.
var ErrNoFilesystem = errors.New("no filesystem with that label")

// FindByLabel picks the filesystem labelled label. When several have it, the one on
// a boot disk wins (a disk holding the boot medium's label or QUANTIX-EFI), so an
// installed disk's QUANTIX-CFG is not shadowed by a stray USB stick; otherwise the
// first by device name. collided reports whether there was a choice to make.
func FindByLabel(fss []Filesystem, label string, bootDisks map[string]bool) (fs Filesystem, collided bool, err error) {
	var cands []Filesystem
	for _, f := range fss {
		if f.Label == label {
			cands = append(cands, f)
		}
	}
	switch len(cands) {
	case 0:
		return Filesystem{}, false, fmt.Errorf("%s: %w", label, ErrNoFilesystem)
	case 1:
		return cands[0], false, nil
	}
	for _, c := range cands {
		if bootDisks[c.Disk] {
			return c, true, nil
		}
	}
	return cands[0], true, nil
}

// BootDisks returns the disks that hold the boot medium: a filesystem labelled
// volumeLabel (the live ISO, as CD or written to a stick), else one labelled
// efiLabel (an installed disk).
func BootDisks(fss []Filesystem, volumeLabel, efiLabel string) map[string]bool {
	disks := map[string]bool{}
	for _, f := range fss {
		if volumeLabel != "" && f.Label == volumeLabel {
			disks[f.Disk] = true
		}
	}
	if len(disks) == 0 {
		for _, f := range fss {
			if f.Label == efiLabel {
				disks[f.Disk] = true
			}
		}
	}
	return disks
}

// GPTDiskGUID reads the disk GUID from the primary GPT header of r (LBA 1, 512-byte
// sectors), formatted as blkid's PTUUID: lower case, the first three fields
// little-endian. ok is false when r holds no GPT.
func GPTDiskGUID(r io.ReaderAt) (guid string, ok bool) {
	var h [92]byte
	if _, err := r.ReadAt(h[:], 512); err != nil {
		return "", false
	}
	if string(h[:8]) != "EFI PART" {
		return "", false
	}
	g := h[56:72]
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]), binary.LittleEndian.Uint16(g[6:8]),
		g[8:10], g[10:16]), true
}

// DiskByGUID finds the whole disk under sysBlock whose GPT disk GUID is guid
// (compared in lower case) and returns its name (e.g. "vda").
func DiskByGUID(sysBlock, devDir, guid string) (string, bool) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", false
	}
	guid = strings.ToLower(guid)
	for _, e := range entries {
		name := e.Name()
		if _, err := os.Stat(filepath.Join(sysBlock, name, "partition")); err == nil {
			continue
		}
		f, err := os.Open(filepath.Join(devDir, name))
		if err != nil {
			continue
		}
		g, ok := GPTDiskGUID(f)
		f.Close()
		if ok && g == guid {
			return name, true
		}
	}
	return "", false
}

// OnDisk keeps the filesystems that live on disk.
func OnDisk(fss []Filesystem, disk string) []Filesystem {
	var out []Filesystem
	for _, f := range fss {
		if f.Disk == disk {
			out = append(out, f)
		}
	}
	return out
}
