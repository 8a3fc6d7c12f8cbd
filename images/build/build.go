// Package build turns an image definition (images/*.toml, package spec) into a
// bootable, reproducible hybrid ISO: the pinned Debian kernel and the closure of its
// listed modules, a u-root initramfs made through mkuimage with the image's u-root
// commands, our own commands, overlays and host programs, an ISOLINUX (BIOS) and
// GRUB (UEFI) boot menu, an ISO9660 filesystem written by go-diskfs, and our own
// hybrid MBR/GPT so the same file boots from a CD and from a raw disk. Alongside it
// go a manifest of every input and out/SHA256SUMS.
//
// It also writes config disks (ConfigDisk): small ext4 images labelled QUANTIX-CFG
// or QUANTIX-INSTALL, as the test lab and USB sticks use.
package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/u-root/mkuimage/cpio"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/kmod"
	"github.com/quantix/quantix/images/spec"
)

// Config says what to build and where.
type Config struct {
	// Spec is the image definition file (images/quantix-os.toml).
	Spec string
	// Repo is the repository root (overlays and commands are relative to it);
	// default: the folder holding go.mod above Spec.
	Repo string
	// OutDir receives <name>.iso, <name>.manifest.json and SHA256SUMS; default <Repo>/out.
	OutDir string
	// CacheDir holds downloaded packages, the extracted kernel and u-root builds;
	// default $XDG_CACHE_HOME/quantix or ~/.cache/quantix.
	CacheDir string
	// SourceDateEpoch is every timestamp written; default $SOURCE_DATE_EPOCH, else the
	// time of the last git commit, else 0.
	SourceDateEpoch *int64
	// Rebuild ignores the cached u-root build and extension images.
	Rebuild bool
	// Progress receives one line per step with its duration (nil: none).
	Progress io.Writer
	// TrustedKeys are release keys the image trusts besides its definition's
	// trusted_keys (qx-image build --trusted-keys: a release engineer's key that
	// is not in the repository).
	TrustedKeys []quantix.PublicKey
}

// Result describes a finished build.
type Result struct {
	ISO, Manifest string
	SHA256        string
	Size          int64
	InitrdSize    int64
	Steps         []Step
	Total         time.Duration
}

// Step is one timed build step.
type Step struct {
	Name string
	Took time.Duration
}

// Builder builds one image.
type Builder struct {
	cfg Config
	img *spec.Image
	log *slog.Logger
}

// DefaultCacheDir is $XDG_CACHE_HOME/quantix, else ~/.cache/quantix.
func DefaultCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "quantix")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "quantix")
	}
	return filepath.Join(os.TempDir(), "quantix-cache")
}

// New loads and validates the image definition and fills in defaults.
func New(cfg Config, log *slog.Logger) (*Builder, error) {
	img, err := spec.Load(cfg.Spec)
	if err != nil {
		return nil, err
	}
	for _, k := range cfg.TrustedKeys {
		if !slices.Contains(img.TrustedKeys, k.String()) {
			img.TrustedKeys = append(img.TrustedKeys, k.String())
		}
	}
	if cfg.Repo == "" {
		cfg.Repo, err = findRepo(filepath.Dir(cfg.Spec))
		if err != nil {
			return nil, err
		}
	}
	if cfg.Repo, err = filepath.Abs(cfg.Repo); err != nil {
		return nil, err
	}
	if cfg.OutDir == "" {
		cfg.OutDir = filepath.Join(cfg.Repo, "out")
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = DefaultCacheDir()
	}
	if cfg.SourceDateEpoch == nil {
		e, err := sourceDateEpoch(cfg.Repo)
		if err != nil {
			return nil, err
		}
		cfg.SourceDateEpoch = &e
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	return &Builder{cfg: cfg, img: img, log: log}, nil
}

// Image returns the loaded image definition.
func (b *Builder) Image() *spec.Image { return b.img }

func findRepo(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(d, "go.mod")) {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("no go.mod above %s: pass the repository root", dir)
		}
		d = p
	}
}

