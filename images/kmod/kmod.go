// Package kmod reads modules.dep (as written by depmod) and computes the closure of a
// set of kernel modules in load order. The image builder uses it to pick the module
// files for an image; init uses it to load them, since u-root's modprobe cannot find
// names that mix '-' and '_' (nls_iso8859-1).
package kmod

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// Deps is a parsed modules.dep: module file (relative to /lib/modules/<release>) to
// the files it needs, as depmod lists them (direct and indirect).
type Deps struct {
	files  map[string][]string // file -> dependency files
	byName map[string]string   // normalised module name -> file
	order  []string            // files in modules.dep order
}

// Name returns the kernel's name for a module file or name: the base name without
// .ko[.xz|.zst|.gz], '-' replaced by '_'.
func Name(fileOrName string) string {
	n := path.Base(fileOrName)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		n = strings.TrimSuffix(n, ext)
	}
	n = strings.TrimSuffix(n, ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

// Parse reads modules.dep.
func Parse(r io.Reader) (*Deps, error) {
	d := &Deps{files: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, rest, ok := strings.Cut(line, ":")
		if !ok || file == "" {
			return nil, fmt.Errorf("modules.dep:%d: %q has no ':'", n, line)
		}
		if _, dup := d.files[file]; dup {
			return nil, fmt.Errorf("modules.dep:%d: %s listed twice", n, file)
		}
		d.files[file] = strings.Fields(rest)
		d.byName[Name(file)] = file
		d.order = append(d.order, file)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return d, nil
}

// File returns the file of module name ('-' and '_' are the same).
func (d *Deps) File(name string) (string, bool) {
	f, ok := d.byName[Name(name)]
	return f, ok
}

// Closure returns the files of the named modules and of everything they depend
// on, in an order where every file comes after its dependencies. Unknown names are
// an error listing all of them; a name in builtin (modules.builtin, by Name) is
// skipped because the kernel already has it.
func (d *Deps) Closure(names []string, builtin map[string]bool) ([]string, error) {
	var missing []string
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(file string, chain []string) error
	visit = func(file string, chain []string) error {
		switch state[file] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("modules.dep: dependency cycle through %s", strings.Join(append(chain, file), " -> "))
		}
		deps, ok := d.files[file]
		if !ok {
			return fmt.Errorf("modules.dep: %s needs %s, which is not listed", chain[len(chain)-1], file)
		}
		state[file] = 1
		for _, dep := range deps {
			if err := visit(dep, append(chain, file)); err != nil {
				return err
			}
		}
		state[file] = 2
		out = append(out, file)
		return nil
	}
	for _, n := range names {
		f, ok := d.File(n)
		if !ok {
			if builtin[Name(n)] {
				continue
			}
			missing = append(missing, n)
			continue
		}
		if err := visit(f, nil); err != nil {
			return nil, err
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("kernel modules not found in modules.dep (nor built in): %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// Subset writes modules.dep lines for files only (which must be closed under
// dependencies, e.g. a Closure result), in the given order.
func (d *Deps) Subset(files []string) []byte {
	var b strings.Builder
	for _, f := range files {
		b.WriteString(f)
		b.WriteByte(':')
		for _, dep := range d.files[f] {
			b.WriteByte(' ')
			b.WriteString(dep)
		}
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// ParseBuiltin reads modules.builtin (one module path a line) into a set of names.
func ParseBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			set[Name(l)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return set, nil
}

// Alias is one line of modules.alias: a modalias glob and the module it loads.
type Alias struct {
	Pattern string
	Module  string // kernel name (Name)
}

// Aliases is a parsed modules.alias.
type Aliases []Alias

// ParseAliases reads modules.alias ("alias <pattern> <module>" lines).
func ParseAliases(r io.Reader) (Aliases, error) {
	var out Aliases
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("modules.alias:%d: want \"alias PATTERN MODULE\", got %q", n, sc.Text())
		}
		out = append(out, Alias{Pattern: f[1], Module: Name(f[2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.alias: %w", err)
	}
	return out, nil
}

// Match returns the modules whose patterns match modalias (a device's modalias, or a
// name the kernel asks modprobe for, such as crypto-crc32c or fs-vfat), each once,
// in file order.
func (a Aliases) Match(modalias string) []string {
	var out []string
	seen := map[string]bool{}
	for _, al := range a {
		if seen[al.Module] {
			continue
		}
		if ok, err := path.Match(al.Pattern, modalias); err == nil && ok {
			seen[al.Module] = true
			out = append(out, al.Module)
		}
	}
	return out
}

// deviceBuses are the modalias prefixes of devices (as opposed to names such as
// fs-ext4, crypto-crc32c, char-major-10-237 or devname:loop-control).
var deviceBuses = []string{"pci:", "usb:", "virtio:", "acpi:", "acpi*:", "scsi:", "of:", "platform:", "pnp:", "hid:", "input:", "serio:", "cpu:", "dmi:", "mdio:", "i2c:", "spi:"}

// DeviceDrivers returns the names (of those given) that bind to devices: modules
// with at least one device alias. The rest are loaded on demand or unconditionally.
func (a Aliases) DeviceDrivers(names []string) map[string]bool {
	want := map[string]bool{}
	for _, n := range names {
		want[Name(n)] = true
	}
	out := map[string]bool{}
	for _, al := range a {
		if !want[al.Module] {
			continue
		}
		for _, p := range deviceBuses {
			if strings.HasPrefix(al.Pattern, p) {
				out[al.Module] = true
				break
			}
		}
	}
	return out
}

// Subset writes the modules.alias lines of the given module files.
func (a Aliases) Subset(files []string) []byte {
	keep := map[string]bool{}
	for _, f := range files {
		keep[Name(f)] = true
	}
	var b strings.Builder
	for _, al := range a {
		if keep[al.Module] {
			fmt.Fprintf(&b, "alias %s %s\n", al.Pattern, al.Module)
		}
	}
	return []byte(b.String())
}
