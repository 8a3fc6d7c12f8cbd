// Package spec is the typed image definition behind images/*.toml: what goes into a
// Quantix image (kernel, modules, u-root and Quantix commands, overlays, host files,
// boot menu, services). Load decodes a file strictly and validates it, so a typo
// in an image definition is an error naming the file and key, never a silent default.
package spec

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// Image is one image definition (images/quantix-os.toml, images/qvdc.toml).
type Image struct {
	// Name is the image name used in boot markers and output files (quantix-os, qvdc).
	Name string `toml:"name"`
	// Version is the image version printed in the boot marker.
	Version string `toml:"version"`
	// VolumeLabel is the ISO9660 volume identifier; grub finds the medium by it.
	VolumeLabel string `toml:"volume_label"`
	// Hostname is the default hostname when neither QUANTIX-CFG nor the kernel
	// command line name one.
	Hostname string `toml:"hostname"`

	Kernel    Kernel            `toml:"kernel"`
	Initramfs Initramfs         `toml:"initramfs"`
	Boot      Boot              `toml:"boot"`
	Services  []quantix.Service `toml:"service"`
	// HaltHooks run before init stops the services on a power-off or reboot.
	HaltHooks []quantix.HaltHook `toml:"halt_hook"`
	// Extensions are read-only squashfs images inside the initramfs, mounted by a
	// service after boot (Quantix-OS: libvirt and QEMU).
	Extensions []Extension `toml:"extension"`
	// TrustedKeys are the release signing keys (quantix.PublicKey lines from
	// `qx-image keygen`) whose bundles the image accepts as upgrades; the builder
	// writes them to quantix.TrustedKeysPath. Without any, the image accepts none.
	TrustedKeys []string `toml:"trusted_keys"`
}

// Extension is a set of host files (ELF files bring their shared libraries, as in
// Initramfs.Files) packed as one compressed read-only squashfs image at
// quantix.ExtensionImage(Name) inside the initramfs. The kernel copies it into RAM
// with the initramfs but nothing unpacks it before init runs: the service that needs
// it mounts it (quantix.ExtensionMount(Name)) after boot-complete, and symlinks in the
// initramfs point every path the extension adds into that mount point. Files the
// initramfs already holds (libc, say) stay out of the extension.
type Extension struct {
	Name  string   `toml:"name"`
	Files []string `toml:"files"`
}

// Kernel pins the Debian kernel package and the modules the image loads at boot.
type Kernel struct {
	// Package is the Debian binary package, e.g. linux-image-6.1.0-56-amd64.
	Package string `toml:"package"`
	// Version is the Debian package version, e.g. 6.1.192-2.
	Version string `toml:"version"`
	// SHA256 is the hex sha256 of the .deb file.
	SHA256 string `toml:"sha256"`
	// Modules are loaded at boot (with their dependencies, in dependency order):
	// device drivers when a matching device is present, filesystems when needed,
	// the rest right after boot-complete.
	Modules []string `toml:"modules"`
	// LateModules are loaded only after boot-complete, off the boot's critical path
	// (the ACPI power button: button, evdev).
	LateModules []string `toml:"late_modules"`
}

// AllModules returns Modules and LateModules.
func (k Kernel) AllModules() []string {
	return append(append([]string(nil), k.Modules...), k.LateModules...)
}

// Initramfs lists what the initramfs holds besides the kernel modules.
type Initramfs struct {
	// URootCommands are u-root command packages built into u-root's busybox
	// (github.com/u-root/u-root/cmds/core/init is always needed).
	URootCommands []string `toml:"uroot_commands"`
	// Commands are main packages of this module ("./services/cmd/qx-init"), built as
	// separate static binaries into /bbin.
	Commands []string `toml:"commands"`
	// Uinit is the command u-root's init runs (a name from Commands).
	Uinit string `toml:"uinit"`
	// Overlays are folders (relative to the repository root) copied into the root
	// of the initramfs, in order; later ones win.
	Overlays []string `toml:"overlays"`
	// Files are host files "src" or "src:dst" (dst relative to the initramfs root);
	// ELF files bring their shared libraries. A folder is copied recursively.
	Files []string `toml:"files"`
	// Symlinks maps a path in the initramfs to its target ("bin/sh" = "/usr/bin/dash").
	Symlinks map[string]string `toml:"symlinks"`
	// Compression is "lz4" (default: unpacks fastest at boot, the archive is
	// larger), "zstd" (smaller, unpacks about twice as slowly under TCG) or "gzip".
	Compression string `toml:"compression"`
}

