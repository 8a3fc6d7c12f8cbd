package initd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix/images/kmod"
)

// Modules loads kernel modules from /lib/modules/<release> with finit_module(2), in
// dependency order from modules.dep. u-root's modprobe cannot find names mixing '-'
// and '_', and there is no udev: Coldplug matches the devices present against
// modules.alias instead, and Modprobe serves the kernel's own requests (crypto-crc32c,
// fs-vfat) when qx-init runs as /sbin/modprobe.
type Modules struct {
	dir     string
	deps    *kmod.Deps
	aliases kmod.Aliases
	builtin map[string]bool
	log     *slog.Logger

	mu     sync.Mutex
	loaded map[string]*loadState // by kernel name; each module is tried once
	// Slow collects loads over 50 ms, for the boot log.
	Slow []string
}

// OpenModules reads modules.dep, modules.alias and modules.builtin of release.
func OpenModules(release string, log *slog.Logger) (*Modules, error) {
	if release == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return nil, fmt.Errorf("uname: %w", err)
		}
		release = unix.ByteSliceToString(u.Release[:])
	}
	dir := filepath.Join("/lib/modules", release)
	m := &Modules{dir: dir, log: log, loaded: map[string]*loadState{}}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	m.deps, err = kmod.Parse(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	if f, err := os.Open(filepath.Join(dir, "modules.alias")); err == nil {
		m.aliases, err = kmod.ParseAliases(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
	}
	if f, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		m.builtin, _ = kmod.ParseBuiltin(f)
		f.Close()
	}
	return m, nil
}

// Load loads the named modules (or aliases) and their dependencies. It returns the
// first error but goes on with the others: a driver may fail for absent hardware.
func (m *Modules) Load(names ...string) error {
	var files []string
	var errs []error
	for _, n := range names {
		if _, ok := m.deps.File(n); !ok && !m.builtin[kmod.Name(n)] {
			// Not a module name: maybe an alias (fs-vfat, crypto-crc32c).
			if mods := m.aliases.Match(n); len(mods) > 0 {
				if err := m.Load(mods...); err != nil {
					errs = append(errs, err)
				}
				continue
			}
		}
		fs, err := m.deps.Closure([]string{n}, m.builtin)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files = append(files, fs...)
	}
	for _, f := range files {
		if err := m.loadFile(f); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type loadState struct {
	done chan struct{}
	err  error
}

// loadFile loads one module file once; concurrent callers wait for the first.
func (m *Modules) loadFile(file string) error {
	name := kmod.Name(file)
	m.mu.Lock()
	if st, ok := m.loaded[name]; ok {
		m.mu.Unlock()
		<-st.done
		return st.err
	}
	st := &loadState{done: make(chan struct{})}
	m.loaded[name] = st
	m.mu.Unlock()
	st.err = m.finit(name, file)
	close(st.done)
	return st.err
}

func (m *Modules) finit(name, file string) error {
	if _, err := os.Stat(filepath.Join("/sys/module", name)); err == nil {
		return nil
	}
	t0 := time.Now()
	f, err := os.Open(filepath.Join(m.dir, file))
	if err != nil {
		return fmt.Errorf("module %s: %w", name, err)
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if d := time.Since(t0); d > 50*time.Millisecond {
		m.mu.Lock()
		m.Slow = append(m.Slow, fmt.Sprintf("%s=%dms", name, d.Milliseconds()))
		m.mu.Unlock()
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("module %s: finit_module: %w", name, err)
	}
	return nil
}

// Coldplug loads, among allowed (the image's listed modules), the drivers whose
// aliases match a device present now (every modalias under /sys/devices). It
// returns how many modules it tried; call it again as new devices appear (virtio
// devices after virtio_pci, SCSI disks after the host adapter).
func (m *Modules) Coldplug(allowed []string) int {
	drivers := m.aliases.DeviceDrivers(allowed)
	var want []string
	seen := map[string]bool{}
	for _, alias := range deviceModaliases() {
		for _, mod := range m.aliases.Match(alias) {
			m.mu.Lock()
			_, done := m.loaded[mod]
			m.mu.Unlock()
			if drivers[mod] && !done && !seen[mod] {
				seen[mod] = true
				want = append(want, mod)
			}
		}
	}
	// Drivers load in parallel (each after its own dependencies): probing
	// hardware mostly waits, so an ATA reset need not hold up virtio.
	var wg sync.WaitGroup
	for _, mod := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Load(mod); err != nil {
				m.log.Warn("driver not loaded", "module", mod, "err", err)
			}
		}()
	}
	wg.Wait()
	return len(want)
}

// deviceModaliases lists the modalias of every device on a bus, of every input
// device (a class, not a bus) and of the CPU.
func deviceModaliases() []string {
	files, _ := filepath.Glob("/sys/bus/*/devices/*/modalias")
	inputs, _ := filepath.Glob("/sys/class/input/input*/modalias")
	files = append(append(files, inputs...), "/sys/devices/system/cpu/modalias")
	var out []string
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// AsyncStorage reports whether a driver whose disks appear after its module init
// (NVMe, USB storage) is loaded.
func (m *Modules) AsyncStorage() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range []string{"nvme", "usb_storage", "uas"} {
		if st, ok := m.loaded[n]; ok && st.err == nil {
			return true
		}
	}
	return false
}

// Loaded lists the modules loaded so far (sorted), failed ones marked with '!'.
func (m *Modules) Loaded() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for n, st := range m.loaded {
		select {
		case <-st.done:
			if st.err != nil {
				n = "!" + n
			}
			out = append(out, n)
		default:
		}
	}
	sort.Strings(out)
	return out
}
