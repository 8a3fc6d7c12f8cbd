// Package initd is the Quantix init companion: u-root's init runs qx-init as its
// uinit, and this package does the rest of the boot (docs/design.md §8): load the
// image's kernel modules, mount QUANTIX-CFG and QUANTIX-DATA by label, set the
// hostname, supervise the image's services (dependency order, readiness, restart
// backoff, logs to the console and /var/log/quantix) plus a console on a serial port
// when one is configured, print the console markers, serve the control socket
// (quantix.InitSocket: service states, restart one, poweroff, reboot), and stop
// everything cleanly on poweroff or reboot. PID 1 never exits: on a fatal error init
// logs, syncs and reboots after a delay, so nothing ever drops to a shell.
//
// The package is named initd because a Go package cannot be imported as "init".
package initd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/kmod"
	"github.com/quantix/quantix/services/blockdev"
)

// lateModulesWait bounds how long the remaining modules wait for boot-complete.
const lateModulesWait = 20 * time.Second

// Init is the boot sequence and the supervisor of one running image.
type Init struct {
	cfg     quantix.ImageConfig
	log     *slog.Logger
	console io.Writer
	// Paths, overridable so parts can be tested outside a VM.
	sysBlock, devDir string
	consoleConfig    string
	mods             *Modules
	pb               *powerButton
	// DeviceWait bounds the wait for block devices (the boot medium, QUANTIX-CFG/DATA).
	DeviceWait time.Duration
	// espDevice is QUANTIX-EFI on the installed disk (quantix.disk=), where the A/B
	// slot environment lives; "" on a live boot.
	espDevice string
}

// New returns the init for the image described by cfg; console is where markers and
// service output go (qx-init's stdout, which u-root's init connects to every console).
func New(cfg quantix.ImageConfig, console io.Writer, log *slog.Logger) (*Init, error) {
	if cfg.Image == "" {
		return nil, errors.New("init: image config has no image name")
	}
	return &Init{cfg: cfg, log: log, console: console, sysBlock: "/sys/class/block", devDir: "/dev", consoleConfig: ConsoleConfig, DeviceWait: 3 * time.Second}, nil
}

func (in *Init) say(line string) { fmt.Fprintln(in.console, line) }

