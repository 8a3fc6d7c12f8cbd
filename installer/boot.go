package installer

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/quantix/quantix"
)

// Where the installer finds what it copies, relative to the boot medium's root (the
// ISO; matched case-insensitively, as go-diskfs shows ISO9660 names upper case).
const (
	MediumKernel = "boot/vmlinuz"
	MediumInitrd = "boot/initrd.img" // gzip or zstd; the kernel tells by the magic
	// MediumBootDir holds the bootloader files BuildBootFiles makes at image build time.
	MediumBootDir = "boot/install"
	MediumEFI     = MediumBootDir + "/bootx64.efi" // GRUB x86_64-efi, prefix /EFI/BOOT
	MediumCore    = MediumBootDir + "/core.img"    // GRUB i386-pc, prefix (,gpt1)/EFI/BOOT
	MediumBootImg = MediumBootDir + "/boot.img"    // GRUB i386-pc MBR boot code
)

// Paths on the installed ESP.
const (
	ESPEFI        = "EFI/BOOT/BOOTX64.EFI"
	ESPGrubCfg    = "EFI/BOOT/grub.cfg"
	ESPKernel     = "boot/vmlinuz"
	ESPInitrd     = "boot/initrd.img"
	ESPIncomplete = "INSTALL-INCOMPLETE"
	ESPInstalled  = "INSTALLED" // the marker's name once the install is verified
)

// grubEFIModules are built into BOOTX64.EFI; grubPCModules into core.img. Neither
// loads modules from disk, so the ESP needs no module folder.
var (
	grubEFIModules = []string{"part_gpt", "fat", "normal", "configfile", "linux", "boot", "search",
		"search_fs_uuid", "search_label", "echo", "test", "sleep", "serial", "terminal", "all_video",
		"efi_gop", "gzio", "reboot", "halt"}
	grubPCModules = []string{"biosdisk", "part_gpt", "fat", "normal", "configfile", "linux", "boot",
		"search", "echo", "test", "sleep", "serial", "terminal", "reboot", "halt"}
)

// Host GRUB folders (Debian: grub-efi-amd64-bin, grub-pc-bin, grub-common).
var (
	GrubEFIDir = "/usr/lib/grub/x86_64-efi"
	GrubPCDir  = "/usr/lib/grub/i386-pc"
)