func sourceDateEpoch(repo string) (int64, error) {
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		e, err := strconv.ParseInt(v, 10, 64)
		if err != nil || e < 0 {
			return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a Unix time", v)
		}
		return e, nil
	}
	cmd := exec.Command("git", "log", "-1", "--format=%ct")
	cmd.Dir = repo
	if out, err := cmd.Output(); err == nil {
		if e, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return e, nil
		}
	}
	return 0, nil
}

// Build builds the ISO, its manifest and updates SHA256SUMS: the steps of
// buildSteps in order, each timed on Progress; an error names its step.
func (b *Builder) Build(ctx context.Context) (*Result, error) {
	start := time.Now()
	img := b.img
	for _, d := range []string{b.cfg.OutDir, b.cfg.CacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	work, err := os.MkdirTemp(b.cfg.CacheDir, "build-"+img.Name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	r := &buildRun{
		Builder: b, epoch: *b.cfg.SourceDateEpoch, work: work, t: newTree(), res: &Result{},
		initrd: filepath.Join(work, "initrd"),
		iso:    filepath.Join(b.cfg.OutDir, img.Name+".iso"),
		m:      &Manifest{Image: img.Name, Version: img.Version, VolumeLabel: img.VolumeLabel, SourceDateEpoch: *b.cfg.SourceDateEpoch, Go: runtime.Version(), TrustedKeys: append([]string{}, img.TrustedKeys...)},
	}
	if r.m.GoModules, err = repoModules(b.cfg.Repo); err != nil {
		return nil, err
	}
	for _, st := range buildSteps() {
		if err := r.step(ctx, st); err != nil {
			return nil, err
		}
	}
	res := r.res
	res.Total = time.Since(start)
	fmt.Fprintf(b.cfg.Progress, "%s: %s %.1f MB sha256 %s in %.1fs\n", img.Name, r.iso, float64(res.Size)/1e6, res.SHA256[:16], res.Total.Seconds())
	return res, nil
}

// buildRun is what one Build hands from step to step.
type buildRun struct {
	*Builder
	epoch int64
	work  string // temporary folder, removed after the build
	t     *tree  // the initramfs being assembled
	m     *Manifest
	res   *Result

	k        *Kernel
	modFiles []string // the module closure, relative to k.ModDir
	modDep   []byte
	initrd   string            // the compressed initramfs
	bootInst map[string]string // the installer's boot files: ISO path -> file
	iso      string
}

// buildStep is one named step of Build. detail, when set, adds what the step works
// on to its name once the steps before it have run (the kernel version, the
// number of modules).
type buildStep struct {
	name   string
	detail func(r *buildRun) string
	run    func(r *buildRun) error
}

// buildSteps lists Build's steps in order.
func buildSteps() []buildStep {
	return []buildStep{
		{name: "check bootloader files", run: func(*buildRun) error { return checkBootFiles() }},
		{name: "kernel", detail: func(r *buildRun) string { return r.img.Kernel.Version }, run: (*buildRun).kernel},
		{name: "u-root base (mkuimage)", run: func(r *buildRun) error { return r.urootStep(r.t, r.work, r.m) }},
		{name: "our commands (go build)", run: func(r *buildRun) error { return r.commandsStep(r.t, r.work, r.m) }},
		{name: "kernel modules", detail: func(r *buildRun) string { return fmt.Sprintf("(%d)", len(r.modFiles)) }, run: (*buildRun).modules},
		{name: "host files", run: func(r *buildRun) error { return r.hostStep(r.t, r.m) }},
		{name: "overlays", run: func(r *buildRun) error { return r.overlayStep(r.t, r.m) }},
		{name: "image config", run: (*buildRun).imageConfig},
		{name: "extensions (mksquashfs)", run: func(r *buildRun) error { return r.extensionStep(r.t, r.work, r.m) }},
		{name: "initramfs (cpio, compressed)", run: (*buildRun).initramfs},
		// An image that carries the installer also carries the bootloader files it
		// puts on a disk (GRUB for UEFI and BIOS), made by the installer's own code.
		{name: "installer boot files", run: (*buildRun).installerBoot},
		{name: "iso (go-diskfs + hybrid)", run: (*buildRun).isoImage},
		{name: "manifest, SHA256SUMS", run: (*buildRun).manifest},
	}
}

// step runs st, timed on Progress and recorded in the result; its error names it.
func (r *buildRun) step(ctx context.Context, st buildStep) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name := st.name
	if st.detail != nil {
		name += " " + st.detail(r)
	}
	t0 := time.Now()
	fmt.Fprintf(r.cfg.Progress, "%s: %-28s", r.img.Name, name)
	err := st.run(r)
	d := time.Since(t0)
	r.res.Steps = append(r.res.Steps, Step{name, d})
	if err != nil {
		fmt.Fprintf(r.cfg.Progress, " failed after %.1fs\n", d.Seconds())
		return fmt.Errorf("build %s: %s: %w", r.img.Name, name, err)
	}
	fmt.Fprintf(r.cfg.Progress, " %6.1fs\n", d.Seconds())
	return nil
}

// kernel fetches the pinned kernel package and finds the module closure.
func (r *buildRun) kernel() error {
	kc := r.img.Kernel
	var err error
	if r.k, err = prepareKernel(kc, r.cfg.CacheDir, func(format string, a ...any) { r.log.Info(fmt.Sprintf(format, a...)) }); err != nil {
		return err
	}
	if r.modFiles, r.modDep, err = r.k.ModuleClosure(kc.AllModules()); err != nil {
		return err
	}
	r.m.Kernel = KernelInput{Package: kc.Package, Version: kc.Version, SHA256: kc.SHA256, Release: r.k.Release}
	return nil
}

// modules adds the module closure and the module tables it needs.
func (r *buildRun) modules() error {
	k := r.k
	base := path.Join("lib/modules", k.Release)
	for _, f := range r.modFiles {
		data, err := os.ReadFile(filepath.Join(k.ModDir, f))
		if err != nil {
			return err
		}
		r.t.file(path.Join(base, f), data, 0o644)
		r.m.Modules = append(r.m.Modules, FileInput{Path: path.Join("/", base, f), SHA256: bytesSHA256(data)})
	}
	r.t.file(path.Join(base, "modules.dep"), r.modDep, 0o644)
	builtin, err := os.ReadFile(filepath.Join(k.ModDir, "modules.builtin"))
	if err != nil {
		return err
	}
	r.t.file(path.Join(base, "modules.builtin"), builtin, 0o644)
	af, err := os.Open(filepath.Join(k.ModDir, "modules.alias"))
	if err != nil {
		return err
	}
	aliases, err := kmod.ParseAliases(af)
	af.Close()
	if err != nil {
		return err
	}
	r.t.file(path.Join(base, "modules.alias"), aliases.Subset(r.modFiles), 0o644)
	return nil
}

// imageConfig writes what init reads at boot (quantix.ImageConfigPath) and the
// initramfs symlinks.
func (r *buildRun) imageConfig() error {
	img := r.img
	c := quantix.ImageConfig{
		Image: img.Name, Version: img.Version, VolumeLabel: img.VolumeLabel, Hostname: img.Hostname,
		KernelRelease: r.k.Release, Modules: img.Kernel.Modules, LateModules: img.Kernel.LateModules, Services: img.Services,
		HaltHooks: img.HaltHooks,
	}
	data, err := c.Encode()
	if err != nil {
		return err
	}
	r.t.file(strings.TrimPrefix(quantix.ImageConfigPath, "/"), data, 0o644)
	keys := "# Release keys this image accepts upgrade bundles from (trusted_keys in its definition).\n"
	for _, k := range img.TrustedKeys {
		keys += k + "\n"
	}
	r.t.file(strings.TrimPrefix(quantix.TrustedKeysPath, "/"), []byte(keys), 0o644)
	// No /sbin/modprobe: qx-init links it when it starts (initd.LinkModprobe), so
	// the kernel's requests before init runs fail at once instead of starting a
	// Go process each.
	for name, target := range img.Initramfs.Symlinks {
		r.t.add(cpio.Symlink(name, target))
	}
	return nil
}

// initramfs writes the compressed cpio archive.
func (r *buildRun) initramfs() error {
	f, err := os.Create(r.initrd)
	if err != nil {
		return err
	}
	h := sha256.New()
	comp := r.img.Initramfs.Compression
	if comp == "" {
		comp = spec.CompressionLZ4
	}
	n, raw, err := r.t.write(io.MultiWriter(f, h), r.epoch, comp)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	st, err := os.Stat(r.initrd)
	if err != nil {
		return err
	}
	r.res.InitrdSize = st.Size()
	r.m.Initramfs = InitramfsInfo{SHA256: hex.EncodeToString(h.Sum(nil)), Size: st.Size(), RawSize: raw, Entries: n}
	return nil
}

func (r *buildRun) installerBoot() error {
	var err error
	r.bootInst, err = installerBootFiles(filepath.Join(r.work, "bin"), filepath.Join(r.work, "install-boot"), r.img.Initramfs.Commands)
	return err
}

// isoImage writes the hybrid ISO (through a temporary file).
func (r *buildRun) isoImage() error {
	img := r.img
	tmp := r.iso + ".tmp"
	efiSum, err := MakeISO(ISOConfig{
		Out: tmp, Name: img.Name, Version: img.Version, VolumeLabel: img.VolumeLabel, Boot: img.Boot,
		Kernel: r.k.Vmlinuz, Initrd: r.initrd, WorkDir: filepath.Join(r.work, "iso"), SourceDateEpoch: r.epoch,
		Extra: r.bootInst,
	})
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := r.bootManifest(r.k, efiSum, r.m); err != nil {
		return err
	}
	return os.Rename(tmp, r.iso)
}

// manifest writes <name>.manifest.json and the ISO's line of SHA256SUMS.
func (r *buildRun) manifest() error {
	sum, err := quantix.FileSHA256(r.iso)
	if err != nil {
		return err
	}
	st, err := os.Stat(r.iso)
	if err != nil {
		return err
	}
	res := r.res
	res.ISO, res.SHA256, res.Size = r.iso, sum, st.Size()
	r.m.ISO = FileInput{Path: filepath.Base(r.iso), SHA256: sum, Size: st.Size()}
	res.Manifest = filepath.Join(r.cfg.OutDir, r.img.Name+".manifest.json")
	if err := r.m.write(res.Manifest); err != nil {
		return err
	}
	return updateSums(filepath.Join(r.cfg.OutDir, "SHA256SUMS"), filepath.Base(r.iso), sum)
}

// urootStep adds the u-root busybox, /init and /bin/uinit, from the cache when the
// inputs (Go version, go.mod/go.sum, commands, uinit) are unchanged.
func (b *Builder) urootStep(t *tree, work string, m *Manifest) error {
	ir := b.img.Initramfs
	uinit := "/bbin/" + ir.Uinit
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n", runtime.Version(), strings.Join(ir.URootCommands, ","), uinit)
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(b.cfg.Repo, f))
		if err != nil {
			return err
		}
		h.Write(data)
	}
	key := hex.EncodeToString(h.Sum(nil))[:20]
	dir := filepath.Join(b.cfg.CacheDir, "uroot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	out := filepath.Join(dir, key+".cpio")
	if b.cfg.Rebuild || !fileExists(out) {
		tmp := filepath.Join(work, "uroot")
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			return err
		}
		if err := urootBase(b.cfg.Repo, ir.URootCommands, uinit, tmp, out, b.log); err != nil {
			return err
		}
	}
	f, err := os.Open(out)
	if err != nil {
		return err
	}
	// Records read from f keep reading it until the initramfs is written; the
	// file is small, so read it into memory instead of holding it open.
	data, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return err
	}
	if err := t.addArchive(cpio.Newc.Reader(bytes.NewReader(data))); err != nil {
		return fmt.Errorf("read u-root build %s: %w", out, err)
	}
	m.URoot = URootInput{Commands: ir.URootCommands, Uinit: uinit, ArchiveSHA256: bytesSHA256(data)}
	if r, ok := t.recs["bbin/bb"]; ok {
		bb, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			return err
		}
		m.URoot.BusyboxSHA256 = bytesSHA256(bb)
		m.URoot.GoModules, _ = binaryModules(bb)
	}
	return nil
}

