package installer

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/vm"
)

// TestInstalledDiskBoots installs onto a disk image (the lab's kernel and its
// self-test initramfs as the "image") and boots that disk in QEMU on SeaBIOS
// (MBR boot.img -> core.img in the BIOS boot partition -> grub.cfg on the ESP) and
// on OVMF (EFI/BOOT/BOOTX64.EFI -> grub.cfg), checking that the kernel runs with
// the installed command line: quantix.disk=<disk GUID> and no quantix.install,
// from A/B slot a (quantix.slot=a, no trial).
func TestInstalledDiskBoots(t *testing.T) {
	s := fakeSystem(t, fakeDisk{Name: "vda", Size: MinDiskSize, Serial: "QX-SERIAL-1"})
	res, _, _, err := install(t, s, quantix.ImageQuantixOS, testAnswerOS)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	img := filepath.Join(s.DevDir, "vda")
	for _, fw := range []vm.Firmware{vm.BIOS, vm.UEFI} {
		t.Run(fw.String(), func(t *testing.T) {
			m := vm.Start(t, vm.Config{Name: "installed-" + fw.String(), Firmware: fw,
				BootDisk: &vm.Disk{Path: img, Snapshot: true}})
			line := m.Expect(t, "Command line:", 90*time.Second)
			if !strings.Contains(line, quantix.ParamDisk+"="+strings.ToLower(res.Plan.DiskGUID)) || strings.Contains(line, "quantix.install") {
				t.Errorf("kernel command line %q: want %s=%s and no quantix.install", line, quantix.ParamDisk, res.Plan.DiskGUID)
			}
			// GRUB chose slot a, the good one, without a trial.
			if !strings.Contains(line, quantix.ParamSlot+"=a") || strings.Contains(line, quantix.ParamTrial) {
				t.Errorf("kernel command line %q: want %s=a and no %s", line, quantix.ParamSlot, quantix.ParamTrial)
			}
			m.WaitMarker(t, quantix.MarkerBootComplete, 60*time.Second)
		})
	}
}