// Run boots the image and supervises its services until a poweroff or reboot is
// requested (control socket, SIGUSR2 = poweroff, SIGTERM = reboot) or ctx ends; it
// then stops the services in reverse order, syncs, unmounts and returns the action.
// Errors that leave the machine unusable are returned; the caller reboots.
func (in *Init) Run(ctx context.Context) (quantix.HaltAction, error) {
	in.say(quantix.BootMarker(in.cfg.Image, in.cfg.Version))
	in.log.Info("init companion started", "uptime", Uptime().Round(time.Millisecond))
	// The kernel must never pick init's companion to kill on memory pressure:
	// if qx-init died, u-root's init would go on to start a shell.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0)

	if err := in.mountBase(); err != nil {
		return "", err
	}
	if err := LinkModprobe(ModprobePath, ModprobeCommand); err != nil {
		in.log.Warn("the kernel cannot ask for modules", "err", err)
	}
	t0 := time.Now()
	mods, err := OpenModules(in.cfg.KernelRelease, in.log)
	if err != nil {
		in.log.Error("no kernel modules", "err", err)
	} else {
		in.mods = mods
		for i := 0; i < 8 && mods.Coldplug(in.cfg.Modules) > 0; i++ {
		}
		in.log.Info("drivers loaded", "took", time.Since(t0).Round(time.Millisecond), "modules", strings.Join(mods.Loaded(), ","))
	}
	cmdline, err := quantix.ReadCmdline()
	if err != nil {
		in.log.Warn("no kernel command line", "err", err)
	}
	services := in.cfg.Services
	if answer := cmdline.Value(quantix.ParamInstall); answer != "" {
		// The install entry: no persistent filesystem is mounted (the installer is
		// about to write them) and the installer is the only service.
		in.say(fmt.Sprintf("init: install mode (%s=%s): starting the installer instead of the image's services", quantix.ParamInstall, answer))
		services = InstallServices()
	} else {
		in.mountByLabel(cmdline.Value(quantix.ParamDisk))
		services = in.withSerialConsole(services, cmdline)
	}
	if in.mods != nil {
		in.log.Info("devices ready", "took", time.Since(t0).Round(time.Millisecond), "slow_modules", strings.Join(in.mods.Slow, ","))
		in.loadServiceModules(services)
	}
	in.setHostname()

	sup, err := NewSupervisor(SupervisorConfig{
		Services: services,
		Console:  in.console,
		LogDir:   quantix.LogDir,
	}, in.log)
	if err != nil {
		return "", err
	}
	actions := make(chan quantix.HaltAction, 1)
	var keeper *SlotKeeper
	if slot := cmdline.Value(quantix.ParamSlot); quantix.ValidSlot(slot) && cmdline.Value(quantix.ParamInstall) == "" {
		keeper = NewSlotKeeper(slot, cmdline.Value(quantix.ParamTrial) == "1")
		keeper.WithESP, keeper.Image, keeper.Version = in.withESP, in.cfg.Image, in.cfg.Version
		keeper.KeyFiles = []string{quantix.TrustedKeysPath, quantix.SiteTrustedKeys}
		keeper.DataDir, keeper.Log = quantix.DataDir, in.log
	}
	ctl := NewControl(sup, actions, in.log)
	if keeper != nil {
		ctl.Slots = keeper
	}
	ln, err := ctl.Listen(quantix.InitSocket)
	if err != nil {
		in.log.Error("no control socket", "path", quantix.InitSocket, "err", err)
	} else {
		defer ln.Close()
	}
	in.pb = &powerButton{log: in.log, watched: map[string]bool{}, press: func() {
		select {
		case actions <- quantix.Poweroff:
		default:
		}
	}}
	in.pb.scan()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR2, syscall.SIGINT)
	defer signal.Stop(sigs)

	reboot := func() {
		select {
		case actions <- quantix.Reboot:
		default:
		}
	}
	supCtx, stop := context.WithCancel(context.Background())
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(supCtx) }()
	// An A/B trial has its deadline from here, not from boot-complete: a release
	// whose services never all get ready must fail its trial too.
	if keeper != nil {
		go in.judgeSlot(supCtx, sup, keeper, cmdline, reboot)
	}
	go func() {
		// The remaining modules (the power button among them) wait for boot-complete
		// to stay off the boot's critical path, but no longer than lateModulesWait: a
		// machine whose services never all get ready (no vDC reachable, no NIC) must
		// still power off when its button is pressed.
		late := time.NewTimer(lateModulesWait)
		defer late.Stop()
		loaded := false
		for {
			select {
			case <-sup.AllReady():
				in.say(quantix.BootCompleteMarker(Uptime().Seconds()))
				if !loaded {
					in.loadRest()
					in.devicePermissions()
					sup.StartAfterBoot()
				}
				return
			case <-late.C:
				// The services that wait for boot-complete start now too: a node
				// must run its VMs even when its vDC cannot be reached.
				in.log.Info("not every service is ready yet; loading the remaining modules and starting the after-boot services now", "after", lateModulesWait)
				in.loadRest()
				in.devicePermissions()
				sup.StartAfterBoot()
				loaded = true
			case <-supCtx.Done():
				return
			}
		}
	}()

	var action quantix.HaltAction
	select {
	case action = <-actions:
	case sig := <-sigs:
		action = quantix.Reboot
		if sig == syscall.SIGUSR2 {
			action = quantix.Poweroff
		}
	case <-ctx.Done():
		action = quantix.Poweroff
	}
	ctl.ShuttingDown(action) // restarts are refused from now on
	RunHaltHooks(in.cfg.HaltHooks, action, in.log)
	in.log.Info("stopping services", "then", string(action))
	stop()
	<-supDone
	in.Quiesce()
	return action, nil
}

// loadServiceModules loads the modules the services name before any of them
// starts. A module that does not load costs only the head start: the service's
// first use of it makes the kernel run modprobe, which says why.
func (in *Init) loadServiceModules(services []quantix.Service) {
	for _, s := range services {
		if len(s.Modules) == 0 || s.AfterBoot {
			continue
		}
		t0 := time.Now()
		if err := in.mods.Load(s.Modules...); err != nil {
			in.log.Warn("service modules", "service", s.Name, "modules", strings.Join(s.Modules, ","), "err", err)
			continue
		}
		in.log.Info("service modules loaded", "service", s.Name, "modules", strings.Join(s.Modules, ","), "took", time.Since(t0).Round(time.Millisecond))
	}
}

// withSerialConsole adds the serial console service when one is configured
// (QUANTIX-CFG is mounted by now). A bad setting is said on the console and only
// costs the serial console: the image's services, tty1's console among them, run.
func (in *Init) withSerialConsole(services []quantix.Service, cmdline quantix.Cmdline) []quantix.Service {
	sc, err := ChooseSerialConsole(in.consoleConfig, cmdline)
	sc.KernelConsole = sc.TTY != "" && slices.Contains(KernelConsoles("/proc/consoles"), sc.TTY)
	var out []quantix.Service
	if err == nil {
		out, err = WithSerialConsole(services, sc, in.devDir)
	}
	if err != nil {
		in.say(quantix.WarningMarker(SerialConsoleService, "no serial console: "+err.Error()))
		return services
	}
	if sc.TTY != "" {
		in.say(fmt.Sprintf("init: serial console on %s at %d baud (from %s)", filepath.Join(in.devDir, sc.TTY), sc.Baud, sc.Source))
	}
	return out
}

