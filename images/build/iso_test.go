package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat12"

	"github.com/quantix/quantix/images/spec"
)

var testBoot = spec.Boot{
	Cmdline: "panic=10",
	Timeout: "2s",
	Entries: []spec.BootEntry{
		{ID: "normal", Title: "Test OS", Cmdline: "console=ttyS0,115200 console=tty0", Default: true},
		{ID: "serial", Title: "Test OS (serial console)", Cmdline: "console=tty0 console=ttyS0,115200"},
		{ID: "install", Title: "Install Test OS", Cmdline: "quantix.install=interactive"},
	},
}

// makeTestISO builds a hybrid ISO around a dummy kernel and initramfs: the layout
// does not depend on what they hold.
func makeTestISO(t *testing.T, dir string, epoch int64) string {
	t.Helper()
	if err := checkBootFiles(); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte("kernel"), 100000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, bytes.Repeat([]byte("initrd"), 50000), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "test.iso")
	if _, err := MakeISO(ISOConfig{
		Out: out, Name: "test-os", Version: "1.0", VolumeLabel: "QXTEST", Boot: testBoot,
		Kernel: kernel, Initrd: initrd, WorkDir: filepath.Join(dir, "work"), SourceDateEpoch: epoch,
	}); err != nil {
		t.Fatalf("MakeISO: %v", err)
	}
	return out
}

// TestHybridLayout parses back the MBR, both GPTs and the El Torito catalog of a
// built ISO and checks that they point at the boot files.
func TestHybridLayout(t *testing.T) {
	iso := makeTestISO(t, t.TempDir(), 1700000000)
	l, err := ReadLayout(iso)
	if err != nil {
		t.Fatalf("ReadLayout: %v", err)
	}
	if l.Size%2048 != 0 {
		t.Errorf("size %d is not whole 2048-byte blocks", l.Size)
	}
	mbrCode, err := os.ReadFile(filepath.Join(isolinuxDir, "isohdpfx.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !l.MBRSignature || !bytes.Equal(l.MBRCode, mbrCode) {
		t.Errorf("MBR: signature %v, boot code matches isohdpfx.bin: %v", l.MBRSignature, bytes.Equal(l.MBRCode, mbrCode))
	}
	if got, want := l.MBRBootLBA, uint64(l.ElTorito.BIOSLBA)*4; got != want {
		t.Errorf("MBR isolinux.bin sector = %d, want %d (El Torito BIOS entry block %d x 4)", got, want, l.ElTorito.BIOSLBA)
	}
	lastLBA := uint64(l.Size/512 - 1)
	if p := l.MBRParts[0]; p.Type != 0xee || p.Start != 1 || uint64(p.Size) != lastLBA {
		t.Errorf("MBR partition 1 = %+v, want protective 0xee from 1, %d sectors", p, lastLBA)
	}
	for i, p := range l.MBRParts[1:] {
		if p.Type != 0 {
			t.Errorf("MBR partition %d = %+v, want empty", i+2, p)
		}
	}
	if l.GPT.MyLBA != 1 || l.GPT.AltLBA != lastLBA || l.BackupGPT.MyLBA != lastLBA || l.BackupGPT.AltLBA != 1 {
		t.Errorf("GPT headers: primary %d->%d, backup %d->%d; want 1<->%d", l.GPT.MyLBA, l.GPT.AltLBA, l.BackupGPT.MyLBA, l.BackupGPT.AltLBA, lastLBA)
	}
	if l.GPT.FirstUsable != 34 || l.GPT.LastUsable != lastLBA-33 {
		t.Errorf("GPT usable %d-%d, want 34-%d", l.GPT.FirstUsable, l.GPT.LastUsable, lastLBA-33)
	}
	if len(l.GPTParts) != 1 || !IsESP(l.GPTParts[0].Type) {
		t.Fatalf("GPT partitions = %+v, want one EFI System Partition", l.GPTParts)
	}
	esp := l.GPTParts[0]
	if esp.First != uint64(l.ElTorito.EFILBA)*4 {
		t.Errorf("ESP starts at sector %d, want the El Torito EFI image at %d", esp.First, l.ElTorito.EFILBA*4)
	}
	// The ESP must be the FAT image holding the GRUB loader.
	f, err := os.Open(iso)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := fat12.Read(file.New(f, true), int64(esp.Last-esp.First+1)*512, int64(esp.First)*512, 512)
	if err != nil {
		t.Fatalf("read ESP as FAT: %v", err)
	}
	r, err := fsys.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_RDONLY)
	if err != nil {
		t.Fatalf("ESP: %v", err)
	}
	efi, _ := io.ReadAll(r)
	if len(efi) < 100000 || string(efi[:2]) != "MZ" {
		t.Errorf("ESP BOOTX64.EFI: %d bytes starting %q, want a PE image", len(efi), efi[:2])
	}
	// The ISO9660 side: the label, the boot menu, the kernel and initramfs.
	if got := strings.TrimRight(isoVolumeID(t, f), " "); got != "QXTEST" {
		t.Errorf("volume label = %q, want QXTEST (space padded)", got)
	}
	cfg := isoFile(t, f, "isolinux/isolinux.cfg")
	for _, want := range []string{"DEFAULT normal", "LABEL install", "APPEND panic=10 quantix.install=interactive", "INITRD /boot/initrd.img", "TIMEOUT 20", "SERIAL 0 115200", "ALLOWOPTIONS 0", "NOESCAPE 1"} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("isolinux.cfg lacks %q:\n%s", want, cfg)
		}
	}
	if got := isoFile(t, f, "boot/initrd.img"); !bytes.Equal(got, bytes.Repeat([]byte("initrd"), 50000)) {
		t.Errorf("boot/initrd.img: %d bytes, not the initramfs given", len(got))
	}
	for _, p := range []string{"boot/vmlinuz", "isolinux/ldlinux.c32", "isolinux/menu.c32", "isolinux/isolinux.bin"} {
		if len(isoFile(t, f, p)) == 0 {
			t.Errorf("ISO: %s is empty", p)
		}
	}
}

