package console

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/blockdev"
	"github.com/quantix/quantix/upgrade"
)

// MediaDir is where the console mounts the USB sticks and CDs it looks for
// release bundles on, one folder per device (sdb1, sr0).
const MediaDir = quantix.RunDir + "/media"

// Media finds release bundles (docs/design.md §16) on removable media: it mounts
// every filesystem of a removable or USB disk read-only, keeps the ones holding a
// bundle mounted (init reads the bundle from there when staging) and unmounts the
// rest. The roots can be moved for tests.
type Media struct {
	SysBlock string // /sys/class/block
	DevDir   string // /dev
	Dir      string // MediaDir
	// BootLabel is the boot medium's volume label (the image config's
	// volume_label): the live ISO's own stick or CD is not looked at.
	BootLabel string
}

// Medium is one filesystem looked at for bundles.
type Medium struct {
	blockdev.Filesystem
	// Dir is where it is mounted; "" when it is not (it held no bundle, could not
	// be mounted, or was released).
	Dir string
	// Bundles are the folders holding a bundle (its root, or a folder in it), as
	// they claim to be: init verifies one when it stages it.
	Bundles []upgrade.Unverified
	// Broken are folders holding SHA256SUMS that are no bundle (unsigned, an ISO
	// missing), with why.
	Broken []error
	// Err says why it could not be looked at (the mount failed).
	Err error
}

// mediaMountFlags make a medium harmless to look at: nothing is written to it and
// nothing on it runs or becomes a device.
const mediaMountFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// mediaFSTypes are the filesystems looked at, with their mount options: ext4
// without replaying its journal, so read-only means nothing is written.
var mediaFSTypes = map[string]string{"vfat": "", "iso9660": "", "ext4": "noload"}

// Candidates lists the filesystems Scan would look at: on removable or USB disks,
// of a type it mounts, neither on the boot disk (QUANTIX-EFI or BootLabel) nor
// labelled QUANTIX-CFG or QUANTIX-DATA (they are the machine's own), by device.
func (m Media) Candidates() ([]blockdev.Filesystem, error) {
	fss, err := blockdev.ScanFilesystems(m.SysBlock, m.DevDir)
	if err != nil {
		return nil, err
	}
	boot := blockdev.BootDisks(fss, m.BootLabel, quantix.LabelEFI)
	var out []blockdev.Filesystem
	for _, f := range fss {
		if _, ok := mediaFSTypes[f.Type]; !ok || !f.Removable || boot[f.Disk] {
			continue
		}
		switch f.Label {
		case quantix.LabelEFI, quantix.LabelConfig, quantix.LabelData:
			continue
		}
		out = append(out, f)
	}
	return out, nil
}

// Scan mounts each candidate read-only under Dir and looks for bundles in its
// root and the folders in it. A medium without a bundle is unmounted again; the
// ones holding bundles stay mounted until Release.
func (m Media) Scan() ([]Medium, error) {
	fss, err := m.Candidates()
	if err != nil {
		return nil, err
	}
	out := make([]Medium, 0, len(fss))
	for _, f := range fss {
		md := Medium{Filesystem: f}
		dir := filepath.Join(m.Dir, filepath.Base(f.Device))
		if err := mountMedium(f, dir); err != nil {
			md.Err = err
			out = append(out, md)
			continue
		}
		md.Dir = dir
		md.Bundles, md.Broken = findBundles(dir)
		if len(md.Bundles) == 0 {
			if err := md.unmount(); err != nil {
				md.Err = err
			} else {
				md.Dir = ""
			}
		}
		out = append(out, md)
	}
	return out, nil
}

func mountMedium(f blockdev.Filesystem, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("mount %s: %w", f.Device, err)
	}
	// A console that was restarted may have left its mount behind.
	_ = unix.Unmount(dir, 0)
	if err := unix.Mount(f.Device, dir, f.Type, mediaMountFlags, mediaFSTypes[f.Type]); err != nil {
		os.Remove(dir)
		return fmt.Errorf("mount %s (%s) read-only on %s: %w", f.Device, f.Type, dir, err)
	}
	return nil
}

// findBundles looks in dir and the folders in it for a bundle (SHA256SUMS, its
// signature and the ISO it lists).
func findBundles(dir string) (bundles []upgrade.Unverified, broken []error) {
	dirs := []string{dir}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(dir, e.Name()))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, quantix.BundleSums)); err != nil {
			continue
		}
		b, err := upgrade.Inspect(d)
		if err != nil {
			broken = append(broken, err)
			continue
		}
		bundles = append(bundles, b)
	}
	sort.Slice(bundles, func(i, j int) bool { return bundles[i].Dir < bundles[j].Dir })
	return bundles, broken
}

// unmount unmounts the medium and removes its folder.
func (md Medium) unmount() error {
	if md.Dir == "" {
		return nil
	}
	if err := unix.Unmount(md.Dir, 0); err != nil {
		return fmt.Errorf("unmount %s from %s: %w", md.Device, md.Dir, err)
	}
	os.Remove(md.Dir)
	return nil
}

// Release unmounts every medium a scan left mounted.
func Release(media []Medium) error {
	var errs []error
	for _, md := range media {
		errs = append(errs, md.unmount())
	}
	return errors.Join(errs...)
}
