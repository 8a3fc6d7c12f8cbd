// Command qx-console is the Quantix console UI (DCUI). init starts one per terminal:
// the image's on tty1, and one named console-serial on a serial port when
// /quantix/console/console.toml (serial = "ttyS1", baud = 115200) or the kernel
// parameter quantix.console=ttyS1,115200 asks for it:
//
//	qx-console --name console-tty1 --tty /dev/tty1
//	qx-console --name console-serial --tty /dev/ttyS1 --baud 115200
//
// It opens the terminal itself, makes it its controlling terminal and draws the
// console screens on it; logs go to stderr. Helper commands for the installer and
// scripts:
//
//	qx-console hash-password            read a password on stdin, print its hash
//	qx-console set-password [--password-file F]   read a password on stdin, store it
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/console"
)

type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qx-console:", err)
		var ue usageError
		if errors.As(err, &ue) || errors.Is(err, console.ErrNoTTY) {
			os.Exit(quantix.ExitConfig) // init shows a fatal marker and retries slowly
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return runTool(args, stdin, stdout, stderr)
	}
	fl := flag.NewFlagSet("qx-console", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var c console.Config
	fl.StringVar(&c.TTY, "tty", "", "terminal `device` to run on (/dev/tty1, /dev/ttyS1); empty: stdin/stdout")
	fl.StringVar(&c.Name, "name", "console", "service `name` in the ready marker (init's name for this console)")
	fl.IntVar(&c.Baud, "baud", 0, "serial line speed (0: leave as it is)")
	fl.StringVar(&c.Image, "image", "", "image name (default: from the image config)")
	fl.StringVar(&c.Version, "image-version", "", "image version (default: from the image config)")
	fl.StringVar(&c.ImageConfig, "image-config", "", "qx-init's image config (default /etc/quantix/image.toml)")
	fl.StringVar(&c.PasswordFile, "password-file", "", "console password hash (default "+console.DefaultPasswordFile+")")
	fl.StringVar(&c.HostnameFile, "hostname-file", "", "persistent hostname file (default /quantix/hostname)")
	fl.StringVar(&c.EtcHostname, "etc-hostname", "/etc/hostname", "session hostname file (empty: skip)")
	fl.StringVar(&c.NetworkSocket, "network-socket", "", "network service socket (default /run/quantix/network.sock)")
	fl.StringVar(&c.NetworkConfig, "network-config", "", "persistent network.toml (default /quantix/network/network.toml)")
	fl.StringVar(&c.InitSocket, "init-socket", "", "qx-init control socket (default /run/quantix/init.sock)")
	fl.StringVar(&c.LogDir, "log-dir", "", "service logs (default /var/log/quantix)")
	fl.StringVar(&c.ConfigDir, "config-dir", "", "QUANTIX-CFG mount point (default /quantix)")
	fl.StringVar(&c.MountInfo, "mountinfo", "", "mount table (default /proc/self/mountinfo)")
	fl.StringVar(&c.AgentURL, "agent-url", "", "local agent status base URL on Quantix-OS, e.g. http://127.0.0.1:9101")
	fl.StringVar(&c.VDCURL, "vdc-url", "", "local vDC base URL on QvDC (default http://127.0.0.1:8080)")
	fl.StringVar(&c.VDCUIURL, "vdc-ui-url", "", "vDC web UI base URL on QvDC, for its scheme and port (default: as the vDC's ready marker says)")
	fl.DurationVar(&c.Refresh, "refresh", 0, "status refresh period (default 2s)")
	fl.DurationVar(&c.ConfirmTimeout, "confirm-timeout", 0, "time to confirm a network change before it rolls back (default 60s)")
	fl.DurationVar(&c.Repaint, "repaint", 0, "redraw the whole screen this often (VGA consoles that others print on); 0: only on Ctrl-L")
	fl.DurationVar(&c.IdleLock, "idle-lock", 0, "lock the console after this long without a key (default 5m)")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fl.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fl.Arg(0))}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if c.TTY == "" {
		c.In, c.Out = stdin, stdout
	} else {
		c.Stdout = stdout
	}
	svc, err := console.New(c, log)
	if err != nil {
		return usageError{err}
	}
	return svc.Run(ctx)
}

func readPassword(stdin io.Reader) (string, error) {
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && (!errors.Is(err, io.EOF) || line == "") {
		return "", fmt.Errorf("read password from stdin: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func runTool(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("qx-console "+args[0], flag.ContinueOnError)
	fl.SetOutput(stderr)
	file := fl.String("password-file", console.DefaultPasswordFile, "console password hash `file`")
	if err := fl.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	switch args[0] {
	case "hash-password":
		pw, err := readPassword(stdin)
		if err != nil {
			return err
		}
		if err := console.CheckNewPassword(pw); err != nil {
			return usageError{err}
		}
		h, err := console.HashPassword(pw)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, h)
		return nil
	case "set-password":
		pw, err := readPassword(stdin)
		if err != nil {
			return err
		}
		if err := (console.PasswordStore{Path: *file}).Set(pw); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "console password saved to", *file)
		return nil
	}
	return usageError{fmt.Errorf("unknown command %q (hash-password, set-password, or flags to run the console)", args[0])}
}
