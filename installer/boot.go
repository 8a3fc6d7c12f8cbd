package installer

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/installer/medium"
)

// Where the installer finds what it copies, relative to the boot medium's root (the
// ISO; matched case-insensitively, as go-diskfs shows ISO9660 names upper case).
const (
	MediumKernel = medium.Kernel
	MediumInitrd = medium.Initrd
	// MediumBootDir holds the bootloader files BuildBootFiles makes at image build time.
	MediumBootDir = "boot/install"
	MediumEFI     = MediumBootDir + "/bootx64.efi" // GRUB x86_64-efi, prefix /EFI/BOOT
	MediumCore    = MediumBootDir + "/core.img"    // GRUB i386-pc, prefix (,gpt1)/EFI/BOOT
	MediumBootImg = MediumBootDir + "/boot.img"    // GRUB i386-pc MBR boot code
)

// Paths on the installed ESP.
const (
	ESPEFI     = "EFI/BOOT/BOOTX64.EFI"
	ESPGrubCfg = "EFI/BOOT/grub.cfg"
	// ESPLegacyKernel and ESPLegacyInitrd are the single-slot layout qx-install
	// wrote before A/B slots (docs/design.md §16); ConvertSingleSlot moves them
	// into slot a. The slots live under quantix.ESPSlotsDir.
	ESPLegacyKernel = "boot/vmlinuz"
	ESPLegacyInitrd = "boot/initrd.img"
	ESPIncomplete   = "INSTALL-INCOMPLETE"
	ESPInstalled    = "INSTALLED" // the marker's name once the install is verified
)

