// Package medium reads a boot medium: a Quantix ISO (file, CD or stick) or a folder
// with the same layout. The installer copies from it and an upgrade stages a
// release bundle's ISO from it; it is its own package so that init can stage
// without linking the installer.
package medium

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
)

// Where the boot files are, relative to the medium's root (matched
// case-insensitively, as go-diskfs shows ISO9660 names upper case).
const (
	Kernel = "boot/vmlinuz"
	Initrd = "boot/initrd.img" // lz4, zstd or gzip; the kernel tells by the magic
)

// Medium is where the installer copies the kernel, initramfs and bootloader from:
// the running boot medium (an ISO9660 filesystem on a CD, a USB stick or an ISO
// file) or, for tests and development, a folder with the same layout.
type Medium interface {
	// ReadFile reads a file by its path relative to the medium's root (Kernel...).
	ReadFile(name string) ([]byte, error)
	String() string
	Close() error
}

// Open opens a folder, an ISO file or a block device holding an ISO9660
// filesystem.
func Open(path string) (Medium, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("boot medium: %w", err)
	}
	if st.IsDir() {
		return Dir(path), nil
	}
	d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", path, err)
	}
	d.LogicalBlocksize = 2048 // ISO9660 blocks, on a CD and on a stick alike
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("boot medium %s: no ISO9660 filesystem: %w", path, err)
	}
	if fsys.Type() != filesystem.TypeISO9660 {
		d.Close()
		return nil, fmt.Errorf("boot medium %s: filesystem type %v is not ISO9660", path, fsys.Type())
	}
	return &isoMedium{path: path, d: d, fs: fsys}, nil
}

// Dir is a folder with a boot medium's layout.
type Dir string

func (m Dir) ReadFile(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(string(m), filepath.FromSlash(name)))
	if err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", string(m), err)
	}
	return b, nil
}
func (m Dir) String() string { return string(m) }
func (m Dir) Close() error   { return nil }

type isoMedium struct {
	path string
	d    *disk.Disk
	fs   filesystem.FileSystem
}

func (m *isoMedium) String() string { return m.path }
func (m *isoMedium) Close() error   { return m.d.Close() }

// ReadFile finds name component by component, ignoring case and ISO9660 ";1"
// version suffixes.
func (m *isoMedium) ReadFile(name string) ([]byte, error) {
	dir := ""
	size := int64(-1)
	parts := strings.Split(strings.Trim(name, "/"), "/")
	for i, want := range parts {
		list := dir
		if list == "" {
			list = "."
		}
		entries, err := m.fs.ReadDir(list)
		if err != nil {
			return nil, fmt.Errorf("boot medium %s: read %s: %w", m.path, list, err)
		}
		found := ""
		for _, e := range entries {
			n := strings.TrimSuffix(strings.SplitN(e.Name(), ";", 2)[0], ".")
			if strings.EqualFold(n, want) && e.IsDir() == (i < len(parts)-1) {
				found = e.Name()
				if info, err := e.Info(); err == nil {
					size = info.Size()
				}
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("boot medium %s: %s: %w", m.path, name, os.ErrNotExist)
		}
		if dir == "" {
			dir = found
		} else {
			dir = dir + "/" + found
		}
	}
	f, err := m.fs.OpenFile(dir, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("boot medium %s: open %s: %w", m.path, name, err)
	}
	defer f.Close()
	if size < 0 {
		return nil, fmt.Errorf("boot medium %s: %s: no size in its directory entry", m.path, name)
	}
	b, err := ReadSized(f, size, name)
	if err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", m.path, err)
	}
	return b, nil
}

// ReadSized reads exactly size bytes of name from r (a file whose size its
// folder entry gives: more or fewer is an error).
func ReadSized(r io.Reader, size int64, name string) ([]byte, error) {
	buf := make([]byte, size+1)
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err == io.EOF || k == 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
	}
	if int64(n) != size {
		return nil, fmt.Errorf("read %s: got %d bytes, the directory says %d", name, n, size)
	}
	return buf[:n], nil
}