func (b *Builder) commandsStep(t *tree, work string, m *Manifest) error {
	ir := b.img.Initramfs
	dir := filepath.Join(work, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := goBuild(b.cfg.Repo, dir, b.img.Version, ir.Commands); err != nil {
		return err
	}
	for _, c := range ir.Commands {
		name := path.Base(c)
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("command %s: %w", c, err)
		}
		t.file("bbin/"+name, data, 0o755)
		mods, _ := binaryModules(data)
		m.Commands = append(m.Commands, CommandInput{Package: c, Path: "/bbin/" + name, SHA256: bytesSHA256(data), GoModules: mods})
	}
	return nil
}

func (b *Builder) hostStep(t *tree, m *Manifest) error {
	files := b.img.Initramfs.Files
	if len(files) == 0 {
		return nil
	}
	sub := newTree()
	names, err := hostFiles(sub, files, b.log)
	if err != nil {
		return err
	}
	for n, r := range sub.recs {
		t.recs[n] = r
	}
	// Map archive paths back to host paths for the package lookup.
	dstToSrc := map[string]string{}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, ":")
		if !ok {
			dst = strings.TrimPrefix(src, "/")
		}
		dstToSrc[dst] = src
	}
	hostPath := func(name string) string {
		for dst, src := range dstToSrc {
			if name == dst {
				return src
			}
			if strings.HasPrefix(name, dst+"/") {
				return src + strings.TrimPrefix(name, dst)
			}
		}
		return "/" + name
	}
	var paths []string
	for _, n := range names {
		paths = append(paths, hostPath(n))
	}
	pkgs := debPackages(paths)
	for i, n := range names {
		r := sub.recs[n]
		data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			return fmt.Errorf("host file %s: %w", n, err)
		}
		p := pkgs[paths[i]]
		m.HostFiles = append(m.HostFiles, HostFileInput{Path: "/" + n, Source: paths[i], SHA256: bytesSHA256(data), Package: p.name, PackageVersion: p.version})
	}
	return nil
}

