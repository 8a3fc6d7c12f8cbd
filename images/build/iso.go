package build

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/spec"
)

// Host bootloader files (Debian packages isolinux, syslinux-common, grub-efi-amd64-bin).
var (
	isolinuxDir  = "/usr/lib/ISOLINUX"
	syslinuxBIOS = "/usr/lib/syslinux/modules/bios"
	grubEFIDir   = "/usr/lib/grub/x86_64-efi"
)

// bootFiles are the host files the ISO needs, with the package that ships them.
var bootFiles = []struct{ path, pkg string }{
	{"/usr/lib/ISOLINUX/isolinux.bin", "isolinux"},
	{"/usr/lib/ISOLINUX/isohdpfx.bin", "isolinux"},
	{"/usr/lib/syslinux/modules/bios/ldlinux.c32", "syslinux-common"},
	{"/usr/lib/syslinux/modules/bios/menu.c32", "syslinux-common"},
	{"/usr/lib/syslinux/modules/bios/libutil.c32", "syslinux-common"},
	{"/usr/lib/syslinux/modules/bios/libcom32.c32", "syslinux-common"},
	{"/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin"},
	{"/usr/bin/grub-mkimage", "grub-common"},
}

// checkBootFiles fails with the apt-get command when a bootloader file is missing.
func checkBootFiles() error {
	var missing []string
	pkgs := map[string]bool{}
	for _, f := range bootFiles {
		if !fileExists(f.path) {
			missing = append(missing, f.path)
			pkgs[f.pkg] = true
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var p []string
	for k := range pkgs {
		p = append(p, k)
	}
	return fmt.Errorf("bootloader files missing: %s: run make deps (apt-get install %s)", strings.Join(missing, ", "), strings.Join(p, " "))
}

// Paths inside the ISO (8.3 names: go-diskfs writes plain ISO9660, which ISOLINUX and
// GRUB read case-insensitively).
const (
	isoKernel = "/boot/vmlinuz"
	isoInitrd = "/boot/initrd.img" // lz4, zstd or gzip: the kernel tells by the magic
	isoEFIImg = "boot/efiboot.img"
	efiLabel  = "EFIBOOT" // FAT label of the El Torito EFI image; distinct from the ISO label
)

func entryCmdline(img *spec.Image, e spec.BootEntry) string {
	return strings.TrimSpace(img.Boot.Cmdline + " " + e.Cmdline)
}

// isolinuxCfg is the BIOS boot menu.
func isolinuxCfg(img *spec.Image) string {
	d, _ := img.Boot.TimeoutDuration()
	var b strings.Builder
	// ALLOWOPTIONS 0 and NOESCAPE 1: nobody edits the kernel command line at the
	// boot menu (init=/bin/sh would be a shell without a password).
	fmt.Fprintf(&b, "SERIAL 0 115200\nUI menu.c32\nPROMPT 0\nALLOWOPTIONS 0\nNOESCAPE 1\nTIMEOUT %d\n", max(1, int(d/(100*time.Millisecond))))
	fmt.Fprintf(&b, "MENU TITLE %s %s\nDEFAULT %s\n", img.Name, img.Version, img.Boot.DefaultEntry().ID)
	for _, e := range img.Boot.Entries {
		fmt.Fprintf(&b, "\nLABEL %s\n  MENU LABEL %s\n  LINUX %s\n  INITRD %s\n  APPEND %s\n", e.ID, e.Title, isoKernel, isoInitrd, entryCmdline(img, e))
	}
	return b.String()
}

// grubCfg is the UEFI boot menu, embedded in BOOTX64.EFI. GRUB finds the ISO by its
// volume label, on a CD and on a raw disk alike.
func grubCfg(img *spec.Image) string {
	d, _ := img.Boot.TimeoutDuration()
	var b strings.Builder
	b.WriteString("serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n")
	// A superuser without a password: nobody can edit entries or reach GRUB's
	// command line; the entries themselves boot unrestricted.
	b.WriteString("set superusers=\"root\"\n")
	fmt.Fprintf(&b, "set timeout=%d\nset default=%s\n", max(1, int(d.Round(time.Second)/time.Second)), img.Boot.DefaultEntry().ID)
	fmt.Fprintf(&b, "search --no-floppy --set=root --label %s\n", img.VolumeLabel)
	for _, e := range img.Boot.Entries {
		fmt.Fprintf(&b, "\nmenuentry '%s' --id %s --unrestricted {\n  linux %s %s\n  initrd %s\n}\n", e.Title, e.ID, isoKernel, entryCmdline(img, e), isoInitrd)
	}
	return b.String()
}

// grubModules are built into BOOTX64.EFI (no module folder on the medium).
var grubModules = []string{
	"memdisk", "tar", "normal", "configfile", "linux", "boot", "search", "search_label",
	"search_fs_file", "iso9660", "fat", "part_gpt", "part_msdos", "echo", "test",
	"serial", "terminal", "all_video", "efi_gop", "gzio", "reboot", "halt", "sleep",
}

// grubEFI builds BOOTX64.EFI with grub-mkimage and a memdisk holding grub.cfg.
// grub-mkstandalone would do the same but puts the temp files' mtimes in the
// memdisk; writing the tar here keeps the output byte-identical.
func grubEFI(cfg string, mtime time.Time, dir string) (string, error) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, d := range []string{"boot/", "boot/grub/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return "", err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "boot/grub/grub.cfg", Mode: 0o644, Size: int64(len(cfg)), ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
		return "", err
	}
	if _, err := io.WriteString(tw, cfg); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	memdisk := filepath.Join(dir, "memdisk.tar")
	if err := os.WriteFile(memdisk, tb.Bytes(), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "BOOTX64.EFI")
	args := append([]string{"-O", "x86_64-efi", "-d", grubEFIDir, "-p", "(memdisk)/boot/grub", "-m", memdisk, "-o", out}, grubModules...)
	if b, err := exec.Command("grub-mkimage", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("grub-mkimage: %v: %s (apt-get install grub-efi-amd64-bin grub-common)", err, b)
	}
	return out, nil
}

// efiImage writes the El Torito EFI image: a FAT filesystem holding
// EFI/BOOT/BOOTX64.EFI. go-diskfs makes it reproducible (SOURCE_DATE_EPOCH).
func efiImage(bootx64, out string) (int64, error) {
	efi, err := os.ReadFile(bootx64)
	if err != nil {
		return 0, err
	}
	// FAT12 with room for the loader and its directories, rounded to 64 KiB.
	size := (int64(len(efi)) + 256*1024 + 65535) / 65536 * 65536
	os.Remove(out)
	d, err := diskfs.Create(out, size, diskfs.SectorSizeDefault)
	if err != nil {
		return 0, fmt.Errorf("EFI image: %w", err)
	}
	defer d.Close()
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeFat12, VolumeLabel: efiLabel, Reproducible: true})
	if err != nil {
		return 0, fmt.Errorf("EFI image: %w", err)
	}
	if err := fs.Mkdir("/EFI/BOOT"); err != nil {
		return 0, fmt.Errorf("EFI image: %w", err)
	}
	w, err := fs.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_CREATE|os.O_RDWR)
	if err != nil {
		return 0, fmt.Errorf("EFI image: %w", err)
	}
	if _, err := w.Write(efi); err != nil {
		return 0, fmt.Errorf("EFI image: %w", err)
	}
	if err := w.Close(); err != nil {
		return 0, fmt.Errorf("EFI image: %w", err)
	}
	return size, nil
}

