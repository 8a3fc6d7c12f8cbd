// Package mediumtest writes boot media for tests: real ISO9660 files that
// medium.Open reads as it reads a Quantix ISO.
package mediumtest

import (
	"os"
	"path/filepath"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// WriteISO writes a real ISO9660 file at out holding files (medium paths, such
// as medium.Kernel).
func WriteISO(t testing.TB, out string, files map[string][]byte) {
	t.Helper()
	root := t.TempDir()
	total := int64(0)
	for name, data := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		total += int64(len(data)) + 2048
	}
	d, err := diskfs.Create(out, total+4<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.LogicalBlocksize = 2048
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeISO9660, VolumeLabel: "QUANTIX", WorkDir: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := fsys.(*iso9660.FileSystem).Finalize(iso9660.FinalizeOptions{VolumeIdentifier: "QUANTIX"}); err != nil {
		t.Fatal(err)
	}
}