func isoVolumeID(t *testing.T, r io.ReaderAt) string {
	pvd := make([]byte, 2048)
	if _, err := r.ReadAt(pvd, 16*2048); err != nil {
		t.Fatal(err)
	}
	return string(pvd[40:72])
}

// isoFile reads a file from a plain ISO9660 tree (names compared without case
// and without the ";1" version), the way ISOLINUX and GRUB find them.
func isoFile(t *testing.T, r io.ReaderAt, p string) []byte {
	t.Helper()
	pvd := make([]byte, 2048)
	if _, err := r.ReadAt(pvd, 16*2048); err != nil {
		t.Fatal(err)
	}
	rec := pvd[156 : 156+34]
	lba, size := binary.LittleEndian.Uint32(rec[2:]), binary.LittleEndian.Uint32(rec[10:])
	for _, part := range strings.Split(p, "/") {
		dir := make([]byte, size)
		if _, err := r.ReadAt(dir, int64(lba)*2048); err != nil {
			t.Fatal(err)
		}
		found := false
		for off := 0; off < len(dir); {
			n := int(dir[off])
			if n == 0 { // rest of this block is padding
				off = (off/2048 + 1) * 2048
				continue
			}
			e := dir[off : off+n]
			name := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(string(e[33:33+int(e[32])]), ";1"), "."))
			if name == part {
				lba, size, found = binary.LittleEndian.Uint32(e[2:]), binary.LittleEndian.Uint32(e[10:]), true
				break
			}
			off += n
		}
		if !found {
			t.Fatalf("ISO has no %s (looking for %q)", p, part)
		}
	}
	data := make([]byte, size)
	if _, err := r.ReadAt(data, int64(lba)*2048); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestGrubCfg(t *testing.T) {
	img := &spec.Image{Name: "test-os", Version: "1", VolumeLabel: "QXTEST", Boot: testBoot}
	got := grubCfg(img)
	for _, want := range []string{
		"search --no-floppy --set=root --label QXTEST",
		"set default=normal", "set timeout=2",
		"set superusers=\"root\"",
		"menuentry 'Install Test OS' --id install --unrestricted {\n  linux /boot/vmlinuz panic=10 quantix.install=interactive\n  initrd /boot/initrd.img\n}",
		"menuentry 'Test OS (serial console)' --id serial",
		"terminal_output console serial",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("grub.cfg lacks %q:\n%s", want, got)
		}
	}
}

// TestMakeISOReproducible builds the same ISO twice (fresh work folders, one second
// apart in wall time) and wants the same bytes; another SOURCE_DATE_EPOCH must
// change them.
func TestMakeISOReproducible(t *testing.T) {
	sum := func(epoch int64) [32]byte {
		b, err := os.ReadFile(makeTestISO(t, t.TempDir(), epoch))
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	a, b := sum(1700000000), sum(1700000000)
	if a != b {
		t.Errorf("two builds differ: %x vs %x", a, b)
	}
	if c := sum(1800000000); c == a {
		t.Errorf("SOURCE_DATE_EPOCH does not reach the ISO")
	}
}

func TestMakeHybridRejects(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.iso")
	os.WriteFile(p, make([]byte, 40*2048), 0o644)
	if err := MakeHybrid(p, make([]byte, 100), 0, "x"); err == nil || !strings.Contains(err.Error(), "432") {
		t.Errorf("MakeHybrid(short boot code) = %v", err)
	}
	if err := MakeHybrid(p, make([]byte, 432), 0, "x"); err == nil || !strings.Contains(err.Error(), "El Torito") {
		t.Errorf("MakeHybrid(no El Torito) = %v", err)
	}
	os.WriteFile(p, append([]byte{1}, make([]byte, 40*2048-1)...), 0o644)
	if err := MakeHybrid(p, make([]byte, 432), 0, "x"); err == nil || !strings.Contains(err.Error(), "system area") {
		t.Errorf("MakeHybrid(used system area) = %v", err)
	}
}
