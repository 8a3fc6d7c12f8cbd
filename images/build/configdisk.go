package build

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"

	"github.com/quantix/quantix"
)

// DefaultConfigDiskSize is the size of a config disk when none is given.
const DefaultConfigDiskSize = 16 << 20

// ConfigDisk writes a disk image at out holding one ext4 filesystem (no partition
// table) labelled label (quantix.LabelConfig or quantix.LabelInstall) with files:
// path inside the filesystem (no leading '/', e.g. "network/network.toml") to
// contents. Folders are created as needed. An existing out is replaced.
func ConfigDisk(out, label string, size int64, files map[string][]byte) error {
	if label != quantix.LabelConfig && label != quantix.LabelInstall {
		return fmt.Errorf("config disk %s: label %q must be %s or %s", out, label, quantix.LabelConfig, quantix.LabelInstall)
	}
	if size == 0 {
		size = DefaultConfigDiskSize
	}
	// go-diskfs's ext4 writer needs more than one block group (8 MiB).
	if size < 9<<20 {
		return fmt.Errorf("config disk %s: size %d is below 9 MiB", out, size)
	}
	names := make([]string, 0, len(files))
	var total int64
	for name, data := range files {
		if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name || strings.HasPrefix(name, "../") {
			return fmt.Errorf("config disk %s: file path %q must be relative and clean, like network/network.toml", out, name)
		}
		names = append(names, name)
		total += int64(len(data)) + 4096
	}
	if total > size/2 {
		return fmt.Errorf("config disk %s: %d bytes of files do not fit in %d bytes", out, total, size)
	}
	sort.Strings(names)
	if err := os.Remove(out); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("config disk %s: %w", out, err)
	}
	d, err := diskfs.Create(out, size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("config disk %s: %w", out, err)
	}
	defer d.Close()
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeExt4, VolumeLabel: label})
	if err != nil {
		return fmt.Errorf("config disk %s: mkfs ext4: %w", out, err)
	}
	made := map[string]bool{}
	for _, name := range names {
		if dir := path.Dir(name); dir != "." && !made[dir] {
			if err := fsys.Mkdir(dir); err != nil {
				return fmt.Errorf("config disk %s: mkdir %s: %w", out, dir, err)
			}
			for d := dir; d != "."; d = path.Dir(d) {
				made[d] = true
			}
		}
		f, err := fsys.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("config disk %s: create %s: %w", out, name, err)
		}
		if _, err := f.Write(files[name]); err != nil {
			f.Close()
			return fmt.Errorf("config disk %s: write %s: %w", out, name, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("config disk %s: write %s: %w", out, name, err)
		}
	}
	return nil
}

// ReadConfigDisk reads back the files of a config disk (for tests and checks):
// its label and every regular file by path.
func ReadConfigDisk(img string) (label string, files map[string][]byte, err error) {
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return "", nil, fmt.Errorf("open %s: %w", img, err)
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		return "", nil, fmt.Errorf("open %s: %w", img, err)
	}
	files = map[string][]byte{}
	var walk func(dir string) error
	walk = func(dir string) error {
		entries, err := fsys.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("read %s:%s: %w", img, dir, err)
		}
		for _, e := range entries {
			n := e.Name()
			if n == "." || n == ".." || n == "lost+found" {
				continue
			}
			p := path.Join(dir, n)
			if e.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
				continue
			}
			f, err := fsys.OpenFile(p, os.O_RDONLY)
			if err != nil {
				return fmt.Errorf("read %s:%s: %w", img, p, err)
			}
			b, err := io.ReadAll(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s:%s: %w", img, p, err)
			}
			files[p] = b
		}
		return nil
	}
	if err := walk("."); err != nil { // go-diskfs takes io/fs paths: "." is the root
		return "", nil, err
	}
	return strings.TrimRight(fsys.Label(), "\x00 "), files, nil
}
