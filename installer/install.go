package installer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// ServiceName is the installer's name in markers and logs.
const ServiceName = "install"

// Config is one install.
type Config struct {
	// Image is the running image (quantix.ImageQuantixOS or quantix.ImageQvDC);
	// VolumeLabel its ISO label, protected as the boot medium.
	Image, Version, VolumeLabel string
	// Answer is a validated answer file (unattended); nil with Terminal set asks.
	Answer *Answer
	// Terminal runs the interactive interview; nil means unattended.
	Terminal *Terminal
	Medium   Medium
	Scanner  Scanner
	// Protect names disks never to write besides those carrying VolumeLabel or
	// QUANTIX-INSTALL.
	Protect Protect
	// Cmdline is the running kernel command line (the installed one derives from it).
	Cmdline quantix.Cmdline
	// ProductUUID is the SMBIOS product UUID file (machine_id of a fresh identity).
	ProductUUID string
	// Mkfs is mkfs.ext4 (default from PATH).
	Mkfs string
	// Console receives the markers, the plan and the summary (stdout).
	Console io.Writer
}

// Result describes a finished install.
type Result struct {
	Target   *Disk
	Plan     Plan
	Answer   *Answer
	Verified *Verified
	Steps    []Step
	Took     time.Duration
	Warnings []string
}

// Installer runs one install.
type Installer struct {
	cfg Config
	log *slog.Logger
	// Disk is the chosen target, once known (for failure messages).
	Disk *Disk
	// State is how a failure left the target disk.
	State State
}

// New checks cfg.
func New(cfg Config, log *slog.Logger) (*Installer, error) {
	if cfg.Image != quantix.ImageQuantixOS && cfg.Image != quantix.ImageQvDC {
		return nil, fmt.Errorf("installer: unknown image %q", cfg.Image)
	}
	if cfg.Medium == nil {
		return nil, errors.New("installer: no boot medium to copy the kernel and bootloader from")
	}
	if cfg.Answer == nil && cfg.Terminal == nil {
		return nil, errors.New("installer: neither an answer file nor a terminal")
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.Protect.VolumeLabel == "" {
		cfg.Protect.VolumeLabel = cfg.VolumeLabel
	}
	return &Installer{cfg: cfg, log: log, State: StateUntouched}, nil
}

// Title is the boot menu title of an image.
func Title(image string) string {
	if image == quantix.ImageQvDC {
		return "QvDC"
	}
	return "Quantix OS"
}

func (in *Installer) say(format string, a ...any) {
	fmt.Fprintf(in.cfg.Console, format+"\n", a...)
	if t := in.cfg.Terminal; t != nil && t.out != in.cfg.Console {
		t.Printf(format+"\n", a...)
	}
}

// Run installs. Everything that can fail without touching the disk (answer,
// medium, disk choice, configuration, plan) happens before the first write.
func (in *Installer) Run(ctx context.Context) (*Result, error) {
	t0 := time.Now()
	cfg := in.cfg
	src, err := ReadSource(cfg.Medium)
	if err != nil {
		return nil, err
	}
	in.log.Info("boot medium read", "medium", src.From, "kernel_sha256", sum(src.Kernel)[:16], "initrd_sha256", sum(src.Initrd)[:16])
	disks, err := cfg.Scanner.Scan()
	if err != nil {
		return nil, err
	}
	for _, d := range disks {
		in.log.Info("disk", "disk", d.Describe())
	}
	var a *Answer
	var target *Disk
	var warnings []string
	if cfg.Terminal != nil {
		a, target, err = Interview(ctx, cfg.Terminal, disks, cfg.Image, cfg.Protect)
		if err != nil {
			return nil, err
		}
		warnings = StaleWarnings(disks, target)
	} else {
		a = cfg.Answer
		target, warnings, err = SelectTarget(disks, a.Target, a.Wipe, cfg.Protect)
		if err != nil {
			return nil, err
		}
	}
	in.Disk = target
	for _, w := range warnings {
		in.say("warning: %s", w)
		in.log.Warn("stale labels", "msg", w)
	}
	files, err := BuildConfig(a, cfg.Image, cfg.ProductUUID)
	if err != nil {
		return nil, err
	}
	plan, err := NewPlan(target.Size)
	if err != nil {
		return nil, err
	}
	job := Job{Plan: plan, Target: target.Path, Source: src, Config: files, Title: Title(cfg.Image), Image: cfg.Image, Version: cfg.Version,
		Cmdline: InstalledCmdline(cfg.Cmdline, plan.DiskGUID), Mkfs: cfg.Mkfs}
	in.say("Installing %s %s on %s (hostname %s)", Title(cfg.Image), cfg.Version, target.Describe(), a.Hostname)
	in.say("%s", strings.TrimRight(plan.String(), "\n"))
	in.say("Configuration on %s: %s", quantix.LabelConfig, strings.Join(files.Names(), ", "))
	in.log.Info("plan", "target", target.Path, "disk_guid", plan.DiskGUID, "cmdline", job.Cmdline)
	if cfg.Terminal != nil {
		if err := Confirm(ctx, cfg.Terminal, target); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w, err := NewWriter(job, in.log)
	if err != nil {
		return nil, err
	}
	for _, m := range target.Mounts {
		in.log.Info("unmounting an earlier install's filesystem on the target", "dir", m)
		if err := unix.Unmount(m, 0); err != nil {
			return nil, fmt.Errorf("unmount %s (on %s): %w", m, target.Path, err)
		}
	}
	err = w.Write()
	if err == nil {
		var v *Verified
		if v, err = Verify(job, true); err == nil {
			if err = w.Finish(); err == nil {
				v, err = Verify(job, false)
			}
		}
		if err == nil {
			res := &Result{Target: target, Plan: plan, Answer: a, Verified: v, Steps: w.Steps, Took: time.Since(t0), Warnings: warnings}
			in.summary(res)
			return res, nil
		}
		in.State = StateIncomplete
		return nil, err
	}
	var we *WriteError
	if errors.As(err, &we) {
		in.State = we.State
	}
	return nil, err
}

func (in *Installer) summary(r *Result) {
	in.say("")
	in.say("Install complete in %.1fs: %s %s on %s", r.Took.Seconds(), Title(in.cfg.Image), in.cfg.Version, r.Target.Path)
	in.say("  hostname      %s", r.Answer.Hostname)
	in.say("  disk GUID     %s (kernel command line %s=...)", r.Plan.DiskGUID, quantix.ParamDisk)
	in.say("  kernel        sha256 %s", r.Verified.KernelSHA256)
	in.say("  initramfs     sha256 %s", r.Verified.InitrdSHA256)
	for _, c := range r.Verified.Checks {
		in.say("  verified      %s", c)
	}
	for _, s := range r.Steps {
		in.say("  step %-50s %6.2fs", s.Name, s.Took.Seconds())
	}
	fmt.Fprintln(in.cfg.Console, quantix.FormatMarker(quantix.MarkerInstallComplete,
		"target", r.Target.Path, "hostname", r.Answer.Hostname, "disk_guid", r.Plan.DiskGUID,
		"seconds", fmt.Sprintf("%.1f", r.Took.Seconds()), "after", r.Answer.After))
}
