package installer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/blockdev"
	"github.com/quantix/quantix/services/power"
)

// This file is qx-install's orchestration: the install boot entry (RunService),
// the same install from a shell (RunShell), and how either ends (Halt).

// InstallMount is where service mode mounts the QUANTIX-INSTALL filesystem.
const InstallMount = quantix.RunDir + "/install-media"

// LogName is the install log written next to the answer file.
const LogName = "qx-install.log"

// Options are qx-install's settings (its flags).
type Options struct {
	// Answer is the answer file (unattended); Interactive asks on the terminal.
	Answer      string
	Interactive bool
	// Medium is the boot medium to copy from: ISO file, device or folder (default:
	// the filesystem labelled VolumeLabel).
	Medium string
	// Image, Version and VolumeLabel describe the running image (default: the
	// image config).
	Image, Version, VolumeLabel string
	// SysBlock (/sys/class/block), Dev (/dev) and Mounts (/proc/self/mounts) are
	// where disks and mounts are found.
	SysBlock, Dev, Mounts string
	// Mkfs is the mkfs.ext4 program.
	Mkfs string
	// After is poweroff, reboot or none after a successful install ("": the answer
	// file's in service mode, none from a shell).
	After string
}

// Scanner returns the disk scanner o describes.
func (o Options) Scanner() Scanner {
	return Scanner{SysBlock: o.SysBlock, DevDir: o.Dev, Mounts: o.Mounts}
}

// RunShell installs from a shell or a test: unattended with o.Answer, or asking on
// stdin/stdout with o.Interactive.
func RunShell(ctx context.Context, o Options, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", ServiceName)
	if err := imageDefaults(&o); err != nil {
		return err
	}
	if o.Medium == "" {
		return errors.New("--medium is required outside service mode (an ISO file, a device or a folder)")
	}
	med, err := OpenMedium(o.Medium)
	if err != nil {
		return err
	}
	defer med.Close()
	cmdline, _ := quantix.ReadCmdline()
	cfg := Config{Image: o.Image, Version: o.Version, VolumeLabel: o.VolumeLabel, Medium: med, Scanner: o.Scanner(),
		Cmdline: cmdline, ProductUUID: "/sys/class/dmi/id/product_uuid", Mkfs: o.Mkfs, Console: stdout}
	if o.Interactive {
		cfg.Terminal = NewTerminal(stdout, os.Stdin)
	} else if cfg.Answer, err = LoadAnswer(o.Answer, o.Image); err != nil {
		return err
	}
	in, err := New(cfg, log)
	if err != nil {
		return err
	}
	if _, err := in.Run(ctx); err != nil {
		return in.failure(err)
	}
	if o.After != "" && o.After != "none" {
		return Halt(ctx, o.After, log)
	}
	return nil
}

// failure says how err left the target disk.
func (in *Installer) failure(err error) error {
	if in.Disk != nil {
		return fmt.Errorf("%w (disk %s is %s)", err, in.Disk.Path, in.State)
	}
	return fmt.Errorf("%w (no disk was written)", err)
}

// imageDefaults fills the image, version and volume label from the image config.
func imageDefaults(o *Options) error {
	if o.Image != "" && o.VolumeLabel != "" {
		return nil
	}
	c, err := quantix.LoadImageConfig(quantix.ImageConfigPath)
	if err != nil {
		if o.Image == "" {
			return fmt.Errorf("%w (outside an image pass --image and --volume-label)", err)
		}
		return nil
	}
	if o.Image == "" {
		o.Image = c.Image
	}
	if o.Version == "" {
		o.Version = c.Version
	}
	if o.VolumeLabel == "" {
		o.VolumeLabel = c.VolumeLabel
	}
	return nil
}

