package build

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/mkuimage/uimage/initramfs"
	"github.com/u-root/uio/llog"

	"github.com/quantix/quantix/images/spec"
)

// tree is the initramfs being assembled: archive path -> record. Later additions
// replace earlier ones (overlays win over the base).
type tree struct {
	recs map[string]cpio.Record
}

func newTree() *tree { return &tree{recs: map[string]cpio.Record{}} }

func (t *tree) add(r cpio.Record) {
	r.Name = cpio.Normalize(r.Name)
	if r.Name == "." || r.Name == "" {
		return
	}
	t.recs[r.Name] = r
}

func (t *tree) file(name string, data []byte, perm uint64) {
	t.add(cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm}))
}

// addArchive adds every record of a cpio reader.
func (t *tree) addArchive(rr cpio.RecordReader) error {
	return cpio.ForEachRecord(rr, func(r cpio.Record) error {
		if r.Name == "TRAILER!!!" {
			return nil
		}
		t.add(r)
		return nil
	})
}

// addDir copies a host folder into the tree at dest (regular files, folders and
// symlinks; modes kept, owners and times dropped).
func (t *tree) addDir(src, dest string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		name := path.Join(dest, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint64(info.Mode().Perm())
		switch {
		case d.IsDir():
			if rel != "." {
				t.add(cpio.Directory(name, perm))
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			t.add(cpio.Symlink(name, target))
		case info.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			t.file(name, data, perm)
		default:
			return fmt.Errorf("%s: only files, folders and symlinks can go into an image", p)
		}
		return nil
	})
}

// write emits the tree as a newc cpio, sorted by path with parents first, every
// record normalised (no inode numbers, owners root, mtime fixed), then compresses
// it deterministically (spec.CompressionLZ4, Zstd or Gzip). It returns the number of records and the raw cpio size.
func (t *tree) write(w io.Writer, mtime int64, compression string) (n int, raw int64, err error) {
	// Every parent folder must exist before its children.
	for name := range t.recs {
		for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := t.recs[d]; !ok {
				t.recs[d] = cpio.Directory(d, 0o755)
			}
		}
	}
	names := make([]string, 0, len(t.recs))
	for n := range t.recs {
		names = append(names, n)
	}
	sort.Strings(names)
	zw, err := Compressor(w, compression)
	if err != nil {
		return 0, 0, err
	}
	cw := &countWriter{w: zw}
	rw := cpio.Newc.Writer(cw)
	for _, name := range names {
		r := cpio.MakeReproducible(t.recs[name])
		r.MTime = uint64(mtime)
		r.Mode = reproducibleMode(r.Mode)
		if err := rw.WriteRecord(r); err != nil {
			return 0, 0, fmt.Errorf("write %s into the initramfs: %w", name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return 0, 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, 0, err
	}
	return len(names), cw.n, nil
}

// Compressor returns a deterministic compressing writer the kernel can unpack.
// zstd unpacks about three times faster than gzip under TCG at a similar size, and
// LZ4 (the kernel's legacy frame, 8 MiB blocks, high compression) twice as fast as
// zstd again: Quantix-OS's initramfs unpacked in 0.84-1.00 s as LZ4 (62.7 MB)
// against 1.57-1.78 s as zstd (52.8 MB), kernel timestamps, TCG, same run. The
// encoders run single-threaded with fixed parameters so the output never varies.
func Compressor(w io.Writer, compression string) (io.WriteCloser, error) {
	switch compression {
	case spec.CompressionLZ4:
		zw := lz4.NewWriter(w)
		if err := zw.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9), lz4.ConcurrencyOption(1)); err != nil {
			return nil, fmt.Errorf("lz4 writer: %w", err)
		}
		return zw, nil
	case spec.CompressionZstd:
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(8<<20), zstd.WithEncoderCRC(true))
	case spec.CompressionGzip:
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	}
	return nil, fmt.Errorf("initramfs compression %q: want lz4, zstd or gzip", compression)
}

// InitramfsCompression tells an initramfs's compression by its magic, as the
// kernel does: spec.CompressionLZ4 (the legacy frame), Zstd or Gzip; "" for
// anything else (an uncompressed cpio among them).
//
// An LZ4 legacy frame has no end mark: the kernel reads chunks to the end of the
// initrd, so an archive appended after it must be LZ4 too, with no padding in
// between ("Initramfs unpacking failed: Decoding failed" otherwise, and the boot
// goes on without the appended files).
func InitramfsCompression(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte{0x02, 0x21, 0x4c, 0x18}):
		return spec.CompressionLZ4
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return spec.CompressionZstd
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		return spec.CompressionGzip
	}
	return ""
}