// ISOConfig describes a bootable ISO: a kernel, an initramfs and the boot menu.
type ISOConfig struct {
	Out                        string // the ISO file to write
	Name, Version, VolumeLabel string
	Boot                       spec.Boot
	Kernel, Initrd             string // host files
	WorkDir                    string // an empty scratch folder (created if missing)
	SourceDateEpoch            int64
	// Extra maps ISO paths ("boot/install/core.img") to host files to add, e.g. the
	// bootloader files the installer copies to a disk.
	Extra map[string]string
}

// MakeISO writes a hybrid ISO (BIOS and UEFI; CD and raw disk) that boots c.Kernel
// with c.Initrd through the boot menu c.Boot. It returns the sha256 of BOOTX64.EFI.
// The image builder uses it, and so does the boot-time floor (a bare kernel and a
// minimal initramfs booted the same way).
func MakeISO(c ISOConfig) (string, error) {
	if err := checkBootFiles(); err != nil {
		return "", err
	}
	img := &spec.Image{Name: c.Name, Version: c.Version, VolumeLabel: c.VolumeLabel, Boot: c.Boot}
	mtime := time.Unix(c.SourceDateEpoch, 0).UTC()
	root := filepath.Join(c.WorkDir, "root")
	if err := os.RemoveAll(root); err != nil {
		return "", err
	}
	copyIn := func(src, dst string) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		p := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, data, 0o644)
	}
	if err := copyIn(c.Kernel, strings.TrimPrefix(isoKernel, "/")); err != nil {
		return "", fmt.Errorf("iso: kernel: %w", err)
	}
	if err := copyIn(c.Initrd, strings.TrimPrefix(isoInitrd, "/")); err != nil {
		return "", fmt.Errorf("iso: initramfs: %w", err)
	}
	extra := make([]string, 0, len(c.Extra))
	for dst := range c.Extra {
		extra = append(extra, dst)
	}
	sort.Strings(extra)
	for _, dst := range extra {
		if err := copyIn(c.Extra[dst], strings.TrimPrefix(dst, "/")); err != nil {
			return "", fmt.Errorf("iso: %s: %w", dst, err)
		}
	}
	if err := copyIn(filepath.Join(isolinuxDir, "isolinux.bin"), "isolinux/isolinux.bin"); err != nil {
		return "", err
	}
	for _, f := range []string{"ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32"} {
		if err := copyIn(filepath.Join(syslinuxBIOS, f), "isolinux/"+f); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "isolinux/isolinux.cfg"), []byte(isolinuxCfg(img)), 0o644); err != nil {
		return "", err
	}
	efiDir := filepath.Join(c.WorkDir, "efi")
	if err := os.MkdirAll(efiDir, 0o755); err != nil {
		return "", err
	}
	bootx64, err := grubEFI(grubCfg(img), mtime, efiDir)
	if err != nil {
		return "", err
	}
	// go-diskfs's FAT writer takes its timestamps from the environment.
	os.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(c.SourceDateEpoch))
	efiSize, err := efiImage(bootx64, filepath.Join(root, isoEFIImg))
	if err != nil {
		return "", err
	}
	if err := writeISO(root, c.Out, c.VolumeLabel, efiSize, mtime); err != nil {
		return "", err
	}
	return quantix.FileSHA256(bootx64)
}

