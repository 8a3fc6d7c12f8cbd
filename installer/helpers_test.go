package installer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/quantix/quantix/installer/installertest"
	"github.com/quantix/quantix/tests/vm"
)

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

var (
	mediumOnce sync.Once
	mediumDir  string
	mediumErr  error
)

// testMedium is a boot medium folder: the lab's Debian kernel, its self-test
// initramfs (cmd/testinit prints boot-complete) and the GRUB files BuildBootFiles
// makes with the host's grub-mkimage, laid out as on the ISO.
func testMedium(t testing.TB) string {
	t.Helper()
	k := vm.TestKernel(t)
	initrd := vm.TestInitramfs(t)
	mediumOnce.Do(func() {
		dir, err := os.MkdirTemp("", "qx-install-medium-")
		if err != nil {
			mediumErr = err
			return
		}
		mediumDir = dir
		if err := BuildBootFiles(filepath.Join(dir, filepath.FromSlash(MediumBootDir))); err != nil {
			mediumErr = err
			return
		}
		for src, dst := range map[string]string{k.Vmlinuz: MediumKernel, initrd: MediumInitrd} {
			b, err := os.ReadFile(src)
			if err != nil {
				mediumErr = err
				return
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(dst)), b, 0o644); err != nil {
				mediumErr = err
				return
			}
		}
	})
	if mediumErr != nil {
		t.Fatalf("test boot medium: %v", mediumErr)
	}
	return mediumDir
}

// fakeDisk describes a disk of a fake sysfs tree; its node is an image file.
type fakeDisk = installertest.Disk

// fakeSystem builds sys/class/block and dev folders under a temp folder.
func fakeSystem(t testing.TB, disks ...fakeDisk) Scanner {
	t.Helper()
	s := installertest.FakeSystem(t, disks...)
	return Scanner{SysBlock: s.SysBlock, DevDir: s.DevDir, Mounts: s.Mounts}
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sparseCopy copies size bytes at off of src into a new sparse file.
func sparseCopy(t testing.TB, src string, off, size int64) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := filepath.Join(t.TempDir(), "part.img")
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for pos := int64(0); pos < size; pos += int64(len(buf)) {
		n := min(int64(len(buf)), size-pos)
		if _, err := in.ReadAt(buf[:n], off+pos); err != nil {
			t.Fatal(err)
		}
		if !allZero(buf[:n]) {
			if _, err := o.WriteAt(buf[:n], pos); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}