// Quiesce syncs and unmounts the persistent filesystems (read-only when busy).
func (in *Init) Quiesce() {
	unix.Sync()
	for _, dir := range []string{quantix.DataDir, quantix.ConfigDir} {
		if !isMountPoint(dir) {
			continue
		}
		if err := unix.Unmount(dir, 0); err != nil {
			in.log.Warn("unmount failed, remounting read-only", "dir", dir, "err", err)
			if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				in.log.Error("remount read-only failed", "dir", dir, "err", err)
			}
			continue
		}
		in.log.Info("unmounted", "dir", dir)
	}
	unix.Sync()
}

// Uptime is the time since the kernel started (CLOCK_BOOTTIME).
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func (in *Init) mountBase() error {
	mounts := []struct{ src, dir, typ, opts string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		// libvirt puts its guests into cgroups of its own (no systemd-machined here).
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", "nsdelegate"},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
	}
	for _, m := range mounts {
		if isMountPoint(m.dir) {
			continue
		}
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", m.dir, err)
		}
		if err := unix.Mount(m.src, m.dir, m.typ, unix.MS_NOSUID|unix.MS_NODEV, m.opts); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.typ, m.dir, err)
		}
	}
	for _, d := range []string{quantix.RunDir, quantix.LogDir, quantix.SessionDir, quantix.ConfigDir, quantix.DataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

// ModprobePath is where the kernel runs modprobe (its default modprobe_path), and
// ModprobeCommand what serves it: qx-init, which acts as modprobe when started by
// that name.
const (
	ModprobePath    = "/sbin/modprobe"
	ModprobeCommand = "/bbin/qx-init"
)

// LinkModprobe links path to target, the command that serves the kernel's module
// requests. The image ships no /sbin/modprobe: the kernel's requests before init
// runs (its crypto self-tests ask for algorithms that are built in) then fail at
// once, as on a kernel without modules, where each would otherwise start a Go
// process (about 0.15 s under TCG, several before /init).
func LinkModprobe(path, target string) error {
	if _, err := os.Stat(target); err != nil {
		return fmt.Errorf("link %s: the image has no modprobe: %w", path, err)
	}
	if cur, err := os.Readlink(path); err == nil && cur == target {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	if err := os.Symlink(target, path); err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	return nil
}

// isMountPoint reports whether dir is listed in /proc/self/mounts.
func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[1] == dir {
			return true
		}
	}
	return false
}