// writeISO writes the ISO9660 filesystem of the folder root to out with El Torito
// entries for BIOS (isolinux) and UEFI (the EFI image), trims the file to the volume
// size, fixes the volume timestamps to mtime, and makes it hybrid.
func writeISO(root, out, label string, efiSize int64, mtime time.Time) error {
	// go-diskfs writes each directory record's date in time.Local, with the zone's
	// offset: the same commit built in another time zone gave other bytes. It has
	// no option for the zone, so the ISO is written with Local set to UTC.
	localMu.Lock()
	defer localMu.Unlock()
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC
	var total int64
	if err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		total += info.Size() + 2048
		// go-diskfs copies file times into the directory records.
		return os.Chtimes(p, mtime, mtime)
	}); err != nil {
		return err
	}
	if err := os.Chtimes(root, mtime, mtime); err != nil {
		return err
	}
	os.Remove(out)
	d, err := diskfs.Create(out, total+4*1024*1024, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	d.LogicalBlocksize = 2048
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeISO9660, VolumeLabel: label, WorkDir: root})
	if err != nil {
		d.Close()
		return fmt.Errorf("create %s: %w", out, err)
	}
	iso, ok := fsys.(*iso9660.FileSystem)
	if !ok {
		d.Close()
		return fmt.Errorf("create %s: not an ISO9660 filesystem", out)
	}
	bios := &iso9660.ElToritoEntry{Platform: iso9660.BIOS, Emulation: iso9660.NoEmulation, BootFile: "isolinux/isolinux.bin", BootTable: true}
	bios.SetLoadSize(4)
	err = iso.Finalize(iso9660.FinalizeOptions{
		VolumeIdentifier: label,
		ElTorito: &iso9660.ElTorito{
			BootCatalog:     "isolinux/boot.cat",
			HideBootCatalog: true, // its directory record would carry time.Now()
			Entries: []*iso9660.ElToritoEntry{
				bios,
				{Platform: iso9660.EFI, Emulation: iso9660.NoEmulation, BootFile: isoEFIImg},
			},
		},
	})
	d.Close()
	if err != nil {
		return fmt.Errorf("finalize %s: %w", out, err)
	}
	if err := trimToVolume(out, mtime); err != nil {
		return err
	}
	mbr, err := os.ReadFile(filepath.Join(isolinuxDir, "isohdpfx.bin"))
	if err != nil {
		return fmt.Errorf("hybrid MBR: %w (apt-get install isolinux)", err)
	}
	return MakeHybrid(out, mbr, efiSize, label)
}

// localMu serialises writeISO's swap of time.Local.
var localMu sync.Mutex

// trimToVolume cuts the file to the volume size recorded in the primary volume
// descriptor and sets the four PVD dates (go-diskfs writes time.Now()) to mtime.
func trimToVolume(path string, mtime time.Time) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	pvd := make([]byte, 2048)
	if _, err := f.ReadAt(pvd, 16*2048); err != nil {
		return fmt.Errorf("read primary volume descriptor: %w", err)
	}
	if pvd[0] != 1 || string(pvd[1:6]) != "CD001" {
		return fmt.Errorf("%s: no primary volume descriptor", path)
	}
	blocks := int64(pvd[80]) | int64(pvd[81])<<8 | int64(pvd[82])<<16 | int64(pvd[83])<<24
	date := []byte(mtime.UTC().Format("20060102150405") + "00")
	date = append(date, 0) // GMT offset
	// Volume identifier: ISO9660 pads with spaces (go-diskfs writes NULs).
	for i := 40; i < 72; i++ {
		if pvd[i] == 0 {
			pvd[i] = ' '
		}
	}
	unset := append([]byte("0000000000000000"), 0)
	copy(pvd[813:], date)  // creation
	copy(pvd[830:], date)  // modification
	copy(pvd[847:], unset) // expiration
	copy(pvd[864:], unset) // effective
	if _, err := f.WriteAt(pvd, 16*2048); err != nil {
		return err
	}
	if err := f.Truncate(blocks * 2048); err != nil {
		return err
	}
	return f.Sync()
}
