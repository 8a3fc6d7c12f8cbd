// Command qx-init is the Quantix init companion. u-root's init (PID 1) runs it as
// its uinit: it boots the image (modules, QUANTIX-CFG/DATA, hostname), supervises the
// image's services and powers off or reboots on request. It never returns while
// running as init: if it did, u-root's init would go on to start a shell.
//
//	qx-init             run as the init companion (only inside an image)
//	qx-init poweroff    ask the running qx-init to stop the services and power off
//	qx-init reboot      ... and reboot
//	qx-init services [--json]   the supervised services and their states
//	qx-init restart NAME        stop a service cleanly and start it again
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/initd"
	"github.com/quantix/quantix/services/power"
)

func main() {
	if filepath.Base(os.Args[0]) == "modprobe" {
		os.Exit(modprobe(os.Args[1:]))
	}
	if len(os.Args) > 1 {
		if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "qx-init:", err)
			os.Exit(1)
		}
		return
	}
	if os.Getpid() != 1 && os.Getppid() != 1 {
		fmt.Fprintln(os.Stderr, "qx-init: not started by init; it only runs inside a Quantix image (try qx-init poweroff|reboot)")
		os.Exit(2)
	}
	runInit(os.Stdout, os.Stderr)
}

// run handles the client subcommands.
func run(ctx context.Context, args []string, stdout, _ io.Writer) error {
	return runClient(ctx, quantix.InitClient{Socket: quantix.InitSocket}, args, stdout)
}

func runClient(ctx context.Context, c quantix.InitClient, args []string, stdout io.Writer) error {
	switch args[0] {
	case string(quantix.Poweroff), string(quantix.Reboot):
		if len(args) != 1 {
			return fmt.Errorf("%s takes no arguments", args[0])
		}
		if err := c.Power(ctx, quantix.HaltAction(args[0])); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s requested\n", args[0])
		return nil
	case quantix.InitRequestServices:
		asJSON := len(args) == 2 && args[1] == "--json"
		if len(args) > 1 && !asJSON {
			return fmt.Errorf("services: unexpected argument %q (only --json)", args[1])
		}
		svcs, err := c.Services(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			b, err := json.Marshal(quantix.ServiceList{Services: svcs})
			if err != nil {
				return fmt.Errorf("services: %w", err)
			}
			fmt.Fprintln(stdout, string(b))
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tSTATE\tPID\tSINCE\tRESTARTS\tLAST ERROR")
		for _, s := range svcs {
			pid, since := "-", "-"
			if s.PID > 0 {
				pid = strconv.Itoa(s.PID)
			}
			if !s.Since.IsZero() {
				since = s.Since.Local().Format("15:04:05")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", s.Name, s.State, pid, since, s.Restarts, s.LastError)
		}
		return tw.Flush()
	case quantix.InitRequestRestart:
		if len(args) != 2 {
			return errors.New("usage: qx-init restart NAME")
		}
		// Stopping may take the grace period (SIGTERM, then SIGKILL).
		if err := c.Restart(ctx, args[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s restarted\n", args[1])
		return nil
	default:
		return fmt.Errorf("unknown command %q (poweroff, reboot, services, restart NAME, or none to run as init)", args[0])
	}
}

// runInit never returns: every path ends in reboot(2) or power-off.
func runInit(console, logw io.Writer) {
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "init")
	action, err := func() (a quantix.HaltAction, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		cfg, err := quantix.LoadImageConfig(quantix.ImageConfigPath)
		if err != nil {
			return "", err
		}
		in, err := initd.New(*cfg, console, log)
		if err != nil {
			return "", err
		}
		return in.Run(context.Background())
	}()
	if err != nil {
		fmt.Fprintln(console, quantix.FatalMarker("init", err))
		log.Error("init failed; rebooting in 10s", "err", err)
		unix.Sync()
		time.Sleep(10 * time.Second)
		action = quantix.Reboot
	}
	log.Info("halting", "action", string(action))
	var ttys []*os.File
	for _, w := range []io.Writer{console, logw} {
		if f, ok := w.(*os.File); ok {
			ttys = append(ttys, f)
		}
	}
	power.DrainConsole(2*time.Second, ttys...)
	for {
		if err := power.Halt(action); err != nil {
			log.Error("reboot(2) failed; retrying", "err", errors.Unwrap(err))
		}
		time.Sleep(5 * time.Second)
	}
}

// modprobe serves the kernel's module requests (/sbin/modprobe -q -- NAME, e.g.
// crypto-crc32c or fs-vfat): init links /sbin/modprobe to qx-init when it starts
// (initd.LinkModprobe).
func modprobe(args []string) int {
	var names []string
	for i, a := range args {
		if a == "--" {
			names = append(names, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") {
			names = append(names, a)
		}
	}
	if len(names) == 0 {
		fmt.Fprintln(os.Stderr, "modprobe: no module named")
		return 1
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, _ := quantix.LoadImageConfig(quantix.ImageConfigPath)
	release := ""
	if cfg != nil {
		release = cfg.KernelRelease
	}
	m, err := initd.OpenModules(release, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "modprobe:", err)
		return 1
	}
	if err := m.Load(names...); err != nil {
		fmt.Fprintln(os.Stderr, "modprobe:", err)
		return 1
	}
	return 0
}