// Initramfs compressions.
const (
	CompressionLZ4  = "lz4"
	CompressionZstd = "zstd"
	CompressionGzip = "gzip"
)

// Boot is the boot menu, shared by ISOLINUX (BIOS) and GRUB (UEFI).
type Boot struct {
	// Cmdline is appended to every entry's command line.
	Cmdline string `toml:"cmdline"`
	// Timeout is how long the menu waits before booting the default entry ("2s").
	Timeout string `toml:"timeout"`
	// Entries are the menu entries; exactly one is the default.
	Entries []BootEntry `toml:"entry"`
}

// BootEntry is one boot menu entry.
type BootEntry struct {
	// ID is a short identifier: normal, serial, install.
	ID      string `toml:"id"`
	Title   string `toml:"title"`
	Cmdline string `toml:"cmdline"`
	Default bool   `toml:"default"`
}

// Load reads and validates an image definition.
func Load(file string) (*Image, error) {
	var img Image
	if err := quantix.DecodeTOMLFile(file, &img); err != nil {
		return nil, err
	}
	if err := img.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &img, nil
}

// Parse decodes and validates an image definition held in memory; name is used in
// error messages.
func Parse(name string, data []byte) (*Image, error) {
	var img Image
	if err := quantix.DecodeTOML(name, data, &img); err != nil {
		return nil, err
	}
	if err := img.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &img, nil
}

