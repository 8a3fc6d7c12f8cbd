// Command qx-install installs the running Quantix image (Quantix OS or QvDC) on a
// disk. Started by qx-init when the kernel command line holds quantix.install=, it
// reads the answer file at that path on the filesystem labelled QUANTIX-INSTALL
// (or asks on the consoles for quantix.install=interactive), installs, verifies,
// writes its log next to the answer file and powers off or reboots as asked. On a
// failure it prints a fatal marker and waits for "reboot" or "poweroff" typed on a
// console: it never reboots silently.
//
//	qx-install                          service mode (inside the image, quantix.install= set)
//	qx-install --answer FILE [flags]    unattended, from a shell or a test
//	qx-install --interactive [flags]    ask on this terminal
//	qx-install disks [flags]            list the disks as the installer sees them
//	qx-install build-boot-files DIR     write bootx64.efi, core.img, boot.img (image build)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer"
	initd "github.com/quantix/quantix/services/init"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "qx-install:", err)
		os.Exit(1)
	}
}

// InstallMount is where service mode mounts the QUANTIX-INSTALL filesystem.
const InstallMount = quantix.RunDir + "/install-media"

// LogName is the install log written next to the answer file.
const LogName = "qx-install.log"

type options struct {
	answer, medium, image, version, volume string
	sysBlock, dev, mounts, mkfs, after     string
	interactive                            bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "build-boot-files" {
		if len(args) != 2 {
			return errors.New("usage: qx-install build-boot-files DIR")
		}
		return installer.BuildBootFiles(args[1])
	}
	cmd := "install"
	if len(args) > 0 && args[0] == "disks" {
		cmd, args = "disks", args[1:]
	}
	var o options
	fs := flag.NewFlagSet("qx-install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.answer, "answer", "", "answer file (unattended install)")
	fs.BoolVar(&o.interactive, "interactive", false, "ask on this terminal instead of reading an answer file")
	fs.StringVar(&o.medium, "medium", "", "boot medium to copy from: ISO file, device or folder (default: the filesystem labelled with the image's volume label)")
	fs.StringVar(&o.image, "image", "", "image to install: quantix-os or qvdc (default: "+initd.ConfigPath+")")
	fs.StringVar(&o.version, "version", "", "image version for messages (default: "+initd.ConfigPath+")")
	fs.StringVar(&o.volume, "volume-label", "", "the boot medium's volume label (default: "+initd.ConfigPath+")")
	fs.StringVar(&o.sysBlock, "sys-block", "/sys/class/block", "sysfs block folder")
	fs.StringVar(&o.dev, "dev", "/dev", "device folder")
	fs.StringVar(&o.mounts, "mounts", "/proc/self/mounts", "mount table")
	fs.StringVar(&o.mkfs, "mkfs", "mkfs.ext4", "mkfs.ext4 program")
	fs.StringVar(&o.after, "after", "", "after a successful install: poweroff, reboot or none (default: the answer file's; none outside service mode)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", installer.ServiceName)
	scanner := installer.Scanner{SysBlock: o.sysBlock, DevDir: o.dev, Mounts: o.mounts}
	if cmd == "disks" {
		disks, err := scanner.Scan()
		if err != nil {
			return err
		}
		for _, d := range disks {
			fmt.Fprintln(stdout, d.Describe())
		}
		return nil
	}
	if o.answer == "" && !o.interactive {
		return runService(ctx, o, stdout, stderr)
	}
	if err := imageDefaults(&o); err != nil {
		return err
	}
	if o.medium == "" {
		return errors.New("--medium is required outside service mode (an ISO file, a device or a folder)")
	}
	med, err := installer.OpenMedium(o.medium)
	if err != nil {
		return err
	}
	defer med.Close()
	cmdline, _ := quantix.ReadCmdline()
	cfg := installer.Config{Image: o.image, Version: o.version, VolumeLabel: o.volume, Medium: med, Scanner: scanner,
		Cmdline: cmdlineString(cmdline), ProductUUID: "/sys/class/dmi/id/product_uuid", Mkfs: o.mkfs, Console: stdout}
	if o.interactive {
		cfg.Terminal = installer.NewTerminal(stdout, os.Stdin)
	} else if cfg.Answer, err = installer.LoadAnswer(o.answer, o.image); err != nil {
		return err
	}
	in, err := installer.New(cfg, log)
	if err != nil {
		return err
	}
	res, err := in.Run(ctx)
	if err != nil {
		return failure(in, err)
	}
	if o.after != "" && o.after != "none" {
		return halt(o.after, log)
	}
	_ = res
	return nil
}

func failure(in *installer.Installer, err error) error {
	if in.Disk != nil {
		return fmt.Errorf("%w (disk %s is %s)", err, in.Disk.Path, in.State)
	}
	return fmt.Errorf("%w (no disk was written)", err)
}

// imageDefaults fills the image, version and volume label from the image config.
func imageDefaults(o *options) error {
	if o.image != "" && o.volume != "" {
		return nil
	}
	c, err := initd.LoadConfig(initd.ConfigPath)
	if err != nil {
		if o.image == "" {
			return fmt.Errorf("%w (outside an image pass --image and --volume-label)", err)
		}
		return nil
	}
	if o.image == "" {
		o.image = c.Image
	}
	if o.version == "" {
		o.version = c.Version
	}
	if o.volume == "" {
		o.volume = c.VolumeLabel
	}
	return nil
}

// cmdlineString rebuilds the running command line (quantix.Cmdline keeps order).
func cmdlineString(c quantix.Cmdline) string {
	var s []string
	for _, k := range c.Keys() {
		v, _ := c.Get(k)
		if v == "" && !strings.Contains(k, "=") {
			s = append(s, k)
			continue
		}
		if strings.ContainsAny(v, " \t") {
			v = `"` + v + `"`
		}
		s = append(s, k+"="+v)
	}
	return strings.Join(s, " ")
}

// runService is the install boot entry: qx-init started us because quantix.install=
// is on the kernel command line. It returns only after a successful install when
// poweroff/reboot could not be requested; failures wait for the operator.
func runService(ctx context.Context, o options, stdout, stderr io.Writer) error {
	cmdline, err := quantix.ReadCmdline()
	if err != nil {
		return err
	}
	want, ok := cmdline.Get(quantix.ParamInstall)
	if !ok || want == "" {
		return fmt.Errorf("no %s= on the kernel command line: pass --answer FILE or --interactive", quantix.ParamInstall)
	}
	logw := &teeWriter{w: []io.Writer{stderr}}
	log := slog.New(slog.NewTextHandler(logw, nil)).With("service", installer.ServiceName)
	fail := func(in *installer.Installer, err error) error {
		err = failure(in, err)
		log.Error("install failed", "err", err)
		fmt.Fprintln(stdout, quantix.FatalMarker(installer.ServiceName, err))
		fmt.Fprintf(stdout, "\nThe install FAILED: %v\nNothing was rebooted. Type reboot or poweroff on a console.\n", err)
		logw.close()
		waitOperator(ctx, log)
		return err
	}
	if err := imageDefaults(&o); err != nil {
		return fail(nil, err)
	}
	scanner := installer.Scanner{SysBlock: o.sysBlock, DevDir: o.dev, Mounts: o.mounts}

	// Find the answer-file filesystem and the boot medium; USB sticks take a while.
	var instFS, medFS *initd.Filesystem
	deadline := time.Now().Add(15 * time.Second)
	for {
		fss, _ := initd.ScanFilesystems(o.sysBlock, o.dev)
		instFS, medFS = nil, nil
		for i := range fss {
			switch fss[i].Label {
			case quantix.LabelInstall:
				if instFS == nil {
					instFS = &fss[i]
				}
			case o.volume:
				if medFS == nil && fss[i].Type == "iso9660" {
					medFS = &fss[i]
				}
			}
		}
		if (instFS != nil || want == "interactive") && (medFS != nil || o.medium != "") || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	protect := installer.Protect{VolumeLabel: o.volume, Disks: map[string]bool{}}
	if instFS != nil {
		protect.Disks[instFS.Disk] = true
		if err := mountInstall(instFS, log); err != nil {
			return fail(nil, err)
		}
		defer unix.Unmount(InstallMount, 0)
		if f, err := os.OpenFile(filepath.Join(InstallMount, LogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintf(f, "\n==== qx-install %s %s, %s=%s, %s ====\n", o.image, o.version, quantix.ParamInstall, want, time.Now().UTC().Format(time.RFC3339))
			logw.add(f)
		} else {
			log.Warn("the install log cannot be written next to the answer file", "err", err)
		}
	}
	if o.medium == "" {
		if medFS == nil {
			return fail(nil, fmt.Errorf("no boot medium: no ISO9660 filesystem labelled %s (the CD or stick this image booted from)", o.volume))
		}
		o.medium = medFS.Device
		protect.Disks[medFS.Disk] = true
	}
	med, err := installer.OpenMedium(o.medium)
	if err != nil {
		return fail(nil, err)
	}
	defer med.Close()
	cfg := installer.Config{Image: o.image, Version: o.version, VolumeLabel: o.volume, Medium: med, Scanner: scanner,
		Protect: protect, Cmdline: cmdlineString(cmdline), ProductUUID: "/sys/class/dmi/id/product_uuid", Mkfs: o.mkfs,
		Console: io.MultiWriter(stdout, fileWriter{logw})}
	if want == "interactive" {
		if cfg.Terminal, err = installer.OpenConsoles(); err != nil {
			return fail(nil, err)
		}
		// The terminal shows the plan and summary; stdout (the console again, via
		// init) gets only the markers.
		cfg.Console = io.MultiWriter(markerWriter{stdout}, fileWriter{logw})
	} else {
		if instFS == nil {
			return fail(nil, fmt.Errorf("%s=%s: no filesystem labelled %s (plug in the answer-file stick)", quantix.ParamInstall, want, quantix.LabelInstall))
		}
		rel := path.Clean("/" + want)
		if cfg.Answer, err = installer.LoadAnswer(filepath.Join(InstallMount, rel), o.image); err != nil {
			return fail(nil, err)
		}
	}
	in, err := installer.New(cfg, log)
	if err != nil {
		return fail(nil, err)
	}
	res, err := in.Run(ctx)
	if err != nil {
		return fail(in, err)
	}
	after := res.Answer.After
	if o.after != "" {
		after = o.after
	}
	logw.close()
	unix.Sync()
	if after == "none" {
		return nil
	}
	if cfg.Terminal != nil {
		cfg.Terminal.Printf("\nRemove the install medium. %s in 10 seconds.\n", after)
		time.Sleep(10 * time.Second)
	}
	return halt(after, log)
}

// mountInstall mounts the QUANTIX-INSTALL filesystem read-write (read-only when
// that fails, e.g. on a write-protected stick: the log then stays on the console).
func mountInstall(fs *initd.Filesystem, log *slog.Logger) error {
	if err := os.MkdirAll(InstallMount, 0o755); err != nil {
		return err
	}
	err := unix.Mount(fs.Device, InstallMount, fs.Type, unix.MS_NOATIME|unix.MS_NODEV|unix.MS_NOSUID, "")
	if err == nil {
		return nil
	}
	log.Warn("mount the answer-file filesystem read-write failed; trying read-only", "device", fs.Device, "err", err)
	if err := unix.Mount(fs.Device, InstallMount, fs.Type, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mount %s (%s, %s): %w", fs.Device, quantix.LabelInstall, fs.Type, err)
	}
	return nil
}

// halt asks qx-init to stop cleanly and power off or reboot; without a running
// qx-init it syncs and calls reboot(2) itself.
func halt(after string, log *slog.Logger) error {
	a := initd.ActionPoweroff
	if after == installer.AfterReboot {
		a = initd.ActionReboot
	}
	err := initd.Request(initd.ControlSocket, a)
	if err == nil {
		return nil // init stops the services and halts; exit 0 = done
	}
	log.Warn("qx-init did not take the request; halting directly", "action", after, "err", err)
	return initd.Halt(a)
}

// waitOperator blocks until "reboot" or "poweroff" is typed on a console (or
// forever when there is none), so a failed install never reboots by itself.
func waitOperator(ctx context.Context, log *slog.Logger) {
	t, err := installer.OpenConsoles()
	if err != nil {
		log.Warn("no console to wait on", "err", err)
		<-ctx.Done()
		return
	}
	for {
		t.Printf("Type reboot or poweroff: ")
		l, err := t.ReadLine(ctx)
		if err != nil {
			return
		}
		switch l {
		case installer.AfterReboot, installer.AfterPoweroff:
			_ = halt(l, log)
			return
		}
	}
}

// teeWriter copies the log to stderr and the log file next to the answer file.
type teeWriter struct {
	w     []io.Writer
	files []*os.File
}

func (t *teeWriter) add(f *os.File) { t.w = append(t.w, f); t.files = append(t.files, f) }

func (t *teeWriter) Write(p []byte) (int, error) {
	for _, w := range t.w {
		_, _ = w.Write(p)
	}
	for _, f := range t.files {
		_ = f.Sync()
	}
	return len(p), nil
}

// markerWriter passes only console marker lines (each Write is one line here).
type markerWriter struct{ w io.Writer }

func (m markerWriter) Write(p []byte) (int, error) {
	if strings.HasPrefix(string(p), quantix.MarkerPrefix) {
		return m.w.Write(p)
	}
	return len(p), nil
}

// fileWriter writes to the log files only (the console already has the text).
type fileWriter struct{ t *teeWriter }

func (f fileWriter) Write(p []byte) (int, error) {
	for _, fl := range f.t.files {
		_, _ = fl.Write(p)
	}
	return len(p), nil
}

func (t *teeWriter) close() {
	for _, f := range t.files {
		_ = f.Sync()
		_ = f.Close()
	}
	t.w, t.files = t.w[:1], nil
}
