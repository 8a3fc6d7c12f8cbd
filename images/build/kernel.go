package build

import (
	"archive/tar"

	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/kmod"
	"github.com/quantix/quantix/images/spec"
)

// Kernel is an extracted, depmod-ed Debian kernel package in the cache.
type Kernel struct {
	Deb     string // path of the .deb
	Release string // 6.1.0-56-amd64
	Vmlinuz string // path of the kernel image
	// ModDir is lib/modules/<Release> with a full modules.dep.
	ModDir string
}

// fetchKernelDeb returns the cached .deb of k, downloading it with apt when missing,
// and checks its sha256 either way.
func fetchKernelDeb(k spec.Kernel, cacheDir string, logf func(string, ...any)) (string, error) {
	dir := filepath.Join(cacheDir, "debs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("kernel cache: %w", err)
	}
	name := fmt.Sprintf("%s_%s_amd64.deb", k.Package, strings.ReplaceAll(k.Version, ":", "%3a"))
	deb := filepath.Join(dir, name)
	if _, err := os.Stat(deb); err != nil {
		want := fmt.Sprintf("%s=%s", k.Package, k.Version)
		logf("downloading %s with apt-get", want)
		tmp, err := os.MkdirTemp(dir, ".download-")
		if err != nil {
			return "", fmt.Errorf("kernel cache: %w", err)
		}
		defer os.RemoveAll(tmp)
		cmd := exec.Command("apt-get", "download", want)
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("kernel package %s (sha256 %s) cannot be had: apt-get download %s: %v: %s\n"+
				"(run apt-get update; if the archive dropped this version, put the .deb at %s or pin a newer version in the image file)",
				want, k.SHA256, want, err, strings.TrimSpace(string(out)), deb)
		}
		if err := os.Rename(filepath.Join(tmp, name), deb); err != nil {
			return "", fmt.Errorf("kernel package %s: apt-get download did not produce %s: %w", want, name, err)
		}
	}
	sum, err := quantix.FileSHA256(deb)
	if err != nil {
		return "", err
	}
	if sum != k.SHA256 {
		return "", fmt.Errorf("kernel package %s: sha256 is %s, the image file pins %s (remove %s to download it again)", deb, sum, k.SHA256, deb)
	}
	return deb, nil
}

// prepareKernel extracts the kernel image and modules tree from the .deb once per
// package hash and runs depmod on it.
func prepareKernel(k spec.Kernel, cacheDir string, logf func(string, ...any)) (*Kernel, error) {
	deb, err := fetchKernelDeb(k, cacheDir, logf)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(cacheDir, "kernel", k.SHA256[:16])
	done := filepath.Join(root, ".done")
	if _, err := os.Stat(done); err != nil {
		logf("extracting %s", filepath.Base(deb))
		tmp := root + ".tmp"
		os.RemoveAll(tmp)
		if err := extractDeb(deb, tmp, func(name string) bool {
			return strings.HasPrefix(name, "boot/vmlinuz-") || strings.HasPrefix(name, "lib/modules/")
		}); err != nil {
			return nil, fmt.Errorf("extract %s: %w", deb, err)
		}
		rel, err := onlyDir(filepath.Join(tmp, "lib/modules"))
		if err != nil {
			return nil, fmt.Errorf("extract %s: %w", deb, err)
		}
		if out, err := exec.Command("depmod", "-b", tmp, rel).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("depmod -b %s %s: %v: %s (apt-get install kmod)", tmp, rel, err, out)
		}
		if err := os.WriteFile(filepath.Join(tmp, ".done"), nil, 0o644); err != nil {
			return nil, err
		}
		os.RemoveAll(root)
		if err := os.Rename(tmp, root); err != nil {
			return nil, fmt.Errorf("kernel cache: %w", err)
		}
	}
	rel, err := onlyDir(filepath.Join(root, "lib/modules"))
	if err != nil {
		return nil, err
	}
	return &Kernel{
		Deb:     deb,
		Release: rel,
		Vmlinuz: filepath.Join(root, "boot", "vmlinuz-"+rel),
		ModDir:  filepath.Join(root, "lib/modules", rel),
	}, nil
}

func onlyDir(dir string) (string, error) {
	e, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	if len(e) != 1 || !e[0].IsDir() {
		return "", fmt.Errorf("%s: want exactly one kernel release folder, found %d entries", dir, len(e))
	}
	return e[0].Name(), nil
}

// ModuleClosure returns the files (relative to ModDir) of the named modules and
// their dependencies in load order, and the trimmed modules.dep for them.
func (k *Kernel) ModuleClosure(names []string) (files []string, dep []byte, err error) {
	f, err := os.Open(filepath.Join(k.ModDir, "modules.dep"))
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	defer f.Close()
	d, err := kmod.Parse(f)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	var builtin map[string]bool
	if b, err := os.Open(filepath.Join(k.ModDir, "modules.builtin")); err == nil {
		builtin, err = kmod.ParseBuiltin(b)
		b.Close()
		if err != nil {
			return nil, nil, err
		}
	}
	files, err = d.Closure(names, builtin)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	return files, d.Subset(files), nil
}

// extractDeb unpacks the data archive of a .deb (ar, then tar.xz/zst/gz) into dir,
// keeping the entries keep accepts (names without the leading "./").
func extractDeb(deb, dir string, keep func(string) bool) error {
	f, err := os.Open(deb)
	if err != nil {
		return err
	}
	defer f.Close()
	data, name, err := findArMember(f, "data.tar")
	if err != nil {
		return err
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(name, ".xz"):
		xr, err := xz.NewReader(data)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r = xr
	case strings.HasSuffix(name, ".zst"):
		zr, err := zstd.NewReader(data)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer zr.Close()
		r = zr
	case name == "data.tar":
		r = data
	default:
		return fmt.Errorf("%s: unsupported compression", name)
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		n := strings.TrimPrefix(h.Name, "./")
		if n == "" || !keep(n) || strings.Contains(n, "..") {
			continue
		}
		dst := filepath.Join(dir, n)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(h.Linkname, dst); err != nil {
				return err
			}
		}
	}
}

// findArMember returns a reader for the first member of the ar archive whose name
// starts with prefix.
func findArMember(r io.ReadSeeker, prefix string) (io.Reader, string, error) {
	magic := make([]byte, 8)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != "!<arch>\n" {
		return nil, "", errors.New("not a Debian package (ar archive)")
	}
	hdr := make([]byte, 60)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return nil, "", fmt.Errorf("no %s* member: %w", prefix, err)
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(hdr[0:16])), "/")
		var size int64
		if _, err := fmt.Sscanf(strings.TrimSpace(string(hdr[48:58])), "%d", &size); err != nil {
			return nil, "", fmt.Errorf("ar member %q: bad size", name)
		}
		if strings.HasPrefix(name, prefix) {
			return io.LimitReader(r, size), name, nil
		}
		if _, err := r.Seek(size+size%2, io.SeekCurrent); err != nil {
			return nil, "", err
		}
	}
}

func bytesSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
