package installer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/installer/medium"
)

// singleSlotDisk installs onto an image file and then rewrites its ESP as
// qx-install wrote it before A/B slots (testdata/single-slot-grub.cfg, the kernel
// and initramfs under boot/), leaving QUANTIX-CFG and QUANTIX-DATA as installed.
func singleSlotDisk(t *testing.T) (img string, res *Result) {
	t.Helper()
	s := fakeSystem(t, fakeDisk{Name: "vda", Size: MinDiskSize, Serial: "QX-SERIAL-1"})
	res, _, _, err := install(t, s, quantix.ImageQuantixOS, testAnswerOS)
	if err != nil {
		t.Fatal(err)
	}
	img = filepath.Join(s.DevDir, "vda")
	src, err := ReadSource(medium.Dir(testMedium(t)))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile("testdata/single-slot-grub.cfg")
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.ReplaceAll(string(cfg), "@GUID@", strings.ToLower(res.Plan.DiskGUID)))
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadWrite))
	if err != nil {
		t.Fatal(err)
	}
	esp := res.Plan.Part(quantix.LabelEFI)
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: esp.Number, FSType: filesystem.TypeFat32, VolumeLabel: quantix.LabelEFI})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeESPFiles(fsys, []espFile{{ESPInstalled, []byte("installed\n")}, {ESPEFI, src.EFI},
		{ESPGrubCfg, cfg}, {ESPLegacyKernel, src.Kernel}, {ESPLegacyInitrd, src.Initrd}}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fixFAT(f, esp.Start); err != nil {
		t.Fatal(err)
	}
	return img, res
}

func partSHA256(t *testing.T, img string, q PlannedPart) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, q.Start, q.Size)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fsckESP copies the ESP out of the image and runs fsck.fat -n on it.
func fsckESP(t *testing.T, img string, q PlannedPart) string {
	t.Helper()
	b, _ := exec.Command("fsck.fat", "-n", sparseCopy(t, img, q.Start, q.Size)).CombinedOutput()
	return string(b)
}

func TestConvertSingleSlot(t *testing.T) {
	if testing.Short() {
		t.Skip("installs onto a disk image: skipped with -short")
	}
	img, res := singleSlotDisk(t)
	cfgPart, dataPart := res.Plan.Part(quantix.LabelConfig), res.Plan.Part(quantix.LabelData)
	cfgSum, dataSum := partSHA256(t, img, cfgPart), partSHA256(t, img, dataPart)
	src, err := ReadSource(medium.Dir(testMedium(t)))
	if err != nil {
		t.Fatal(err)
	}

	c, err := ConvertSingleSlot(img, src, quantix.ImageQuantixOS, "1.0.0", testLog(t))
	if err != nil {
		t.Fatalf("ConvertSingleSlot: %v", err)
	}
	wantCmdline := "console=ttyS0,115200 panic=-1 quantix.disk=" + strings.ToLower(res.Plan.DiskGUID)
	if c.Title != "Quantix OS" || c.Cmdline != wantCmdline {
		t.Errorf("converted title %q cmdline %q, want Quantix OS, %q", c.Title, c.Cmdline, wantCmdline)
	}
	if partSHA256(t, img, cfgPart) != cfgSum || partSHA256(t, img, dataPart) != dataSum {
		t.Errorf("QUANTIX-CFG or QUANTIX-DATA changed in the conversion")
	}

	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	esp, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{
		quantix.ESPSlotFile("a", quantix.SlotKernel): src.Kernel,
		quantix.ESPSlotFile("a", quantix.SlotInitrd): src.Initrd,
		ESPEFI:     src.EFI,
		ESPGrubCfg: []byte(GrubConfig("Quantix OS", wantCmdline)),
	} {
		got, err := readFS(esp, "/"+name)
		if err != nil || sum(got) != sum(want) {
			t.Errorf("after the conversion %s: sha256 %s, %v; want %s", name, sum(got), err, sum(want))
		}
	}
	mb, err := readFS(esp, "/"+quantix.ESPSlotFile("a", quantix.SlotManifest))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := quantix.ParseSlotManifest(mb); err != nil || m.Version != "1.0.0" || m.KernelSHA256 != sum(src.Kernel) {
		t.Errorf("slot a manifest = %+v, %v", m, err)
	}
	for _, name := range []string{quantix.ESPEnv, quantix.ESPEnvBackup} {
		b, err := readFS(esp, "/"+name)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := bootenv.Decode(b); err != nil || s != bootenv.Initial() {
			t.Errorf("%s = %+v, %v; want slot a good", name, s, err)
		}
	}
	for _, name := range []string{ESPLegacyKernel, ESPLegacyInitrd} {
		if _, err := readFS(esp, "/"+name); err == nil {
			t.Errorf("%s is still on the ESP", name)
		}
	}
	// Only the two clusters go-diskfs's Remove leaves allocated may be reported.
	fsck := fsckESP(t, img, res.Plan.Part(quantix.LabelEFI))
	for _, l := range strings.Split(strings.TrimSpace(fsck), "\n") {
		switch {
		case strings.HasPrefix(l, "fsck.fat "), l == "", strings.HasPrefix(l, "Reclaimed 2 unused clusters"),
			strings.HasPrefix(l, "Free cluster summary"), l == "Leaving filesystem unchanged.", strings.Contains(l, " files, "):
		default:
			t.Errorf("fsck.fat -n after the conversion reports %q:\n%s", l, fsck)
		}
	}

	if _, err := ConvertSingleSlot(img, src, quantix.ImageQuantixOS, "1.0.0", testLog(t)); !errors.Is(err, ErrAlreadySlotted) {
		t.Errorf("second ConvertSingleSlot = %v, want ErrAlreadySlotted", err)
	}
}

// A disk written by today's installer is already slotted; a blank one is refused.
func TestConvertRefuses(t *testing.T) {
	if testing.Short() {
		t.Skip("installs onto a disk image: skipped with -short")
	}
	s := fakeSystem(t, fakeDisk{Name: "vda", Size: MinDiskSize, Serial: "QX-SERIAL-1"})
	if _, _, _, err := install(t, s, quantix.ImageQuantixOS, testAnswerOS); err != nil {
		t.Fatal(err)
	}
	src, err := ReadSource(medium.Dir(testMedium(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ConvertSingleSlot(filepath.Join(s.DevDir, "vda"), src, quantix.ImageQuantixOS, "1", testLog(t)); !errors.Is(err, ErrAlreadySlotted) {
		t.Errorf("ConvertSingleSlot(A/B disk) = %v, want ErrAlreadySlotted", err)
	}
	blank := filepath.Join(t.TempDir(), "blank.img")
	os.WriteFile(blank, nil, 0o644)
	os.Truncate(blank, 64<<20)
	if _, err := ConvertSingleSlot(blank, src, quantix.ImageQuantixOS, "1", testLog(t)); err == nil || !strings.Contains(err.Error(), "partition table") {
		t.Errorf("ConvertSingleSlot(blank) = %v, want a partition table error", err)
	}
}
