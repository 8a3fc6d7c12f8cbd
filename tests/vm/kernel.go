package vm

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// The Debian kernel the lab boots for its self-tests and for the boot-time floor
// (docs/platform.md): pinned by package version and sha256, so a moved archive gives a
// clear error instead of a different kernel.
const (
	KernelPackage    = "linux-image-6.1.0-56-amd64"
	KernelDebVersion = "6.1.192-2"
	KernelRelease    = "6.1.0-56-amd64"
	KernelDebSHA256  = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1"
)

// Kernel is the extracted Debian kernel package.
type Kernel struct {
	Release string
	// Vmlinuz is the bootable kernel image.
	Vmlinuz string
	// ModulesDir is lib/modules/<release> of the package (no modules.dep: the
	// package has none; ModuleClosure reads the modules' own dependency lists).
	ModulesDir string
}

// CacheDir is where the lab keeps downloads and built artifacts between runs:
// $QUANTIX_CACHE/vmtest, else $XDG_CACHE_HOME/quantix/vmtest, else ~/.cache/quantix/vmtest.
func CacheDir() (string, error) {
	if d := os.Getenv("QUANTIX_CACHE"); d != "" {
		return filepath.Join(d, "vmtest"), nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache folder: %w (set QUANTIX_CACHE)", err)
	}
	return filepath.Join(d, "quantix", "vmtest"), nil
}

var (
	kernelOnce sync.Once
	kernelVal  *Kernel
	kernelErr  error
)

// TestKernel returns the pinned Debian kernel, downloading it with
// `apt-get download` and extracting it into CacheDir on first use (once per machine;
// later calls reuse the extracted tree). It fails the test with the reason when the
// package cannot be had.
func TestKernel(t testing.TB) *Kernel {
	t.Helper()
	k, err := LoadKernel()
	if err != nil {
		t.Fatalf("test kernel: %v", err)
	}
	return k
}

// LoadKernel is TestKernel without a test: it returns the cached kernel or fetches it.
func LoadKernel() (*Kernel, error) {
	kernelOnce.Do(func() { kernelVal, kernelErr = fetchKernel() })
	return kernelVal, kernelErr
}

func fetchKernel() (*Kernel, error) {
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("create cache %s: %w", cache, err)
	}
	// Other test processes may be fetching the same kernel right now.
	unlock, err := lockFile(filepath.Join(cache, "kernel.lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	root := filepath.Join(cache, "linux-"+KernelRelease+"_"+KernelDebVersion)
	k := &Kernel{
		Release:    KernelRelease,
		Vmlinuz:    filepath.Join(root, "boot", "vmlinuz-"+KernelRelease),
		ModulesDir: filepath.Join(root, "lib", "modules", KernelRelease),
	}
	if _, err := os.Stat(filepath.Join(root, ".complete")); err == nil {
		return k, nil
	}
	deb := filepath.Join(cache, fmt.Sprintf("%s_%s_amd64.deb", KernelPackage, KernelDebVersion))
	if err := verifySHA256(deb, KernelDebSHA256); err != nil {
		cmd := exec.Command("apt-get", "download", KernelPackage+"="+KernelDebVersion)
		cmd.Dir = cache
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download %s=%s (sha256 %s) in %s: %w: %s\n"+
				"the Debian archive may have moved on: put that exact .deb into %s",
				KernelPackage, KernelDebVersion, KernelDebSHA256, cache, err, lastLines(string(out), 5), cache)
		}
		if err := verifySHA256(deb, KernelDebSHA256); err != nil {
			return nil, err
		}
	}
	tmp, err := os.MkdirTemp(cache, ".extract-*")
	if err != nil {
		return nil, fmt.Errorf("extract %s: %w", deb, err)
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.Command("dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return nil, fmt.Errorf("extract %s: %w", deb, err)
	}
	os.RemoveAll(root)
	if err := os.Rename(tmp, root); err != nil {
		return nil, fmt.Errorf("extract %s: %w", deb, err)
	}
	return k, nil
}

func verifySHA256(path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("hash %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s: sha256 %s, want %s", path, got, want)
	}
	return nil
}

// ModuleClosure returns the .ko files needed to load the named modules, every
// dependency before its users (the order to load them in). Names may use '-' or '_'.
func (k *Kernel) ModuleClosure(names ...string) ([]string, error) {
	index := map[string]string{}
	err := filepath.WalkDir(k.ModulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[moduleName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", k.ModulesDir, err)
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = moduleName(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module %s: dependency cycle", name)
		case 2:
			return nil
		}
		p, ok := index[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s (needed by %s): not in %s", name, from, k.ModulesDir)
			}
			return fmt.Errorf("module %s: not in %s", name, k.ModulesDir)
		}
		state[name] = 1
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func moduleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("read module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, "depends="); ok {
			if v == "" {
				return nil, nil
			}
			return strings.Split(v, ","), nil
		}
	}
	return nil, nil
}

// lockFile takes an exclusive flock on path, blocking, and returns the unlock func.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
