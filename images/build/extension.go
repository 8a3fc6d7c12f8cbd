package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/u-root/mkuimage/cpio"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/spec"
)

// mksquashfsArgs are the options every extension image is made with: zstd (the
// kernel's squashfs reads it, and it unpacks fastest), 256 KiB blocks, owners root,
// every time the build's epoch, no extended attributes. mksquashfs 4.4 and later
// write the same bytes for the same tree and options (its -reproducible default).
var mksquashfsArgs = []string{"-noappend", "-comp", "zstd", "-Xcompression-level", "15", "-b", "256K",
	"-all-root", "-no-xattrs", "-no-exports", "-quiet", "-no-progress"}

// ExtensionInput is one extension image in the manifest.
type ExtensionInput struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	RawSize  int64  `json:"raw_size"`
	Files    int    `json:"files"`
	Symlinks int    `json:"symlinks"`
}

// extensionStep packs each extension of the image as a squashfs inside t, with the
// symlinks that make its files appear at their usual paths once it is mounted.
// It runs after everything else has been added to t, so files the initramfs already
// holds are left out of the extension.
func (b *Builder) extensionStep(t *tree, work string, m *Manifest) error {
	for _, ext := range b.img.Extensions {
		in, err := b.extension(t, work, ext, m)
		if err != nil {
			return fmt.Errorf("extension %s: %w", ext.Name, err)
		}
		m.Extensions = append(m.Extensions, in)
	}
	return nil
}

func (b *Builder) extension(t *tree, work string, ext spec.Extension, m *Manifest) (ExtensionInput, error) {
	in := ExtensionInput{Name: ext.Name, Path: quantix.ExtensionImage(ext.Name)}
	sub := newTree()
	if _, err := hostFiles(sub, ext.Files, b.log); err != nil {
		return in, err
	}
	// The initramfs keeps what it already has (the C library, say): the same path
	// must then be the same bytes, or one of the two programs would load the wrong one.
	for name, r := range sub.recs {
		have, ok := t.recs[name]
		if !ok || r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			continue
		}
		a, err := recordBytes(r)
		if err != nil {
			return in, err
		}
		c, err := recordBytes(have)
		if err != nil {
			return in, err
		}
		if !bytes.Equal(a, c) || r.Mode != have.Mode {
			return in, fmt.Errorf("/%s is in the initramfs already with other contents; take it out of one of the two lists", name)
		}
		delete(sub.recs, name)
	}
	links, err := extensionLinks(t, sub, quantix.ExtensionMount(ext.Name))
	if err != nil {
		return in, err
	}
	root := filepath.Join(work, "ext-"+ext.Name)
	key, raw, err := writeTree(sub, root)
	if err != nil {
		return in, err
	}
	in.RawSize = raw
	for name, r := range sub.recs {
		if r.Mode&cpio.S_IFMT != cpio.S_IFDIR {
			in.Files++
		}
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			data, _ := recordBytes(r)
			m.HostFiles = append(m.HostFiles, HostFileInput{Path: quantix.ExtensionMount(ext.Name) + "/" + name, Source: "/" + name, SHA256: bytesSHA256(data)})
		}
	}
	epoch := strconv.FormatInt(*b.cfg.SourceDateEpoch, 10)
	args := append([]string{root, "", "-all-time", epoch, "-mkfs-time", epoch}, mksquashfsArgs...)
	img, err := b.squashfs(key, args)
	if err != nil {
		return in, err
	}
	in.SHA256, in.Size = bytesSHA256(img), int64(len(img))
	t.file(strings.TrimPrefix(in.Path, "/"), img, 0o644)
	names := make([]string, 0, len(links))
	for n := range links {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t.add(cpio.Symlink(n, links[n]))
	}
	in.Symlinks = len(links)
	return in, nil
}