func (b *Builder) overlayStep(t *tree, m *Manifest) error {
	for _, o := range b.img.Initramfs.Overlays {
		dir := filepath.Join(b.cfg.Repo, o)
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			return fmt.Errorf("overlay %s: not a folder in the repository (%v)", o, err)
		}
		sub := newTree()
		if err := sub.addDir(dir, ""); err != nil {
			return fmt.Errorf("overlay %s: %w", o, err)
		}
		var names []string
		for n := range sub.recs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			r := sub.recs[n]
			t.add(r)
			if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
				data, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
				m.Overlay = append(m.Overlay, FileInput{Path: "/" + n, Source: path.Join(o, n), SHA256: bytesSHA256(data)})
			}
		}
	}
	return nil
}

// bootManifest records the kernel image and bootloader files in the manifest.
func (b *Builder) bootManifest(k *Kernel, efiSum string, m *Manifest) error {
	vm, err := quantix.FileSHA256(k.Vmlinuz)
	if err != nil {
		return err
	}
	m.Boot = append(m.Boot, FileInput{Path: isoKernel, Source: b.img.Kernel.Package + ":" + filepath.Base(k.Vmlinuz), SHA256: vm})
	var hostBoot []string
	for _, f := range bootFiles {
		hostBoot = append(hostBoot, f.path)
	}
	pkgs := debPackages(hostBoot)
	for _, f := range bootFiles {
		sum, err := quantix.FileSHA256(f.path)
		if err != nil {
			return err
		}
		p := pkgs[f.path]
		m.Boot = append(m.Boot, FileInput{Path: f.path, SHA256: sum, Package: p.name, PackageVersion: p.version})
	}
	m.Boot = append(m.Boot, FileInput{Path: "/" + isoEFIImg + ":/EFI/BOOT/BOOTX64.EFI", Source: "grub-mkimage", SHA256: efiSum})
	return nil
}