// RunService is the install boot entry: qx-init started qx-install because quantix.install=
// is on the kernel command line. It returns only after a successful install when
// poweroff/reboot could not be requested; failures wait for the operator.
func RunService(ctx context.Context, o Options, stdout, stderr io.Writer) error {
	cmdline, err := quantix.ReadCmdline()
	if err != nil {
		return err
	}
	want, ok := cmdline.Get(quantix.ParamInstall)
	if !ok || want == "" {
		return fmt.Errorf("no %s= on the kernel command line: pass --answer FILE or --interactive", quantix.ParamInstall)
	}
	logw := &teeWriter{w: []io.Writer{stderr}}
	log := slog.New(slog.NewTextHandler(logw, nil)).With("service", ServiceName)
	fail := func(in *Installer, err error) error {
		if in != nil {
			err = in.failure(err)
		} else {
			err = fmt.Errorf("%w (no disk was written)", err)
		}
		log.Error("install failed", "err", err)
		fmt.Fprintln(stdout, quantix.FatalMarker(ServiceName, err))
		fmt.Fprintf(stdout, "\nThe install FAILED: %v\nNothing was rebooted. Type reboot or poweroff on a console.\n", err)
		logw.close()
		waitOperator(ctx, log)
		return err
	}
	if err := imageDefaults(&o); err != nil {
		return fail(nil, err)
	}

	// Find the answer-file filesystem and the boot medium; USB sticks take a while.
	var instFS, medFS *blockdev.Filesystem
	deadline := time.Now().Add(15 * time.Second)
	for {
		fss, _ := blockdev.ScanFilesystems(o.SysBlock, o.Dev)
		instFS, medFS = nil, nil
		for i := range fss {
			switch fss[i].Label {
			case quantix.LabelInstall:
				if instFS == nil {
					instFS = &fss[i]
				}
			case o.VolumeLabel:
				if medFS == nil && fss[i].Type == "iso9660" {
					medFS = &fss[i]
				}
			}
		}
		if (instFS != nil || want == "interactive") && (medFS != nil || o.Medium != "") || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	protect := Protect{VolumeLabel: o.VolumeLabel, Disks: map[string]bool{}}
	if instFS != nil {
		protect.Disks[instFS.Disk] = true
		if err := mountInstall(instFS, log); err != nil {
			return fail(nil, err)
		}
		defer unix.Unmount(InstallMount, 0)
		if f, err := os.OpenFile(filepath.Join(InstallMount, LogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintf(f, "\n==== qx-install %s %s, %s=%s, %s ====\n", o.Image, o.Version, quantix.ParamInstall, want, time.Now().UTC().Format(time.RFC3339))
			logw.add(f)
		} else {
			log.Warn("the install log cannot be written next to the answer file", "err", err)
		}
	}
	if o.Medium == "" {
		if medFS == nil {
			return fail(nil, fmt.Errorf("no boot medium: no ISO9660 filesystem labelled %s (the CD or stick this image booted from)", o.VolumeLabel))
		}
		o.Medium = medFS.Device
		protect.Disks[medFS.Disk] = true
	}
	med, err := OpenMedium(o.Medium)
	if err != nil {
		return fail(nil, err)
	}
	defer med.Close()
	cfg := Config{Image: o.Image, Version: o.Version, VolumeLabel: o.VolumeLabel, Medium: med, Scanner: o.Scanner(),
		Protect: protect, Cmdline: cmdline, ProductUUID: "/sys/class/dmi/id/product_uuid", Mkfs: o.Mkfs,
		Console: io.MultiWriter(stdout, fileWriter{logw})}
	if want == "interactive" {
		if cfg.Terminal, err = OpenConsoles(); err != nil {
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
		if cfg.Answer, err = LoadAnswer(filepath.Join(InstallMount, rel), o.Image); err != nil {
			return fail(nil, err)
		}
	}
	in, err := New(cfg, log)
	if err != nil {
		return fail(nil, err)
	}
	res, err := in.Run(ctx)
	if err != nil {
		return fail(in, err)
	}
	after := res.Answer.After
	if o.After != "" {
		after = o.After
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
	return Halt(ctx, after, log)
}

// mountInstall mounts the QUANTIX-INSTALL filesystem read-write (read-only when
// that fails, e.g. on a write-protected stick: the log then stays on the console).
func mountInstall(fs *blockdev.Filesystem, log *slog.Logger) error {
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

// Halt asks qx-init to stop cleanly and power off or reboot (after is AfterReboot
// or AfterPoweroff); without a running qx-init it syncs and calls reboot(2) itself.
func Halt(ctx context.Context, after string, log *slog.Logger) error {
	a := quantix.Poweroff
	if after == AfterReboot {
		a = quantix.Reboot
	}
	// Asked even when ctx is done: init's own stop is what ends the machine cleanly.
	err := quantix.InitClient{Socket: quantix.InitSocket}.Power(context.WithoutCancel(ctx), a)
	if err == nil {
		return nil // init stops the services and halts; exit 0 = done
	}
	log.Warn("qx-init did not take the request; halting directly", "action", after, "err", err)
	return power.Halt(a)
}

// waitOperator blocks until "reboot" or "poweroff" is typed on a console (or
// forever when there is none), so a failed install never reboots by itself.
func waitOperator(ctx context.Context, log *slog.Logger) {
	t, err := OpenConsoles()
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
		case AfterReboot, AfterPoweroff:
			_ = Halt(ctx, l, log)
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
