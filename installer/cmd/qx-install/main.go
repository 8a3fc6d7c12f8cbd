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
//	qx-install convert-slots --medium M --image I --version V DISK
//	                                    move a single-slot install's boot files into
//	                                    A/B slot a (docs/design.md §16), in place
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
	"syscall"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "qx-install:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "build-boot-files" {
		if len(args) != 2 {
			return errors.New("usage: qx-install build-boot-files DIR")
		}
		return installer.BuildBootFiles(args[1])
	}
	if len(args) > 0 && args[0] == "convert-slots" {
		return runConvert(args[1:], stdout, stderr)
	}
	cmd := "install"
	if len(args) > 0 && args[0] == "disks" {
		cmd, args = "disks", args[1:]
	}
	var o installer.Options
	fs := flag.NewFlagSet("qx-install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Answer, "answer", "", "answer file (unattended install)")
	fs.BoolVar(&o.Interactive, "interactive", false, "ask on this terminal instead of reading an answer file")
	fs.StringVar(&o.Medium, "medium", "", "boot medium to copy from: ISO file, device or folder (default: the filesystem labelled with the image's volume label)")
	fs.StringVar(&o.Image, "image", "", "image to install: quantix-os or qvdc (default: "+quantix.ImageConfigPath+")")
	fs.StringVar(&o.Version, "version", "", "image version for messages (default: "+quantix.ImageConfigPath+")")
	fs.StringVar(&o.VolumeLabel, "volume-label", "", "the boot medium's volume label (default: "+quantix.ImageConfigPath+")")
	fs.StringVar(&o.SysBlock, "sys-block", "/sys/class/block", "sysfs block folder")
	fs.StringVar(&o.Dev, "dev", "/dev", "device folder")
	fs.StringVar(&o.Mounts, "mounts", "/proc/self/mounts", "mount table")
	fs.StringVar(&o.Mkfs, "mkfs", "mkfs.ext4", "mkfs.ext4 program")
	fs.StringVar(&o.After, "after", "", "after a successful install: poweroff, reboot or none (default: the answer file's; none outside service mode)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case cmd == "disks":
		disks, err := o.Scanner().Scan()
		if err != nil {
			return err
		}
		for _, d := range disks {
			fmt.Fprintln(stdout, d.Describe())
		}
		return nil
	case o.Answer == "" && !o.Interactive:
		return installer.RunService(ctx, o, stdout, stderr)
	default:
		return installer.RunShell(ctx, o, stdout, stderr)
	}
}

// runConvert converts DISK with the bootloaders of the medium (the new release's
// ISO), naming slot a as the installed image and version (the running release).
func runConvert(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("convert-slots", flag.ContinueOnError)
	fs.SetOutput(stderr)
	medium := fs.String("medium", "", "ISO, device or folder with the bootloaders to write (required)")
	image := fs.String("image", "", "the installed image: quantix-os or qvdc (required)")
	version := fs.String("version", "", "the installed version, for slot a's manifest (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *medium == "" || *version == "" || (*image != quantix.ImageQuantixOS && *image != quantix.ImageQvDC) || fs.NArg() != 1 {
		return errors.New("usage: qx-install convert-slots --medium ISO --image quantix-os|qvdc --version V DISK")
	}
	m, err := installer.OpenMedium(*medium)
	if err != nil {
		return err
	}
	defer m.Close()
	src, err := installer.ReadSource(m)
	if err != nil {
		return err
	}
	c, err := installer.ConvertSingleSlot(fs.Arg(0), src, *image, *version, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: converted to A/B slots; slot a holds %s %s (kernel sha256 %s), command line %q\n",
		fs.Arg(0), c.Slot.Image, c.Slot.Version, c.Slot.KernelSHA256[:16], c.Cmdline)
	return nil
}