type debPkg struct{ name, version string }

// debPackages finds the Debian package (and its version) owning each host path;
// on merged-/usr systems a path is also tried with and without the /usr prefix.
func debPackages(paths []string) map[string]debPkg {
	out := map[string]debPkg{}
	if len(paths) == 0 {
		return out
	}
	alt := func(p string) string {
		if strings.HasPrefix(p, "/usr/") {
			return strings.TrimPrefix(p, "/usr")
		}
		return "/usr" + p
	}
	var query []string
	for _, p := range paths {
		query = append(query, p, alt(p))
	}
	owner := map[string]string{}
	cmd := exec.Command("dpkg", append([]string{"-S"}, query...)...)
	outb, _ := cmd.Output() // exit 1 when some path is unknown; the rest still prints
	sc := bufio.NewScanner(bytes.NewReader(outb))
	for sc.Scan() {
		pkg, p, ok := strings.Cut(sc.Text(), ": ")
		if !ok || strings.Contains(pkg, "diversion") {
			continue
		}
		pkg, _, _ = strings.Cut(strings.Split(pkg, ", ")[0], ":")
		owner[p] = pkg
	}
	set := map[string]bool{}
	for _, p := range paths {
		pkg := owner[p]
		if pkg == "" {
			pkg = owner[alt(p)]
		}
		if pkg != "" {
			out[p] = debPkg{name: pkg}
			set[pkg] = true
		}
	}
	var names []string
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	versions := map[string]string{}
	if len(names) > 0 {
		vout, err := exec.Command("dpkg-query", append([]string{"-W", "-f", "${Package} ${Version}\n"}, names...)...).Output()
		if err == nil {
			for _, l := range strings.Split(string(vout), "\n") {
				if n, v, ok := strings.Cut(l, " "); ok {
					versions[n] = v
				}
			}
		}
	}
	for p, d := range out {
		d.version = versions[d.name]
		out[p] = d
	}
	return out
}