// grubEFIModules are built into BOOTX64.EFI; grubPCModules into core.img. Neither
// loads modules from disk, so the ESP needs no module folder. loadenv reads and
// writes the slot environment (load_env, save_env), test evaluates the slot choice.
var (
	grubEFIModules = []string{"part_gpt", "fat", "normal", "configfile", "linux", "boot", "search",
		"search_fs_uuid", "search_label", "echo", "test", "sleep", "serial", "terminal", "all_video",
		"efi_gop", "gzio", "reboot", "halt", "loadenv"}
	grubPCModules = []string{"biosdisk", "part_gpt", "fat", "normal", "configfile", "linux", "boot",
		"search", "echo", "test", "sleep", "serial", "terminal", "reboot", "halt", "loadenv"}
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
//
// It chooses the A/B slot (docs/design.md §16) from the environment block
// (installer/bootenv; the same rule as bootenv.State.Boot): the first slot in
// QX_ORDER that is marked good boots as it is; one with tries left boots as a trial
// (quantix.trial=1) after its tries were decremented and saved to both copies, so a
// trial that panics or hangs runs out of tries and the other slot boots. The other
// slot is GRUB's fallback entry when the chosen slot's files do not load. The menu
// entries are static (one per slot and trial), so no variable has to reach them.
func GrubConfig(title, cmdline string) string {
	var b strings.Builder
	b.WriteString("# Written by qx-install.\n")
	b.WriteString("serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n")
	b.WriteString("set timeout=2\n")
	fmt.Fprintf(&b, "if [ -f /%s ]; then\n", ESPIncomplete)
	b.WriteString("  echo \"This disk's install did not finish (INSTALL-INCOMPLETE on QUANTIX-EFI): boot the installer again.\"\n")
	b.WriteString("  while true; do sleep 3600; done\nfi\n")
	b.WriteString(grubSlotScript())
	for _, slot := range []string{quantix.SlotA, quantix.SlotB} {
		for _, trial := range []bool{false, true} {
			id, name, line := "quantix-"+slot, title+" (slot "+slot+")", cmdline+" "+quantix.ParamSlot+"="+slot
			if trial {
				id, name, line = id+"-trial", title+" (slot "+slot+", trial)", line+" "+quantix.ParamTrial+"=1"
			}
			fmt.Fprintf(&b, "menuentry '%s' --id %s {\n  linux /%s %s\n  initrd /%s\n}\n", name, id,
				quantix.ESPSlotFile(slot, quantix.SlotKernel), line, quantix.ESPSlotFile(slot, quantix.SlotInitrd))
		}
	}
	return b.String()
}

// grubSlotScript sets default (the chosen slot's entry) and fallback (the other
// slot's). GRUB has no arithmetic: a try is taken off case by case.
func grubSlotScript() string {
	env, bak := "/"+quantix.ESPEnv, "/"+quantix.ESPEnvBackup
	var dec strings.Builder
	for t := quantix.SlotMaxTries; t > 0; t-- {
		fmt.Fprintf(&dec, "    if [ \"$qx_tries\" = %d ]; then set qx_left=%d; fi\n", t, t-1)
	}
	vars := strings.Join([]string{bootenv.VarOrder, bootenv.VarATries, bootenv.VarAOK, bootenv.VarBTries, bootenv.VarBOK}, " ")
	r := strings.NewReplacer("@ENV@", env, "@BAK@", bak, "@VARS@", vars, "@DEC@", dec.String(),
		"@MARK@", quantix.MarkerPrefix+quantix.MarkerBootSlot)
	return r.Replace(`set qx_from=
if load_env --file @ENV@ @VARS@; then
  if [ "$QX_ORDER" = "a b" -o "$QX_ORDER" = "b a" ]; then set qx_from=@ENV@; fi
fi
if [ -z "$qx_from" ]; then
  if load_env --file @BAK@ @VARS@; then
    if [ "$QX_ORDER" = "a b" -o "$QX_ORDER" = "b a" ]; then set qx_from=@BAK@; fi
  fi
fi
if [ -z "$qx_from" ]; then
  echo "QUANTIX-EFI holds no valid boot slot environment (@ENV@ and @BAK@): booting slot a"
  set QX_ORDER="a b"
  set QX_A_OK=1
  set QX_B_OK=0
  set qx_from=none
fi
set qx_slot=
set qx_trial=
for qx_s in $QX_ORDER; do
  if [ -z "$qx_slot" ]; then
    if [ "$qx_s" = a ]; then
      set qx_ok="$QX_A_OK"
      set qx_tries="$QX_A_TRIES"
    else
      set qx_ok="$QX_B_OK"
      set qx_tries="$QX_B_TRIES"
    fi
    set qx_left=
@DEC@    if [ "$qx_ok" = 1 ]; then
      set qx_slot="$qx_s"
    elif [ -n "$qx_left" ]; then
      set qx_slot="$qx_s"
      set qx_trial=1
      if [ "$qx_s" = a ]; then set QX_A_TRIES="$qx_left"; else set QX_B_TRIES="$qx_left"; fi
    fi
  fi
done
if [ -z "$qx_slot" ]; then
  echo "No boot slot is good or has tries left ($QX_ORDER): booting the second, the one booted before"
  for qx_s in $QX_ORDER; do set qx_slot="$qx_s"; done
fi
if [ -n "$qx_trial" ]; then
  set qx_saved=
  if save_env --file @ENV@ QX_A_TRIES QX_B_TRIES; then set qx_saved=1; fi
  if save_env --file @BAK@ QX_A_TRIES QX_B_TRIES; then set qx_saved=1; fi
  if [ -z "$qx_saved" ]; then
    echo "Cannot record the trial of slot $qx_slot in @ENV@ or @BAK@: booting the other slot"
    if [ "$qx_slot" = a ]; then set qx_slot=b; else set qx_slot=a; fi
    set qx_trial=
  fi
fi
if [ "$qx_slot" = a ]; then set qx_other=b; else set qx_other=a; fi
if [ -n "$qx_trial" ]; then
  set default="quantix-${qx_slot}-trial"
  echo "@MARK@ slot=$qx_slot trial=1 tries_left=$qx_left env=$qx_from"
else
  set default="quantix-${qx_slot}"
  echo "@MARK@ slot=$qx_slot trial=0 env=$qx_from"
fi
set fallback="quantix-${qx_other}"
`)
}

// InstalledCmdline is the installed system's kernel command line: the running one
// without the install entry's and the boot loader's own parameters, plus
// quantix.disk=<diskGUID> (quantix.ParamDisk). GRUB adds the slot parameters.
func InstalledCmdline(running quantix.Cmdline, diskGUID string) string {
	return running.Without(quantix.ParamInstall, "BOOT_IMAGE", "initrd", quantix.ParamDisk, quantix.ParamSlot, quantix.ParamTrial).
		With(quantix.ParamDisk, strings.ToLower(diskGUID)).String()
}
