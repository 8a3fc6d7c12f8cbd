package installer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/tests/vm"
)

// The ISO tests boot the real images (out/*.iso, made by `make iso`) in the lab:
// the installer runs from the image against a blank virtio disk with an answer file
// on a QUANTIX-INSTALL config disk, powers off, and the installed disk is booted on
// SeaBIOS and on OVMF (twice), where init must mount the answer file's
// configuration. The ISO is attached as a CD (the boot medium the installer copies
// from); the kernel is started directly so the command line can carry
// quantix.install=install.toml (the ISO menu's install entry is interactive).

// testISO returns out/<image>.iso, failing with the build command when it is
// missing or predates the installer.
func testISO(t *testing.T, image string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots the ISOs in QEMU: skipped with -short")
	}
	iso, err := filepath.Abs(filepath.Join("..", "out", image+".iso"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(iso); err != nil {
		t.Fatalf("%s missing: run make iso (qx-image build images/%s.toml)", iso, map[string]string{quantix.ImageQuantixOS: "quantix-os", quantix.ImageQvDC: "qvdc"}[image])
	}
	med, err := OpenMedium(iso)
	if err != nil {
		t.Fatal(err)
	}
	defer med.Close()
	if _, err := ReadSource(med); err != nil {
		t.Fatalf("%s cannot be installed from: %v: rebuild it with make iso once images/ ships qx-install, mkfs.ext4 and %s", iso, err, MediumBootDir)
	}
	return iso
}

// extract copies the ISO's kernel and initramfs to files for a direct kernel boot.
func extract(t *testing.T, iso string) (kernel, initrd string) {
	med, err := OpenMedium(iso)
	if err != nil {
		t.Fatal(err)
	}
	defer med.Close()
	dir := t.TempDir()
	for name, dst := range map[string]*string{MediumKernel: &kernel, MediumInitrd: &initrd} {
		b, err := med.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		*dst = filepath.Join(dir, filepath.Base(name))
		if err := os.WriteFile(*dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd
}

func blankDisk(t *testing.T, size int64) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func answerDisk(t *testing.T, answer string) string {
	p := filepath.Join(t.TempDir(), "answer.img")
	if err := build.ConfigDisk(p, quantix.LabelInstall, 0, map[string][]byte{"install.toml": []byte(answer)}); err != nil {
		t.Fatal(err)
	}
	return p
}

// runInstaller boots the image's kernel with quantix.install=install.toml, the ISO
// as a CD, the target disks and the answer disk.
func runInstaller(t *testing.T, name, iso string, disks []string, answer string) (*vm.Machine, string) {
	kernel, initrd := extract(t, iso)
	ans := answerDisk(t, answer)
	var ds []vm.Disk
	for _, d := range disks {
		ds = append(ds, vm.Disk{Path: d})
	}
	ds = append(ds, vm.Disk{Path: ans})
	m := vm.Start(t, vm.Config{
		Name: name, Kernel: kernel, Initrd: initrd, MemoryMB: 2048,
		Append: "console=ttyS0,115200 panic=-1 scsi_mod.scan=sync quantix.install=install.toml",
		Disks:  ds,
		ExtraArgs: []string{"-drive", "file=" + iso + ",format=raw,if=none,id=cd0,media=cdrom,readonly=on",
			"-device", "ide-cd,drive=cd0"},
	})
	return m, ans
}

func isoAnswer(image, hostname, target string, wipe bool) string {
	s := fmt.Sprintf("hostname = %q\nwipe = %v\nafter = \"poweroff\"\n[target]\n%s\n[network]\nmode = \"dhcp\"\n[network.dhcp]\ntimeout = \"3s\"\nfallback = \"link-local\"\n", hostname, wipe, target)
	if image == quantix.ImageQuantixOS {
		s += "[agent]\ncontrol_plane = \"http://10.0.2.2:8080\"\njoin_token = \"join-token-0123456789\"\n"
	} else {
		s += "[vdc]\nadmin_token = \"admin-token-0123456789\"\n"
	}
	return s
}

func TestISOInstall(t *testing.T) {
	for _, image := range []string{quantix.ImageQuantixOS, quantix.ImageQvDC} {
		t.Run(image, func(t *testing.T) {
			iso := testISO(t, image)
			target := blankDisk(t, 4<<30)
			hostname := "installed-" + strings.ReplaceAll(image, "-", "")
			t0 := time.Now()
			m, ans := runInstaller(t, "install-"+image, iso, []string{target}, isoAnswer(image, hostname, "only_empty = true", false))
			mk := m.WaitMarker(t, MarkerInstallComplete, 10*time.Minute, "hostname", hostname)
			m.WaitExit(t, 2*time.Minute)
			t.Logf("%s: install took %s in the guest, %.1fs from QEMU start to power-off (%s)", image, mk.Get("seconds"), time.Since(t0).Seconds(), m.Accel())
			if log, err := exec.Command("debugfs", "-R", "cat /qx-install.log", ans).Output(); err != nil || !strings.Contains(string(log), "Install complete") {
				t.Errorf("qx-install.log on the answer disk: %v\n%s", err, log)
			}
			for i, fw := range []vm.Firmware{vm.BIOS, vm.UEFI, vm.UEFI} {
				b0 := time.Now()
				b := vm.Start(t, vm.Config{Name: fmt.Sprintf("installed-%s-%d-%s", image, i, fw), Firmware: fw, MemoryMB: 2048,
					BootDisk: &vm.Disk{Path: target}, NICs: []vm.NIC{{Hub: vm.NewHub(t, vm.HubConfig{})}}})
				// The hostname line proves init mounted this disk's QUANTIX-CFG.
				b.Expect(t, "init: hostname "+hostname+" (from /quantix/hostname)", 3*time.Minute)
				if image == quantix.ImageQvDC {
					// Quantix OS's agent waits for a vDC this VM has no network to, so
					// only QvDC is expected to reach boot-complete alone.
					mk := b.WaitMarker(t, quantix.MarkerBootComplete, 5*time.Minute)
					t.Logf("%s boot %d (%s): boot-complete at %s s guest uptime, %.1fs wall", image, i, fw, mk.Get("seconds"), time.Since(b0).Seconds())
				}
				b.PowerOff(t, 2*time.Minute)
			}
		})
	}
}

// A disk holding data without wipe = true is refused by the image's installer and
// left byte-identical; the failure is a fatal marker, not a reboot.
func TestISOInstallRefusesDataDisk(t *testing.T) {
	iso := testISO(t, quantix.ImageQuantixOS)
	target := blankDisk(t, 4<<30)
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", "-L", "precious", target).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s (apt-get install e2fsprogs)", err, out)
	}
	before := fileSHA(t, target)
	m, _ := runInstaller(t, "install-refused", iso, []string{target}, isoAnswer(quantix.ImageQuantixOS, "refused", `path = "/dev/vda"`, false))
	_, err := m.AwaitMarker(MarkerInstallComplete, 10*time.Minute)
	var me *quantix.MarkerError
	if !errors.As(err, &me) || !strings.Contains(me.Marker.Get("err"), "set wipe = true") {
		t.Fatalf("installer on a disk holding ext4 without wipe: %v, want a fatal marker saying set wipe = true", err)
	}
	m.Kill(t)
	if after := fileSHA(t, target); after != before {
		t.Fatalf("refused disk changed: sha256 %s -> %s", before, after)
	}
}

// A second disk carrying an earlier install's QUANTIX-* labels, attached before
// the installed disk (it is vda), does not change which partitions the installed
// system mounts: init follows quantix.disk=<GUID> to the disk it booted from.
func TestISOInstallIgnoresStaleDisk(t *testing.T) {
	iso := testISO(t, quantix.ImageQuantixOS)
	// The stale disk: a complete earlier install (made on the host) with another hostname.
	s := fakeSystem(t, fakeDisk{name: "vda", size: MinDiskSize, serial: "QX-SERIAL-1"})
	if _, _, _, err := install(t, s, quantix.ImageQuantixOS, strings.Replace(testAnswerOS, `"Node-7"`, `"stale-node"`, 1)); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.DevDir, "vda")
	target := blankDisk(t, 4<<30)
	m, _ := runInstaller(t, "install-stale", iso, []string{stale, target}, isoAnswer(quantix.ImageQuantixOS, "fresh-node", `path = "/dev/vdb"`, false))
	m.WaitMarker(t, MarkerInstallComplete, 10*time.Minute, "hostname", "fresh-node")
	// The stale labels were reported (before the marker, so look back, not ahead).
	if len(m.Find(vm.Contains("carries QUANTIX-CFG"))) == 0 {
		t.Errorf("the installer did not report the stale disk's QUANTIX-CFG label")
	}
	m.WaitExit(t, 2*time.Minute)
	b := vm.Start(t, vm.Config{Name: "installed-with-stale", MemoryMB: 2048,
		BootDisk: &vm.Disk{Path: target}, Disks: []vm.Disk{{Path: stale, Snapshot: true}}})
	b.Expect(t, "init: hostname fresh-node (from /quantix/hostname)", 3*time.Minute)
}
