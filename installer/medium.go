package installer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
)

// Medium is where the installer copies the kernel, initramfs and bootloader from:
// the running boot medium (an ISO9660 filesystem on a CD, a USB stick or an ISO
// file) or, for tests and development, a folder with the same layout.
type Medium interface {
	// ReadFile reads a file by its path relative to the medium's root (MediumKernel...).
	ReadFile(name string) ([]byte, error)
	String() string
	Close() error
}

// OpenMedium opens a folder, an ISO file or a block device holding an ISO9660
// filesystem.
func OpenMedium(path string) (Medium, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("boot medium: %w", err)
	}
	if st.IsDir() {
		return dirMedium(path), nil
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

type dirMedium string

func (m dirMedium) ReadFile(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(string(m), filepath.FromSlash(name)))
	if err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", string(m), err)
	}
	return b, nil
}
func (m dirMedium) String() string { return string(m) }
func (m dirMedium) Close() error   { return nil }

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
	b, err := readSized(f, size, name)
	if err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", m.path, err)
	}
	return b, nil
}

// Source is everything the installer copies from the medium, read into memory
// before the disk is touched.
type Source struct {
	Kernel, Initrd []byte
	EFI, Core      []byte // BOOTX64.EFI, core.img
	BootImg        []byte // boot.img
	From           string
}

// ReadSource reads and checks the files the install needs from m.
func ReadSource(m Medium) (*Source, error) {
	s := &Source{From: m.String()}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{
		{MediumKernel, &s.Kernel}, {MediumInitrd, &s.Initrd},
		{MediumEFI, &s.EFI}, {MediumCore, &s.Core}, {MediumBootImg, &s.BootImg},
	} {
		b, err := m.ReadFile(f.name)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(f.name, MediumBootDir) {
				return nil, fmt.Errorf("%w (the image must carry the files installer.BuildBootFiles makes, under /%s)", err, MediumBootDir)
			}
			return nil, err
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("boot medium %s: %s is empty", m, f.name)
		}
		*f.dst = b
	}
	if len(s.Kernel) < 1024 || string(s.Kernel[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("boot medium %s: %s is not a Linux kernel (no HdrS header)", m, MediumKernel)
	}
	if string(s.EFI[:2]) != "MZ" {
		return nil, fmt.Errorf("boot medium %s: %s is not an EFI program", m, MediumEFI)
	}
	if _, err := PatchCore(s.Core, 0); err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", m, err)
	}
	if _, err := PatchMBR(s.BootImg, make([]byte, 512), 0); err != nil {
		return nil, fmt.Errorf("boot medium %s: %w", m, err)
	}
	return s, nil
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
