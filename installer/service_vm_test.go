package installer

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/images/spec"
	"github.com/quantix/quantix/tests/vm"
)

// testVolume is the volume label of the service-mode test image and its medium.
const testVolume = "QXINSTTEST"

// TestServiceModeInVM runs qx-install the way the install boot entry does, inside
// a real Quantix OS initramfs, before images/ and init carry the wiring: the test
// builds a variant of images/quantix-os.toml whose only service is qx-install
// (started by qx-init, reading quantix.install= from the kernel command line) and
// which ships mkfs.ext4, and a boot medium ISO labelled like it holding the same
// kernel and initramfs plus the BuildBootFiles files. The installer must find the
// QUANTIX-INSTALL disk and the medium by label, install onto the blank disk, write
// qx-install.log next to the answer file and power off through qx-init; the disk
// then boots on SeaBIOS with the answer file's hostname.
func TestServiceModeInVM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image and boots it in QEMU: skipped with -short")
	}
	for _, image := range []string{quantix.ImageQuantixOS, quantix.ImageQvDC} {
		t.Run(image, func(t *testing.T) { serviceMode(t, image) })
	}
}

func serviceMode(t *testing.T, image string) {
	dir := t.TempDir()
	img, err := spec.Load(filepath.Join("..", "images", image+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	img.VolumeLabel = testVolume
	// The images ship qx-install now; older specs get it added.
	if !slices.Contains(img.Initramfs.Commands, "./installer/cmd/qx-install") {
		img.Initramfs.Commands = append(img.Initramfs.Commands, "./installer/cmd/qx-install")
	}
	hasMkfs := false
	for _, f := range img.Initramfs.Files {
		hasMkfs = hasMkfs || strings.HasSuffix(f, ":usr/sbin/mkfs.ext4")
	}
	if !hasMkfs {
		img.Initramfs.Files = append(img.Initramfs.Files, "/usr/sbin/mke2fs:usr/sbin/mkfs.ext4")
	}
	img.Services = []quantix.Service{{Name: ServiceName, Command: "/bbin/qx-install", Args: []string{"--mkfs", "/usr/sbin/mkfs.ext4"}, Ready: quantix.ReadyOnStart}}
	var sb bytes.Buffer
	if err := toml.NewEncoder(&sb).Encode(img); err != nil {
		t.Fatal(err)
	}
	specFile := filepath.Join(dir, "installtest.toml")
	if err := os.WriteFile(specFile, sb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	repo, _ := filepath.Abs("..")
	b, err := build.New(build.Config{Spec: specFile, Repo: repo, OutDir: filepath.Join(dir, "out")}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("image build: %v", err)
	}
	res, err := b.Build(context.Background())
	if err != nil {
		t.Fatalf("image build: %v", err)
	}
	kernel, initrd := extract(t, res.ISO)

	// The boot medium: an ISO9660 filesystem labelled like the image.
	root := filepath.Join(dir, "medium")
	if err := BuildBootFiles(filepath.Join(root, filepath.FromSlash(MediumBootDir))); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{kernel: MediumKernel, initrd: MediumInitrd} {
		data, _ := os.ReadFile(src)
		if err := os.WriteFile(filepath.Join(root, filepath.FromSlash(dst)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mediumISO := filepath.Join(dir, "medium.iso")
	makeISO(t, root, mediumISO, testVolume)

	target := blankDisk(t, 3<<30)
	answer := isoAnswer(image, "service-node", "only_empty = true", false, offlineToken)
	ans := answerDisk(t, answer)
	m := vm.Start(t, vm.Config{
		Name: "service-mode-" + image, Kernel: kernel, Initrd: initrd, MemoryMB: 1536,
		Append:  "console=ttyS0,115200 panic=-1 scsi_mod.scan=sync quantix.install=install.toml",
		Disks:   []vm.Disk{{Path: target}, {Path: ans}},
		Devices: []vm.Device{vm.CD{Path: mediumISO}},
	})
	mk := m.WaitMarker(t, quantix.MarkerInstallComplete, 10*time.Minute, "hostname", "service-node")
	m.WaitExit(t, 2*time.Minute)
	t.Logf("%s: install in the guest: %s s (%s)", image, mk.Get("seconds"), m.Accel())
	// The guest kernel wrote the answer disk: read it with e2fsprogs (go-diskfs
	// rejects the inode checksums of kernel-written ext4).
	if out, err := exec.Command("e2fsck", "-fn", ans).CombinedOutput(); err != nil {
		t.Errorf("e2fsck of the answer disk after the install: %v\n%s", err, out)
	}
	log, err := exec.Command("debugfs", "-R", "cat /qx-install.log", ans).Output()
	if err != nil {
		t.Fatalf("debugfs (apt-get install e2fsprogs): %v", err)
	}
	if !strings.Contains(string(log), "Install complete") || !strings.Contains(string(log), "quantix.install=install.toml") {
		t.Errorf("qx-install.log on the answer disk lacks the run:\n%s", log)
	}
	bt := vm.Start(t, vm.Config{Name: "service-installed-" + image, MemoryMB: 1536, BootDisk: &vm.Disk{Path: target}})
	bt.Expect(t, "init: hostname service-node (from /quantix/hostname)", 3*time.Minute)
	bc := bt.WaitMarker(t, quantix.MarkerBootComplete, 3*time.Minute)
	t.Logf("%s: installed disk (SeaBIOS, GRUB): boot-complete at %s s guest uptime (%s)", image, bc.Get("seconds"), bt.Accel())
}

// makeISO writes folder root as a plain ISO9660 image labelled label.
func makeISO(t *testing.T, root, out, label string) {
	var total int64
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			total += info.Size() + 2048
		}
		return nil
	})
	d, err := diskfs.Create(out, total+4<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.LogicalBlocksize = 2048
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{FSType: filesystem.TypeISO9660, VolumeLabel: label, WorkDir: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := fsys.(*iso9660.FileSystem).Finalize(iso9660.FinalizeOptions{VolumeIdentifier: label}); err != nil {
		t.Fatal(err)
	}
}
