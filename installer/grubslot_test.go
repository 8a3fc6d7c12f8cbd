package installer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
)

// grub-script-check (Debian's grub-common) parses grub.cfg as GRUB does.
func TestGrubConfigScriptCheck(t *testing.T) {
	if _, err := exec.LookPath("grub-script-check"); err != nil {
		t.Fatal("grub-script-check not found: run make deps (apt-get install grub-common)")
	}
	cfg := filepath.Join(t.TempDir(), "grub.cfg")
	if err := os.WriteFile(cfg, []byte(GrubConfig("Quantix OS", "console=ttyS0,115200 panic=10 quantix.disk=x")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("grub-script-check", "--verbose", cfg).CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check: %v\n%s", err, out)
	}
}

// grubEmu runs the slot choice in Debian's grub-emu (the real GRUB script engine,
// fat and loadenv modules) against the FAT image esp as (hd0), and returns the
// chosen default and fallback entries and GRUB's output.
func grubEmu(t *testing.T, esp string) (def, fallback, out string) {
	t.Helper()
	dir := t.TempDir()
	prefix := filepath.Join(dir, "prefix")
	if err := os.MkdirAll(prefix, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(grubEmuDir, filepath.Join(prefix, "x86_64-emu")); err != nil {
		t.Fatal(err)
	}
	cfg := "set root=hd0\n" + grubSlotScript() + "echo \"QX-CHOICE default=$default fallback=$fallback\"\nhalt\n"
	if err := os.WriteFile(filepath.Join(prefix, "grub.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	devmap := filepath.Join(dir, "device.map")
	if err := os.WriteFile(devmap, []byte("(hd0) "+esp+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "grub-emu", "-d", prefix, "-m", devmap, "-r", "host")
	b, err := cmd.CombinedOutput()
	out = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]").ReplaceAllString(string(b), "")
	if err != nil {
		t.Fatalf("grub-emu: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`QX-CHOICE default=(\S+) fallback=(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("grub-emu printed no choice:\n%s", out)
	}
	return m[1], m[2], out
}

// grubEmuDir holds grub-emu's modules (Debian: grub-emu).
var grubEmuDir = "/usr/lib/grub/x86_64-emu"

// fatESP is a whole-disk FAT32 image made by go-diskfs, as the installer makes
// QUANTIX-EFI, with the environment's two copies holding s (none when s is nil).
func fatESP(t *testing.T, s *bootenv.State) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "esp.img")
	d, err := diskfs.Create(img, 64<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeFat32, VolumeLabel: quantix.LabelEFI})
	if err != nil {
		t.Fatal(err)
	}
	files := []espFile{{ESPInstalled, []byte("installed\n")}}
	if s != nil {
		b, err := s.Encode()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, espFile{quantix.ESPEnv, b}, espFile{quantix.ESPEnvBackup, b})
	}
	if err := writeESPFiles(fsys, files); err != nil {
		t.Fatal(err)
	}
	return img
}

// readESPEnv reads both copies back with go-diskfs.
func readESPEnv(t *testing.T, img string) (primary, backup bootenv.State, perr, berr error) {
	t.Helper()
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) (bootenv.State, error) {
		b, err := readFS(fsys, "/"+name)
		if err != nil {
			return bootenv.State{}, err
		}
		return bootenv.Decode(b)
	}
	primary, perr = read(quantix.ESPEnv)
	backup, berr = read(quantix.ESPEnvBackup)
	return
}

