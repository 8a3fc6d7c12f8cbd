package postgres

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

// fakeDisks is a stand-in for /sys/class/block and /dev: each "device" is a regular
// image file, so the real mkfs.ext4 formats it without loop devices.
type fakeDisks struct {
	cfg DiskConfig
}

func newFakeDisks(t *testing.T) *fakeDisks {
	t.Helper()
	root := t.TempDir()
	d := &fakeDisks{cfg: DiskConfig{SysBlock: filepath.Join(root, "sys"), DevDir: filepath.Join(root, "dev")}}
	for _, dir := range []string{d.cfg.SysBlock, d.cfg.DevDir} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// add creates device name of size bytes (sparse zeros), with edit applied.
func (d *fakeDisks) add(t *testing.T, name string, size int64, edit func(f *os.File)) string {
	t.Helper()
	if err := os.Mkdir(filepath.Join(d.cfg.SysBlock, name), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(d.cfg.DevDir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(f)
	}
	return path
}

func writeAt(off int64, s string) func(*os.File) {
	return func(f *os.File) {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			panic(err)
		}
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func requireMkfs(t *testing.T) string {
	t.Helper()
	p, err := findProgram("mkfs.ext4")
	if err != nil {
		t.Fatalf("%v: run make deps (apt-get install e2fsprogs)", err)
	}
	return p
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestPrepareDataDisk(t *testing.T) {
	requireMkfs(t)
	ctx := context.Background()
	const size = 64 << 20

	t.Run("formats a blank device when allowed, then finds it by label", func(t *testing.T) {
		d := newFakeDisks(t)
		d.add(t, "vda", size, writeAt(510, "\x55\xaa")) // the boot disk, not ours
		dev := d.add(t, "vdb", size, nil)
		cfg := d.cfg
		cfg.Device, cfg.FormatBlank = dev, true
		res, err := PrepareDataDisk(ctx, cfg, testLogger(t))
		if err != nil || res.Action != DiskFormat || res.Device != dev {
			t.Fatalf("PrepareDataDisk(blank, allowed) = %+v, %v, want format %s", res, err, dev)
		}
		if l, err := ReadLabel(dev); l != "QUANTIX-DATA" || err != nil {
			t.Fatalf("ReadLabel(%s) = %q, %v, want QUANTIX-DATA", dev, l, err)
		}
		if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck -fn %s: %v\n%s", dev, err, out)
		}
		// The next boot finds it by label and formats nothing again.
		before := fileHash(t, dev)
		res, err = PrepareDataDisk(ctx, cfg, testLogger(t))
		if err != nil || res.Action != DiskUse || res.Device != dev {
			t.Fatalf("PrepareDataDisk(labelled) = %+v, %v, want use %s", res, err, dev)
		}
		if fileHash(t, dev) != before {
			t.Errorf("PrepareDataDisk(labelled) changed %s", dev)
		}
	})

	refusals := []struct {
		name    string
		edit    func(*os.File)
		allow   bool
		wantErr string
	}{
		{"blank but formatting not allowed", nil, false, "format_blank_data is false"},
		{"fake ext4 signature", func(f *os.File) {
			writeAt(1080, "\x53\xef")(f)
			writeAt(1024+120, "photos")(f)
		}, true, `an ext2/3/4 filesystem labelled "photos"`},
		{"GPT", writeAt(512, "EFI PART"), true, "a GPT partition table"},
		{"data at the end only", writeAt(size-100, "old"), true, "near the end"},
	}
	for _, r := range refusals {
		t.Run("refuses "+r.name, func(t *testing.T) {
			d := newFakeDisks(t)
			dev := d.add(t, "vdb", size, r.edit)
			before := fileHash(t, dev)
			cfg := d.cfg
			cfg.Device, cfg.FormatBlank = dev, r.allow
			res, err := PrepareDataDisk(ctx, cfg, testLogger(t))
			if err == nil || !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), r.wantErr) {
				t.Fatalf("PrepareDataDisk() = %+v, %v, want quantix.ErrConfig containing %q", res, err, r.wantErr)
			}
			if fileHash(t, dev) != before {
				t.Errorf("PrepareDataDisk() changed %s although it refused", dev)
			}
		})
	}

	t.Run("no device: RAM", func(t *testing.T) {
		d := newFakeDisks(t)
		d.add(t, "vda", size, nil)
		res, err := PrepareDataDisk(ctx, d.cfg, testLogger(t))
		if err != nil || res.Action != DiskNone {
			t.Fatalf("PrepareDataDisk(no data disk) = %+v, %v, want none", res, err)
		}
	})

	t.Run("FormatDataDevice checks blankness itself", func(t *testing.T) {
		d := newFakeDisks(t)
		dev := d.add(t, "vdb", size, writeAt(0, "XFSB"))
		before := fileHash(t, dev)
		err := FormatDataDevice(ctx, dev, "", testLogger(t))
		if err == nil || !strings.Contains(err.Error(), "an XFS filesystem") {
			t.Fatalf("FormatDataDevice(XFS) = %v, want refusal naming XFS", err)
		}
		if fileHash(t, dev) != before {
			t.Errorf("FormatDataDevice(XFS) changed %s", dev)
		}
	})
}
