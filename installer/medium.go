package installer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/quantix/quantix/installer/medium"
)

// Medium is where the installer copies the kernel, initramfs and bootloader from
// (package medium).
type Medium = medium.Medium

// OpenMedium opens a folder, an ISO file or a block device holding an ISO9660
// filesystem.
func OpenMedium(path string) (Medium, error) { return medium.Open(path) }

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
