package blockdev_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/services/blockdev"
)

func fatImage(t *testing.T, path, label string, typ filesystem.Type, size int64) {
	t.Helper()
	d, err := diskfs.Create(path, size, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.CreateFilesystem(disk.FilesystemSpec{FSType: typ, VolumeLabel: label}); err != nil {
		t.Fatal(err)
	}
}

func isoPVD(label string) []byte {
	b := make([]byte, 40*1024)
	b[32768] = 1
	copy(b[32769:], "CD001")
	copy(b[32808:32840], []byte(label+string(bytes.Repeat([]byte(" "), 32-len(label)))))
	b[510], b[511] = 0x55, 0xaa // a hybrid ISO also has an MBR
	return b
}

// TestProbeLabel reads labels from real filesystem images: ext4 (a config disk),
// FAT12 and FAT32 (go-diskfs), ISO9660.
func TestProbeLabel(t *testing.T) {
	dir := t.TempDir()
	ext4 := filepath.Join(dir, "cfg.img")
	if err := build.ConfigDisk(ext4, quantix.LabelConfig, 0, map[string][]byte{"hostname": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	fat12 := filepath.Join(dir, "fat12.img")
	fatImage(t, fat12, "EFIBOOT", filesystem.TypeFat12, 4<<20)
	fat32 := filepath.Join(dir, "fat32.img")
	fatImage(t, fat32, "QUANTIX-EFI", filesystem.TypeFat32, 40<<20)
	iso := filepath.Join(dir, "iso.img")
	os.WriteFile(iso, isoPVD("QUANTIX-OS"), 0o644)
	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, make([]byte, 64*1024), 0o644)

	tests := []struct {
		file, typ, label string
		ok               bool
	}{
		{ext4, "ext4", quantix.LabelConfig, true},
		{fat12, "vfat", "EFIBOOT", true},
		{fat32, "vfat", "QUANTIX-EFI", true},
		{iso, "iso9660", "QUANTIX-OS", true},
		{empty, "", "", false},
	}
	for _, tt := range tests {
		f, err := os.Open(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		typ, label, ok := blockdev.ProbeLabel(f)
		f.Close()
		if typ != tt.typ || label != tt.label || ok != tt.ok {
			t.Errorf("blockdev.ProbeLabel(%s) = %q, %q, %v; want %q, %q, %v", filepath.Base(tt.file), typ, label, ok, tt.typ, tt.label, tt.ok)
		}
	}
}

// TestScanFilesystems builds a fake /sys/class/block (whole disks and partitions,
// linked as the kernel does) and /dev, then picks filesystems by label, preferring
// the boot disk when labels collide.
func TestScanFilesystems(t *testing.T) {
	root := t.TempDir()
	sysDevices := filepath.Join(root, "devices")
	sysBlock := filepath.Join(root, "class", "block")
	dev := filepath.Join(root, "dev")
	for _, d := range []string{sysBlock, dev} {
		os.MkdirAll(d, 0o755)
	}
	cfg := filepath.Join(root, "cfg.img")
	if err := build.ConfigDisk(cfg, quantix.LabelConfig, 0, map[string][]byte{"hostname": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	cfgData, _ := os.ReadFile(cfg)
	// sr0: the boot CD (removable); vda: a config stick; sdb1: another QUANTIX-CFG
	// on the boot disk sdb (which also holds the ISO image as sdb itself); sdc1: a
	// USB disk that says removable=0; ram0: ignored.
	devs := []struct {
		name, parent string
		data         []byte
	}{
		{"sr0", "", isoPVD("QUANTIX-OS")},
		{"vda", "", cfgData},
		{"sdb", "", isoPVD("QUANTIX-OS")},
		{"sdb1", "sdb", cfgData},
		{"usb1/1-1/sdc", "", nil},
		{"sdc1", "usb1/1-1/sdc", isoPVD("BUNDLES")},
		{"ram0", "", cfgData},
	}
	os.MkdirAll(filepath.Join(sysDevices, "sr0"), 0o755)
	os.WriteFile(filepath.Join(sysDevices, "sr0", "removable"), []byte("1\n"), 0o644)
	for _, d := range devs {
		p := filepath.Join(sysDevices, d.name)
		if d.parent != "" {
			p = filepath.Join(sysDevices, d.parent, d.name)
			os.WriteFile(filepath.Join(p, "partition"), []byte("1\n"), 0o644)
		}
		os.MkdirAll(p, 0o755)
		if d.parent != "" {
			os.WriteFile(filepath.Join(p, "partition"), []byte("1\n"), 0o644)
		}
		os.WriteFile(filepath.Join(p, "size"), []byte("32768\n"), 0o644)
		name := filepath.Base(d.name)
		if err := os.Symlink(p, filepath.Join(sysBlock, name)); err != nil {
			t.Fatal(err)
		}
		if d.data != nil {
			os.WriteFile(filepath.Join(dev, name), d.data, 0o644)
		}
	}
	fss, err := blockdev.ScanFilesystems(sysBlock, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := []blockdev.Filesystem{
		{Device: filepath.Join(dev, "sdb"), Disk: "sdb", Type: "iso9660", Label: "QUANTIX-OS"},
		{Device: filepath.Join(dev, "sdb1"), Disk: "sdb", Type: "ext4", Label: quantix.LabelConfig},
		{Device: filepath.Join(dev, "sdc1"), Disk: "sdc", Type: "iso9660", Label: "BUNDLES", Removable: true},
		{Device: filepath.Join(dev, "sr0"), Disk: "sr0", Type: "iso9660", Label: "QUANTIX-OS", Removable: true},
		{Device: filepath.Join(dev, "vda"), Disk: "vda", Type: "ext4", Label: quantix.LabelConfig},
	}
	if diff := cmp.Diff(want, fss); diff != "" {
		t.Fatalf("ScanFilesystems (-want +got):\n%s", diff)
	}
	boot := blockdev.BootDisks(fss, "QUANTIX-OS", quantix.LabelEFI)
	if diff := cmp.Diff(map[string]bool{"sdb": true, "sr0": true}, boot); diff != "" {
		t.Errorf("BootDisks (-want +got):\n%s", diff)
	}
	got, collided, err := blockdev.FindByLabel(fss, quantix.LabelConfig, boot)
	if err != nil || !collided || got.Device != filepath.Join(dev, "sdb1") {
		t.Errorf("blockdev.FindByLabel(CFG) = %v, %v, %v; want sdb1 (on the boot disk), collided", got, collided, err)
	}
	// Without a boot disk among the candidates, the first by name wins.
	got, _, _ = blockdev.FindByLabel(fss, quantix.LabelConfig, map[string]bool{"sr0": true})
	if got.Device != filepath.Join(dev, "sdb1") {
		t.Errorf("FindByLabel without boot-disk candidate = %v, want sdb1 (first by name)", got)
	}
	if _, _, err := blockdev.FindByLabel(fss, quantix.LabelData, boot); err == nil {
		t.Errorf("blockdev.FindByLabel(DATA) = nil error, want ErrNoFilesystem")
	}
}
