package blockdev

import (
	"os"
	"path/filepath"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// TestDiskByGUID writes real GPTs with go-diskfs to two disk images behind a fake
// /sys/class/block and finds each by its disk GUID, as init does for quantix.disk=.
func TestDiskByGUID(t *testing.T) {
	dir := t.TempDir()
	sys, dev := filepath.Join(dir, "sys"), filepath.Join(dir, "dev")
	for _, d := range []string{sys, dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	guids := map[string]string{
		"vda": "0F8C7C4B-5A61-4F2E-9C1D-0123456789AB", // upper case: compared in lower case
		"vdb": "a1b2c3d4-e5f6-4711-8899-aabbccddeeff",
	}
	for name, guid := range guids {
		path := filepath.Join(dev, name)
		d, err := diskfs.Create(path, 8<<20, diskfs.SectorSizeDefault)
		if err != nil {
			t.Fatal(err)
		}
		tbl := &gpt.Table{GUID: guid, LogicalSectorSize: 512, ProtectiveMBR: true,
			Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: 4095, Type: gpt.LinuxFilesystem, Name: "QUANTIX-CFG"}}}
		if err := d.Partition(tbl); err != nil {
			t.Fatal(err)
		}
		d.Close()
		if err := os.MkdirAll(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A partition entry and a disk without a GPT are skipped.
	os.MkdirAll(filepath.Join(sys, "vda1"), 0o755)
	os.WriteFile(filepath.Join(sys, "vda1", "partition"), []byte("1\n"), 0o644)
	os.WriteFile(filepath.Join(dev, "vda1"), make([]byte, 4096), 0o644)
	os.MkdirAll(filepath.Join(sys, "sr0"), 0o755)
	os.WriteFile(filepath.Join(dev, "sr0"), make([]byte, 4096), 0o644)

	for name, guid := range guids {
		got, ok := DiskByGUID(sys, dev, guid)
		if !ok || got != name {
			t.Errorf("DiskByGUID(%s) = %q, %v, want %q", guid, got, ok, name)
		}
	}
	if got, ok := DiskByGUID(sys, dev, "00000000-0000-0000-0000-000000000000"); ok {
		t.Errorf("DiskByGUID(unknown) = %q, want not found", got)
	}
	fss := []Filesystem{{Device: "/dev/vda3", Disk: "vda", Label: "QUANTIX-CFG"}, {Device: "/dev/vdb3", Disk: "vdb", Label: "QUANTIX-CFG"}}
	if got := OnDisk(fss, "vdb"); len(got) != 1 || got[0].Device != "/dev/vdb3" {
		t.Errorf("OnDisk(vdb) = %+v, want only /dev/vdb3", got)
	}
}