// waitFilesystems scans the block devices once the drivers have settled. The boot
// line sets scsi_mod.scan=sync, so SATA/IDE/virtio disks and CDs exist as soon as
// their driver's module init returns; only NVMe and USB disks appear later, and
// while such a driver is loaded the scan repeats until QUANTIX-CFG and QUANTIX-DATA
// are both there or DeviceWait has passed.
func (in *Init) waitFilesystems() []blockdev.Filesystem {
	deadline := time.Now().Add(in.DeviceWait)
	for first := true; ; first = false {
		// Run's coldplug has just loaded every driver a present device asks for:
		// only a disk that appears later (USB, NVMe) needs another pass.
		if in.mods != nil && !first {
			in.mods.Coldplug(in.cfg.Modules)
		}
		fss, _ := blockdev.ScanFilesystems(in.sysBlock, in.devDir)
		found := 0
		for _, f := range fss {
			if f.Label == quantix.LabelConfig || f.Label == quantix.LabelData {
				found++
			}
		}
		if found >= 2 || in.mods == nil || !in.mods.AsyncStorage() || time.Now().After(deadline) {
			return fss
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// InstallServices is what runs when the kernel command line holds quantix.install:
// the installer alone. It ends by asking init to power off or reboot.
func InstallServices() []quantix.Service {
	return []quantix.Service{{Name: "install", Command: "/bbin/qx-install", Ready: quantix.ReadyOnStart}}
}

// mountByLabel mounts QUANTIX-CFG and QUANTIX-DATA. diskGUID (quantix.disk=) pins
// an installed system to its own disk: only filesystems on the disk with that GPT
// GUID are considered, never a same-labelled one elsewhere.
func (in *Init) mountByLabel(diskGUID string) {
	t0 := time.Now()
	fss := in.waitFilesystems()
	boot := blockdev.BootDisks(fss, in.cfg.VolumeLabel, quantix.LabelEFI)
	if diskGUID != "" {
		disk, ok := blockdev.DiskByGUID(in.sysBlock, in.devDir, diskGUID)
		for deadline := time.Now().Add(in.DeviceWait); !ok && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			if in.mods != nil {
				in.mods.Coldplug(in.cfg.Modules)
			}
			disk, ok = blockdev.DiskByGUID(in.sysBlock, in.devDir, diskGUID)
		}
		if !ok {
			in.say(quantix.WarningMarker("init", fmt.Sprintf("the installed disk (%s=%s) was not found: /quantix is in RAM and nothing will persist", quantix.ParamDisk, diskGUID)))
			return
		}
		fss, _ = blockdev.ScanFilesystems(in.sysBlock, in.devDir)
		fss = blockdev.OnDisk(fss, disk)
		boot = map[string]bool{disk: true}
		in.log.Info("installed system: using its own disk only", "disk", disk, "guid", diskGUID)
		if esp, _, err := blockdev.FindByLabel(fss, quantix.LabelEFI, boot); err == nil {
			in.espDevice = esp.Device
		}
	}
	for _, m := range []struct{ label, dir string }{
		{quantix.LabelConfig, quantix.ConfigDir},
		{quantix.LabelData, quantix.DataDir},
	} {
		fs, collided, err := blockdev.FindByLabel(fss, m.label, boot)
		if err != nil {
			if m.label == quantix.LabelConfig {
				in.say(quantix.WarningMarker("init", "no "+quantix.LabelConfig+" filesystem found: /quantix is in RAM and nothing will persist"))
			} else {
				in.log.Info("no data filesystem, using RAM", "label", m.label, "dir", m.dir)
			}
			continue
		}
		if collided {
			in.say(quantix.WarningMarker("init", fmt.Sprintf("several filesystems are labelled %s; using %s", m.label, fs.Device)))
		}
		if in.mods != nil {
			var err error
			switch fs.Type {
			case "ext4":
				err = in.mods.Load("ext4", "crc32c_generic")
			case "vfat":
				err = in.mods.Load("vfat", "nls_cp437", "nls_iso8859-1")
			}
			if err != nil {
				in.log.Warn("filesystem module", "type", fs.Type, "err", err)
			}
		}
		if err := unix.Mount(fs.Device, m.dir, fs.Type, unix.MS_NOATIME|unix.MS_NODEV, ""); err != nil {
			in.say(quantix.WarningMarker("init", fmt.Sprintf("mount %s (%s) on %s failed: %v; using RAM", fs.Device, m.label, m.dir, err)))
			continue
		}
		in.log.Info("mounted", "label", m.label, "device", fs.Device, "dir", m.dir, "type", fs.Type)
	}
	in.log.Info("filesystems scanned", "took", time.Since(t0).Round(time.Millisecond))
}

// loadRest runs after boot-complete, off the boot's critical path: it loads the
// drivers of LateModules whose devices are present (the power button) and the
// listed modules that are not device drivers (isofs, loop, overlay and the like).
func (in *Init) loadRest() {
	if in.mods == nil {
		return
	}
	all := append(append([]string(nil), in.cfg.Modules...), in.cfg.LateModules...)
	for i := 0; i < 8 && in.mods.Coldplug(all) > 0; i++ {
	}
	if in.pb != nil && in.pb.scan() > 0 {
		in.log.Info("power button ready")
	}
	drivers := in.mods.aliases.DeviceDrivers(all)
	var rest []string
	for _, n := range all {
		if !drivers[kmod.Name(n)] {
			rest = append(rest, n)
		}
	}
	if err := in.mods.Load(rest...); err != nil {
		in.log.Warn("kernel modules not loaded", "err", err)
	}
}

// devicePermissions gives the device nodes that devtmpfs makes root-only the
// owners a hypervisor host expects: /dev/kvm root:kvm 0660. With 0600 root:root,
// libvirt re-probes KVM on every call (one define took 72 s; docs/platform.md).
func (in *Init) devicePermissions() {
	for _, d := range []struct {
		path, group string
		mode        os.FileMode
	}{{filepath.Join(in.devDir, "kvm"), "kvm", 0o660}} {
		if _, err := os.Stat(d.path); err != nil {
			continue // no such device on this machine
		}
		g, err := user.LookupGroup(d.group)
		if err != nil {
			in.log.Warn("device permissions", "device", d.path, "err", err)
			continue
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(d.path, 0, gid); err != nil {
			in.log.Warn("device permissions", "device", d.path, "err", err)
			continue
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			in.log.Warn("device permissions", "device", d.path, "err", err)
		}
	}
}

func (in *Init) setHostname() {
	cmdline, err := quantix.ReadCmdline()
	if err != nil {
		in.log.Warn("no kernel command line", "err", err)
	}
	name, source, warnings := ChooseHostname(quantix.HostnameFile, cmdline, in.cfg.Hostname)
	for _, w := range warnings {
		in.say(quantix.WarningMarker("init", "hostname ignored: "+w))
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		in.log.Error("set hostname", "hostname", name, "err", err)
		return
	}
	_ = os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644)
	in.say(fmt.Sprintf("init: hostname %s (from %s)", name, source))
}