// The slot choice in real GRUB (grub-emu) on a FAT image: a trial takes one try
// per boot, saved by save_env into both copies on FAT, and the good slot boots
// once the tries are gone; a committed slot boots without a write; a corrupt first
// copy is read from the second; without an environment slot a boots, said on the
// console.
func TestGrubSlotChoiceInGrubEmu(t *testing.T) {
	if _, err := exec.LookPath("grub-emu"); err != nil {
		t.Fatal("grub-emu not found: run make deps (apt-get install grub-emu)")
	}
	if _, err := os.Stat(filepath.Join(grubEmuDir, "loadenv.mod")); err != nil {
		t.Fatalf("%s has no loadenv.mod: apt-get install grub-emu", grubEmuDir)
	}
	staged := bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: quantix.SlotMaxTries}}
	esp := fatESP(t, &staged)
	for left := quantix.SlotMaxTries - 1; left >= 0; left-- {
		def, fb, out := grubEmu(t, esp)
		if def != "quantix-b-trial" || fb != "quantix-a" || !strings.Contains(out, quantix.MarkerPrefix+quantix.MarkerBootSlot+" slot=b trial=1") {
			t.Fatalf("trial boot chose %s (fallback %s), want quantix-b-trial (quantix-a):\n%s", def, fb, out)
		}
		p, b, perr, berr := readESPEnv(t, esp)
		if perr != nil || berr != nil || p.B.Tries != left || b.B.Tries != left || !p.A.OK {
			t.Fatalf("after a trial boot: primary %+v (%v), backup %+v (%v); want b with %d tries left in both", p, perr, b, berr, left)
		}
	}
	if def, fb, out := grubEmu(t, esp); def != "quantix-a" || fb != "quantix-b" {
		t.Fatalf("after the tries ran out: %s (fallback %s), want quantix-a:\n%s", def, fb, out)
	}

	// A good slot boots without a write.
	good := bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{OK: true}}
	esp = fatESP(t, &good)
	if def, _, out := grubEmu(t, esp); def != "quantix-b" {
		t.Fatalf("committed b: chose %s:\n%s", def, out)
	}
	if p, _, err, _ := readESPEnv(t, esp); err != nil || p != good {
		t.Errorf("a good slot's boot changed the environment: %+v, %v", p, err)
	}

	// The first copy corrupt: the backup decides and takes the try.
	esp = fatESP(t, &staged)
	d, err := diskfs.Open(esp, diskfs.WithOpenMode(diskfs.ReadWrite))
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeESPFiles(fsys, []espFile{{quantix.ESPEnv, []byte(strings.Repeat("x", bootenv.Size))}}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	def, _, out := grubEmu(t, esp)
	if def != "quantix-b-trial" || !strings.Contains(out, "env=/"+quantix.ESPEnvBackup) {
		t.Fatalf("corrupt first copy: chose %s:\n%s", def, out)
	}
	if _, b, _, berr := readESPEnv(t, esp); berr != nil || b.B.Tries != quantix.SlotMaxTries-1 {
		t.Errorf("backup after the trial boot = %+v, %v; want %d tries left", b, berr, quantix.SlotMaxTries-1)
	}

	// No environment at all.
	if def, fb, out := grubEmu(t, fatESP(t, nil)); def != "quantix-a" || fb != "quantix-b" || !strings.Contains(out, "no valid boot slot environment") {
		t.Errorf("no environment: chose %s (fallback %s):\n%s", def, fb, out)
	}
}

// The whole grub.cfg in grub-emu: the menu entry GRUB starts is the chosen slot's
// (default resolves by --id). grub-emu has no linux loader, so the boot stops
// there; the test stops grub-emu once the entry has started.
func TestGrubConfigMenuInGrubEmu(t *testing.T) {
	if _, err := exec.LookPath("grub-emu"); err != nil {
		t.Fatal("grub-emu not found: run make deps (apt-get install grub-emu)")
	}
	staged := bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: quantix.SlotMaxTries}}
	for _, c := range []struct {
		s     bootenv.State
		entry string
	}{
		{staged, "Quantix OS (slot b, trial)"},
		{bootenv.Initial(), "Quantix OS (slot a)"},
	} {
		esp := fatESP(t, &c.s)
		dir := t.TempDir()
		prefix := filepath.Join(dir, "prefix")
		os.MkdirAll(prefix, 0o755)
		if err := os.Symlink(grubEmuDir, filepath.Join(prefix, "x86_64-emu")); err != nil {
			t.Fatal(err)
		}
		cfg := "set root=hd0\n" + GrubConfig("Quantix OS", "console=ttyS0 quantix.disk=x")
		os.WriteFile(filepath.Join(prefix, "grub.cfg"), []byte(cfg), 0o644)
		devmap := filepath.Join(dir, "device.map")
		os.WriteFile(devmap, []byte("(hd0) "+esp+"\n"), 0o644)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "grub-emu", "-d", prefix, "-m", devmap, "-r", "host")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var seen strings.Builder
		want := "Booting `" + c.entry + "'"
		buf := make([]byte, 4096)
		for !strings.Contains(seen.String(), want) {
			n, err := stdout.Read(buf)
			seen.Write(buf[:n])
			if err != nil {
				break
			}
		}
		cancel()
		cmd.Wait()
		out := regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]").ReplaceAllString(seen.String(), " ")
		if !strings.Contains(out, want) {
			t.Errorf("grub-emu did not start %q:\n%s", c.entry, out)
		}
	}
}