var (
	nameRE    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)
	versionRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+~:-]{0,63}$`)
	labelRE   = regexp.MustCompile(`^[A-Z0-9_-]{1,32}$`)
	moduleRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
	debPkgRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	idRE      = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)
)

// Validate checks every field and returns one error naming each bad key.
func (img *Image) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if !nameRE.MatchString(img.Name) {
		bad("name", "%q must be lower-case letters, digits and hyphens, starting with a letter", img.Name)
	}
	if !versionRE.MatchString(img.Version) {
		bad("version", "%q is not a version (letters, digits, . + ~ : -)", img.Version)
	}
	if !labelRE.MatchString(img.VolumeLabel) {
		bad("volume_label", "%q must be 1-32 characters of A-Z, 0-9, _ and -", img.VolumeLabel)
	}
	if err := quantix.ValidateHostname(img.Hostname); err != nil {
		bad("hostname", "%v", err)
	}
	keyNames := map[string]bool{}
	for i, k := range img.TrustedKeys {
		pk, err := quantix.ParsePublicKey(k)
		switch {
		case err != nil:
			bad(fmt.Sprintf("trusted_keys[%d]", i), "%v", err)
		case keyNames[pk.Name]:
			bad(fmt.Sprintf("trusted_keys[%d]", i), "two keys are named %q", pk.Name)
		}
		keyNames[pk.Name] = true
	}

	k := img.Kernel
	if !debPkgRE.MatchString(k.Package) {
		bad("kernel.package", "%q is not a Debian package name", k.Package)
	}
	if !versionRE.MatchString(k.Version) {
		bad("kernel.version", "%q is not a Debian version", k.Version)
	}
	if b, err := hex.DecodeString(k.SHA256); err != nil || len(b) != 32 {
		bad("kernel.sha256", "%q is not 64 hex digits", k.SHA256)
	}
	seen := map[string]bool{}
	for _, l := range []struct {
		key  string
		list []string
	}{{"kernel.modules", k.Modules}, {"kernel.late_modules", k.LateModules}} {
		key := l.key
		for i, m := range l.list {
			switch {
			case !moduleRE.MatchString(m):
				bad(fmt.Sprintf("%s[%d]", key, i), "%q is not a module name", m)
			case seen[NormalizeModule(m)]:
				bad(fmt.Sprintf("%s[%d]", key, i), "%q is listed twice", m)
			}
			seen[NormalizeModule(m)] = true
		}
	}

	ir := img.Initramfs
	if len(ir.URootCommands) == 0 {
		bad("initramfs.uroot_commands", "empty; at least github.com/u-root/u-root/cmds/core/init is needed")
	}
	hasInit := false
	for i, c := range ir.URootCommands {
		if !strings.HasPrefix(c, "github.com/u-root/u-root/cmds/") || strings.ContainsAny(c, "* ") {
			bad(fmt.Sprintf("initramfs.uroot_commands[%d]", i), "%q is not a u-root command package (github.com/u-root/u-root/cmds/...)", c)
		}
		if c == "github.com/u-root/u-root/cmds/core/init" {
			hasInit = true
		}
	}
	if len(ir.URootCommands) > 0 && !hasInit {
		bad("initramfs.uroot_commands", "must include github.com/u-root/u-root/cmds/core/init")
	}
	cmdNames := map[string]bool{}
	for i, c := range ir.Commands {
		key := fmt.Sprintf("initramfs.commands[%d]", i)
		if !strings.HasPrefix(c, "./") || strings.Contains(c, "..") || strings.ContainsAny(c, "* \\") {
			bad(key, "%q must be a main package path inside this module, like ./services/cmd/qx-init", c)
			continue
		}
		n := path.Base(c)
		if cmdNames[n] {
			bad(key, "two commands are named %q", n)
		}
		cmdNames[n] = true
	}
	if ir.Uinit == "" {
		bad("initramfs.uinit", "empty; name the command u-root's init runs (qx-init)")
	} else if !cmdNames[ir.Uinit] {
		bad("initramfs.uinit", "%q is not one of initramfs.commands", ir.Uinit)
	}
	for i, o := range ir.Overlays {
		if !relClean(o) {
			bad(fmt.Sprintf("initramfs.overlays[%d]", i), "%q must be a relative folder inside the repository", o)
		}
	}
	for i, f := range ir.Files {
		src, dst, _ := strings.Cut(f, ":")
		if !filepath.IsAbs(src) {
			bad(fmt.Sprintf("initramfs.files[%d]", i), "%q: the host path must be absolute", f)
		}
		if dst != "" && !relClean(dst) {
			bad(fmt.Sprintf("initramfs.files[%d]", i), "%q: the destination must be relative to the initramfs root", f)
		}
	}
	extNames := map[string]bool{}
	for i, e := range img.Extensions {
		key := fmt.Sprintf("extension[%d]", i)
		if !nameRE.MatchString(e.Name) {
			bad(key+".name", "%q must be lower-case letters, digits and hyphens, starting with a letter", e.Name)
		}
		if extNames[e.Name] {
			bad(key+".name", "%q is used twice", e.Name)
		}
		extNames[e.Name] = true
		if len(e.Files) == 0 {
			bad(key+".files", "empty; an extension needs at least one file")
		}
		for j, f := range e.Files {
			src, dst, _ := strings.Cut(f, ":")
			if !filepath.IsAbs(src) {
				bad(fmt.Sprintf("%s.files[%d]", key, j), "%q: the host path must be absolute", f)
			}
			if dst != "" && !relClean(dst) {
				bad(fmt.Sprintf("%s.files[%d]", key, j), "%q: the destination must be relative to the root", f)
			}
		}
	}
	switch ir.Compression {
	case "", CompressionLZ4, CompressionZstd, CompressionGzip:
	default:
		bad("initramfs.compression", "%q must be %q, %q or %q", ir.Compression, CompressionLZ4, CompressionZstd, CompressionGzip)
	}
	for p, target := range ir.Symlinks {
		if !relClean(p) || target == "" {
			bad("initramfs.symlinks."+p, "link must be a relative path and the target non-empty")
		}
	}

	if _, err := img.Boot.TimeoutDuration(); err != nil {
		bad("boot.timeout", "%v", err)
	}
	if len(img.Boot.Entries) == 0 {
		bad("boot.entry", "no boot menu entries")
	}
	defaults := 0
	ids := map[string]bool{}
	for i, e := range img.Boot.Entries {
		key := fmt.Sprintf("boot.entry[%d]", i)
		if !idRE.MatchString(e.ID) {
			bad(key+".id", "%q must be a short lower-case word", e.ID)
		}
		if ids[e.ID] {
			bad(key+".id", "%q is used twice", e.ID)
		}
		ids[e.ID] = true
		if e.Title == "" || strings.ContainsAny(e.Title, "\"\n'{}") {
			bad(key+".title", "%q must be non-empty without quotes, braces or newlines", e.Title)
		}
		if strings.ContainsAny(e.Cmdline, "\"\n'{};") {
			bad(key+".cmdline", "%q must not hold quotes, braces, ';' or newlines", e.Cmdline)
		}
		if e.Default {
			defaults++
		}
	}
	if strings.ContainsAny(img.Boot.Cmdline, "\"\n'{};") {
		bad("boot.cmdline", "%q must not hold quotes, braces, ';' or newlines", img.Boot.Cmdline)
	}
	if len(img.Boot.Entries) > 0 && defaults != 1 {
		bad("boot.entry", "exactly one entry must have default = true, found %d", defaults)
	}

	errs = append(errs, validateServices(img.Services, img.Kernel.Modules)...)
	for i, h := range img.HaltHooks {
		if !path.IsAbs(h.Command) {
			bad(fmt.Sprintf("halt_hook[%d].command", i), "%q must be an absolute path inside the image", h.Command)
		}
		if h.TimeoutSeconds < 0 || h.TimeoutSeconds > quantix.MaxHaltHookTimeout {
			bad(fmt.Sprintf("halt_hook[%d].timeout_seconds", i), "%d is not between 0 (the default, %d) and %d", h.TimeoutSeconds, quantix.DefaultHaltHookTimeout, quantix.MaxHaltHookTimeout)
		}
	}
	return errors.Join(errs...)
}

// TimeoutDuration returns the boot menu timeout (default 2 s).
func (b Boot) TimeoutDuration() (time.Duration, error) {
	if b.Timeout == "" {
		return 2 * time.Second, nil
	}
	d, err := time.ParseDuration(b.Timeout)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration like \"2s\"", b.Timeout)
	}
	if d < 100*time.Millisecond || d > 10*time.Minute {
		return 0, fmt.Errorf("%s is outside 100ms..10m", d)
	}
	return d, nil
}

// DefaultEntry returns the default boot entry.
func (b Boot) DefaultEntry() BootEntry {
	for _, e := range b.Entries {
		if e.Default {
			return e
		}
	}
	return BootEntry{}
}

func validateServices(svcs []quantix.Service, modules []string) []error {
	var errs []error
	boot := map[string]bool{}
	for _, m := range modules {
		boot[NormalizeModule(m)] = true
	}
	names := map[string]int{}
	for i, s := range svcs {
		key := fmt.Sprintf("service[%d]", i)
		if !nameRE.MatchString(s.Name) {
			errs = append(errs, fmt.Errorf("%s.name: %q must be lower-case letters, digits and hyphens", key, s.Name))
		}
		if _, dup := names[s.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is defined twice", key, s.Name))
		}
		names[s.Name] = i
		if !path.IsAbs(s.Command) {
			errs = append(errs, fmt.Errorf("%s.command: %q must be an absolute path inside the image", key, s.Command))
		}
		switch s.Ready {
		case "", quantix.ReadyOnMarker, quantix.ReadyOnStart:
		default:
			errs = append(errs, fmt.Errorf("%s.ready: %q must be %q or %q", key, s.Ready, quantix.ReadyOnMarker, quantix.ReadyOnStart))
		}
		switch s.HealthGate {
		case "", quantix.GateReady, quantix.GateIfVDC:
		default:
			errs = append(errs, fmt.Errorf("%s.health_gate: %q must be %q or %q", key, s.HealthGate, quantix.GateReady, quantix.GateIfVDC))
		}
		if s.BootPriority != "" && s.BootPriority != quantix.PriorityLow {
			errs = append(errs, fmt.Errorf("%s.boot_priority: %q must be %q or unset", key, s.BootPriority, quantix.PriorityLow))
		}
		for j, m := range s.Modules {
			if s.AfterBoot {
				errs = append(errs, fmt.Errorf("%s.modules[%d]: %s starts after boot-complete: put %q in kernel.late_modules", key, j, s.Name, m))
			} else if !boot[NormalizeModule(m)] {
				errs = append(errs, fmt.Errorf("%s.modules[%d]: %q is not in kernel.modules (late_modules load only after boot-complete)", key, j, m))
			}
		}
	}
	for i, s := range svcs {
		for _, d := range s.DependsOn {
			j, ok := names[d]
			if !ok {
				errs = append(errs, fmt.Errorf("service[%d].depends_on: %q (of %s) is not a service of this image", i, d, s.Name))
			} else if svcs[j].AfterBoot && !s.AfterBoot {
				errs = append(errs, fmt.Errorf("service[%d].depends_on: %s would wait for %q, which starts after boot-complete: make %s after_boot too", i, s.Name, d, s.Name))
			}
		}
	}
	if len(errs) == 0 {
		if _, err := quantix.ServiceOrder(svcs); err != nil {
			errs = append(errs, fmt.Errorf("service: %w", err))
		}
	}
	return errs
}

// NormalizeModule returns the module name as the kernel knows it ('-' becomes '_').
func NormalizeModule(name string) string { return strings.ReplaceAll(name, "-", "_") }

func relClean(p string) bool {
	return p != "" && !path.IsAbs(p) && path.Clean(p) == p && p != "." && !strings.HasPrefix(p, "../")
}