// OpenInitramfs returns the cpio inside a compressed initramfs, telling the
// format by its magic (InitramfsCompression), so whatever reads an image back
// (tests, tools) follows the builder's choice.
func OpenInitramfs(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	switch InitramfsCompression(magic) {
	case spec.CompressionLZ4:
		return io.NopCloser(lz4.NewReader(br)), nil
	case spec.CompressionZstd:
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	case spec.CompressionGzip:
		return gzip.NewReader(br)
	}
	return nil, fmt.Errorf("initramfs: unknown compression (magic % x): want lz4, zstd or gzip", magic)
}

// reproducibleMode keeps only what git tracks of a file's permissions (executable
// or not), so the builder's umask cannot reach the image: under umask 077 go build
// and a checkout write 0700 and 0600 files. Folders are 0755 (sticky ones 1777).
func reproducibleMode(m uint64) uint64 {
	switch m & cpio.S_IFMT {
	case cpio.S_IFREG:
		if m&0o111 != 0 {
			return cpio.S_IFREG | 0o755
		}
		return cpio.S_IFREG | 0o644
	case cpio.S_IFDIR:
		if m&0o1000 != 0 {
			return cpio.S_IFDIR | 0o1777
		}
		return cpio.S_IFDIR | 0o755
	}
	return m
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// urootBase builds u-root's busybox with the listed commands, u-root's init as
// /init and uinit as /bin/uinit, through mkuimage, into the cpio file out.
func urootBase(repo string, cmds []string, uinit, tmpDir, out string, log *slog.Logger) error {
	env := golang.Default(golang.DisableCGO(), golang.WithWorkingDir(repo), golang.WithGOOS("linux"), golang.WithGOARCH("amd64"))
	l := llog.New(slog.LevelWarn, func(format string, v ...any) { log.Debug(fmt.Sprintf(format, v...)) })
	tmp := out + ".tmp"
	err := uimage.Create(l,
		uimage.WithTempDir(tmpDir),
		uimage.WithReplaceEnv(env),
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithBusyboxCommands(cmds...),
		uimage.WithBusyboxBuildOpts(&golang.BuildOpts{}), // stripped, -trimpath: reproducible
		uimage.WithInit("init"),
		uimage.WithUinitCommand(uinit),
		uimage.WithCPIOOutput(tmp),
	)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("u-root initramfs (mkuimage): %w", err)
	}
	return os.Rename(tmp, out)
}

// hostFiles adds host files ("src[:dst]") with the shared libraries of ELF programs,
// resolved by mkuimage's ldd. It returns the host paths added (for the manifest).
func hostFiles(t *tree, files []string, log *slog.Logger) ([]string, error) {
	if len(files) == 0 {
		return nil, nil
	}
	l := llog.New(slog.LevelWarn, func(format string, v ...any) { log.Warn(fmt.Sprintf(format, v...)) })
	for _, f := range files {
		src, _, _ := strings.Cut(f, ":")
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("host file %s: %w (is its Debian package installed? run make deps)", src, err)
		}
	}
	af := initramfs.NewFiles()
	if err := uimage.ParseExtraFiles(l, af, files, true); err != nil {
		return nil, fmt.Errorf("host files: %w", err)
	}
	mem := cpio.InMemArchive()
	w, err := (&initramfs.Archive{Archive: mem}).OpenWriter()
	if err != nil {
		return nil, err
	}
	if err := af.WriteTo(w); err != nil {
		return nil, fmt.Errorf("host files: %w", err)
	}
	var srcs []string
	for name, r := range mem.Files {
		t.add(r)
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			srcs = append(srcs, name)
		}
	}
	sort.Strings(srcs)
	return srcs, nil
}

// goBuild builds main packages of the repository as static, stripped, reproducible
// binaries into dir, stamping quantix.Version.
func goBuild(repo, dir, version string, pkgs []string) error {
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(repo, p)); err != nil {
			return fmt.Errorf("command %s: its main package does not exist yet (%v); remove it from initramfs.commands until it is written", p, err)
		}
	}
	args := []string{"build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid= -X github.com/quantix/quantix.Version=" + version,
		"-o", dir + "/"}
	args = append(args, pkgs...)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

// goTool is the go command: $GO, else "go" from PATH (go run and go test put
// their own toolchain first on the PATH of what they start).
func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