// BuildBootFiles writes bootx64.efi, core.img and boot.img into dir with
// grub-mkimage. The image builder calls it and puts the three files on the ISO under
// MediumBootDir; tests call it to make a boot medium.
func BuildBootFiles(dir string) error {
	if _, err := exec.LookPath("grub-mkimage"); err != nil {
		return fmt.Errorf("grub-mkimage not found: run make deps (apt-get install grub-common)")
	}
	for d, pkg := range map[string]string{GrubEFIDir: "grub-efi-amd64-bin", GrubPCDir: "grub-pc-bin"} {
		if _, err := os.Stat(filepath.Join(d, "linux.mod")); err != nil {
			return fmt.Errorf("%s missing: run make deps (apt-get install %s)", d, pkg)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	run := func(args ...string) error {
		if out, err := exec.Command("grub-mkimage", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("grub-mkimage %s: %v: %s", strings.Join(args[:2], " "), err, out)
		}
		return nil
	}
	efi := append([]string{"-O", "x86_64-efi", "-d", GrubEFIDir, "-p", "/EFI/BOOT", "-o", filepath.Join(dir, filepath.Base(MediumEFI))}, grubEFIModules...)
	if err := run(efi...); err != nil {
		return err
	}
	pc := append([]string{"-O", "i386-pc", "-d", GrubPCDir, "-p", "(,gpt1)/EFI/BOOT", "-o", filepath.Join(dir, filepath.Base(MediumCore))}, grubPCModules...)
	if err := run(pc...); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(GrubPCDir, "boot.img"))
	if err != nil {
		return fmt.Errorf("boot.img: %w (apt-get install grub-pc-bin)", err)
	}
	return os.WriteFile(filepath.Join(dir, filepath.Base(MediumBootImg)), b, 0o644)
}

// GRUB i386-pc boot.img offsets (grub include/grub/i386/pc/boot.h).
const (
	bootBPBStart     = 0x03
	bootBPBEnd       = 0x5a
	bootKernelSector = 0x5c
	bootDrive        = 0x64
	bootDriveCheck   = 0x66
	bootNTMagic      = 0x1b8
	blocklistSize    = 12
)

// PatchMBR returns sector 0 for BIOS boot: GRUB's boot.img code around the BPB
// area, the existing disk signature and partition table (the protective MBR), and
// the LBA of core.img, as grub-bios-setup does it.
func PatchMBR(bootImg, sector0 []byte, coreLBA uint64) ([]byte, error) {
	if len(bootImg) != 512 || bootImg[510] != 0x55 || bootImg[511] != 0xaa {
		return nil, fmt.Errorf("boot.img: %d bytes without a boot signature; want GRUB's 512-byte i386-pc boot.img", len(bootImg))
	}
	if len(sector0) != 512 {
		return nil, fmt.Errorf("sector 0: %d bytes", len(sector0))
	}
	out := make([]byte, 512)
	copy(out, bootImg[:bootNTMagic])
	copy(out[bootBPBStart:bootBPBEnd], sector0[bootBPBStart:bootBPBEnd])
	copy(out[bootNTMagic:], sector0[bootNTMagic:510])
	out[510], out[511] = 0x55, 0xaa
	binary.LittleEndian.PutUint64(out[bootKernelSector:], coreLBA)
	out[bootDrive] = 0xff // use the drive the BIOS booted from
	// Buggy BIOSes pass a floppy drive number: grub-bios-setup replaces the check
	// with two NOPs for hard disks.
	out[bootDriveCheck], out[bootDriveCheck+1] = 0x90, 0x90
	return out, nil
}

// PatchCore returns core.img, padded to whole sectors, with its first block list
// pointing at the sectors after its first one when it is written at coreLBA.
func PatchCore(core []byte, coreLBA uint64) ([]byte, error) {
	if len(core) < 1024 {
		return nil, fmt.Errorf("core.img: %d bytes is too small for GRUB's i386-pc core.img", len(core))
	}
	nsec := (len(core) + 511) / 512
	out := make([]byte, nsec*512)
	copy(out, core)
	bl := out[512-blocklistSize : 512]
	seg := binary.LittleEndian.Uint16(bl[10:])
	if seg != 0x820 {
		return nil, fmt.Errorf("core.img: first block list segment is %#x, want 0x820 (not a GRUB i386-pc core.img?)", seg)
	}
	binary.LittleEndian.PutUint64(bl[0:], coreLBA+1)
	binary.LittleEndian.PutUint16(bl[8:], uint16(nsec-1))
	// The block list before it must terminate the list.
	for i := range blocklistSize {
		out[512-2*blocklistSize+i] = 0
	}
	return out, nil
}

// GrubConfig is grub.cfg on the ESP, read by both BOOTX64.EFI (UEFI) and core.img
// (BIOS), which both set root to the ESP they were loaded from. While the
// INSTALL-INCOMPLETE marker is on the ESP the disk does not boot.
func GrubConfig(title, cmdline string) string {
	var b strings.Builder
	b.WriteString("# Written by qx-install.\n")
	b.WriteString("serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n")
	b.WriteString("set timeout=2\nset default=quantix\n")
	fmt.Fprintf(&b, "if [ -f /%s ]; then\n", ESPIncomplete)
	b.WriteString("  echo \"This disk's install did not finish (INSTALL-INCOMPLETE on QUANTIX-EFI): boot the installer again.\"\n")
	b.WriteString("  while true; do sleep 3600; done\nfi\n")
	fmt.Fprintf(&b, "menuentry '%s' --id quantix {\n  linux /%s %s\n  initrd /%s\n}\n", title, ESPKernel, cmdline, ESPInitrd)
	return b.String()
}

// InstalledCmdline is the installed system's kernel command line: the running one
// without the install entry's and the boot loader's own parameters, plus
// quantix.disk=<diskGUID> (quantix.ParamDisk).
func InstalledCmdline(running quantix.Cmdline, diskGUID string) string {
	return running.Without(quantix.ParamInstall, "BOOT_IMAGE", "initrd", quantix.ParamDisk).
		With(quantix.ParamDisk, strings.ToLower(diskGUID)).String()
}