// updateSums writes SHA256SUMS with file's line replaced, lines sorted by name.
func updateSums(sumsPath, file, sum string) error {
	lines := map[string]string{}
	if data, err := os.ReadFile(sumsPath); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if s, n, ok := strings.Cut(l, "  "); ok {
				lines[n] = s
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	lines[file] = sum
	var names []string
	for n := range lines {
		if fileExists(filepath.Join(filepath.Dir(sumsPath), n)) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var buf strings.Builder
	for _, n := range names {
		fmt.Fprintf(&buf, "%s  %s\n", lines[n], n)
	}
	tmp := sumsPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(buf.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, sumsPath)
}

// installerCommand is the installer's main package; an image listing it gets the
// installer's bootloader files on its ISO.
const installerCommand = "./installer/cmd/qx-install"

// installerBootFiles runs the freshly built qx-install build-boot-files (binDir holds
// our built commands) when cmds include the installer, and returns the ISO paths
// (boot/install/...) mapped to the files it made in dir.
func installerBootFiles(binDir, dir string, cmds []string) (map[string]string, error) {
	if !slices.Contains(cmds, installerCommand) {
		return nil, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	bin := filepath.Join(binDir, path.Base(installerCommand))
	if out, err := exec.Command(bin, "build-boot-files", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qx-install build-boot-files: %w: %s", err, strings.TrimSpace(string(out)))
	}
	files := map[string]string{}
	for _, name := range []string{"bootx64.efi", "core.img", "boot.img"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("qx-install build-boot-files made no %s: %w", name, err)
		}
		files["boot/install/"+name] = p
	}
	return files, nil
}