// squashfs runs mksquashfs (args[1] is replaced by the output path), reusing the
// image from the cache when the tree and the options are the same.
func (b *Builder) squashfs(key string, args []string) ([]byte, error) {
	mk, err := exec.LookPath("mksquashfs")
	if err != nil {
		return nil, fmt.Errorf("mksquashfs not found (Debian package squashfs-tools; run make deps): %w", err)
	}
	ver, err := exec.Command(mk, "-version").Output()
	if err != nil {
		return nil, fmt.Errorf("mksquashfs -version: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n", key, strings.Join(args[2:], " "), firstLine(string(ver)))
	cached := filepath.Join(b.cfg.CacheDir, "extensions", hex.EncodeToString(h.Sum(nil))[:24]+".squashfs")
	if data, err := os.ReadFile(cached); err == nil && !b.cfg.Rebuild {
		return data, nil
	}
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		return nil, err
	}
	tmp := cached + ".tmp"
	args[1] = tmp
	cmd := exec.Command(mk, args...)
	// The times are on the command line; mksquashfs refuses SOURCE_DATE_EPOCH
	// beside them, and a release build sets it.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SOURCE_DATE_EPOCH=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("mksquashfs %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	if err := os.Rename(tmp, cached); err != nil {
		return nil, err
	}
	return os.ReadFile(cached)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// extensionLinks returns the symlinks (archive path -> target) that make every
// path of ext appear in the initramfs t once ext is mounted at mount: the highest
// folder of a path that t does not have becomes one link, and inside folders t has
// (lib/x86_64-linux-gnu) each file gets its own.
func extensionLinks(t, ext *tree, mount string) (map[string]string, error) {
	dirs := map[string]bool{}
	for name, r := range t.recs {
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			dirs[name] = true
		}
		for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	links := map[string]string{}
	for name, r := range ext.recs {
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			continue
		}
		parts := strings.Split(name, "/")
		for i := 1; i <= len(parts); i++ {
			p := strings.Join(parts[:i], "/")
			if dirs[p] {
				continue
			}
			if _, ok := t.recs[p]; ok {
				return nil, fmt.Errorf("/%s: the initramfs has a file at /%s where the extension needs a folder", name, p)
			}
			links[p] = path.Join(mount, p)
			break
		}
	}
	return links, nil
}

// writeTree writes the records of t under dir (which must not exist) with their
// modes, whatever the umask, and returns a hash of the whole tree (paths, modes,
// contents) and its size in bytes.
func writeTree(t *tree, dir string) (string, int64, error) {
	names := make([]string, 0, len(t.recs))
	for n := range t.recs {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, err
	}
	h := sha256.New()
	var size int64
	for _, n := range names {
		r := t.recs[n]
		p := filepath.Join(dir, filepath.FromSlash(n))
		perm := os.FileMode(r.Mode & 0o7777)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", 0, err
		}
		data, err := recordBytes(r)
		if err != nil {
			return "", 0, err
		}
		fmt.Fprintf(h, "%s %o %d\n", n, r.Mode, len(data))
		h.Write(data)
		switch r.Mode & cpio.S_IFMT {
		case cpio.S_IFDIR:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return "", 0, err
			}
		case cpio.S_IFLNK:
			if err := os.Symlink(string(data), p); err != nil {
				return "", 0, err
			}
			continue
		case cpio.S_IFREG:
			if err := os.WriteFile(p, data, 0o600); err != nil {
				return "", 0, err
			}
			size += int64(len(data))
		default:
			return "", 0, fmt.Errorf("/%s: only files, folders and symlinks can go into an extension", n)
		}
		if err := os.Chmod(p, perm); err != nil {
			return "", 0, err
		}
	}
	// Folders made on the way (parents without a record) get 0755 whatever the umask.
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if _, ok := t.recs[filepath.ToSlash(rel)]; info.IsDir() && !ok {
			return os.Chmod(p, 0o755)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), size, err
}

// recordBytes reads a record's contents (a symlink's target, a file's data).
func recordBytes(r cpio.Record) ([]byte, error) {
	if r.ReaderAt == nil {
		return nil, nil
	}
	return io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
}
