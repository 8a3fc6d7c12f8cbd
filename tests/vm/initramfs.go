package vm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestInitModules are the kernel modules in the self-test initramfs (with their
// dependencies): virtio PCI and net for hub NICs, virtio-rng so getrandom does not
// block under TCG, the ACPI button with evdev for QMP system_powerdown, and
// virtio-blk plus IDE disks for disk attachment tests.
var TestInitModules = []string{"virtio_pci", "virtio_net", "virtio_rng", "button", "evdev",
	"virtio_blk", "ata_piix", "sd_mod"}

var (
	initramfsOnce sync.Once
	initramfsPath string
	initramfsErr  error
)

// TestInitramfs returns a newc cpio holding cmd/testinit as /init plus
// TestInitModules for the kernel of TestKernel. It is built once per process and
// cached by content in CacheDir. Boot it with TestKernel's Vmlinuz; testinit's
// behaviour is chosen on the kernel command line (see cmd/testinit).
func TestInitramfs(t testing.TB) string {
	t.Helper()
	k := TestKernel(t)
	initramfsOnce.Do(func() { initramfsPath, initramfsErr = buildTestInitramfs(k) })
	if initramfsErr != nil {
		t.Fatalf("test initramfs: %v", initramfsErr)
	}
	return initramfsPath
}

func buildTestInitramfs(k *Kernel) (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, ".initramfs-*")
	if err != nil {
		return "", fmt.Errorf("build initramfs: %w", err)
	}
	defer os.RemoveAll(tmp)

	initBin := filepath.Join(tmp, "init")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", initBin,
		"github.com/quantix/quantix/tests/vm/cmd/testinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build testinit: %w: %s", err, out)
	}
	initData, err := os.ReadFile(initBin)
	if err != nil {
		return "", fmt.Errorf("build initramfs: %w", err)
	}
	mods, err := k.ModuleClosure(TestInitModules...)
	if err != nil {
		return "", fmt.Errorf("build initramfs: %w", err)
	}

	records := []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("lib", 0o755),
		cpio.Directory("lib/modules", 0o755),
		cpio.StaticRecord(initData, cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755}),
	}
	var order []string
	for _, p := range mods {
		data, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("build initramfs: %w", err)
		}
		name := filepath.Base(p)
		order = append(order, name)
		records = append(records, cpio.StaticRecord(data, cpio.Info{Name: "lib/modules/" + name, Mode: cpio.S_IFREG | 0o644}))
	}
	records = append(records, cpio.StaticFile("lib/modules/load.order", strings.Join(order, "\n")+"\n", 0o644))

	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	cpio.MakeAllReproducible(records)
	if err := cpio.WriteRecords(w, records); err != nil {
		return "", fmt.Errorf("write cpio: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return "", fmt.Errorf("write cpio: %w", err)
	}
	sum := sha256.Sum256(buf.Bytes())
	out := filepath.Join(cache, "initramfs-"+hex.EncodeToString(sum[:8])+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	part := filepath.Join(tmp, "initramfs.cpio")
	if err := os.WriteFile(part, buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := os.Rename(part, out); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	return out, nil
}
