// Command qx-libvirtd is Quantix-OS's libvirt service, supervised by init: it
// mounts the hypervisor extension, prepares libvirt's state on QUANTIX-DATA, runs
// libvirtd on its local unix socket and prints
// `QUANTIX: ready service=libvirtd version=<libvirt> qemu=<qemu> persistent=<bool>`
// once libvirt answers API calls and the default storage pool runs. It exits
// non-zero when libvirtd dies, so init restarts it.
//
//	qx-libvirtd [--libvirtd PATH] [--socket PATH] [--extension FILE|-] [--data-dir DIR]
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

	"github.com/quantix/quantix/services/libvirtd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	fmt.Fprintln(os.Stderr, "qx-libvirtd: "+err.Error())
	os.Exit(1)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("qx-libvirtd", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var cfg libvirtd.Config
	fl.StringVar(&cfg.Libvirtd, "libvirtd", "", "libvirt's daemon (default /usr/sbin/libvirtd)")
	fl.StringVar(&cfg.Socket, "socket", "", "libvirtd's read-write socket (default /run/libvirt/libvirt-sock)")
	fl.StringVar(&cfg.Extension, "extension", "", `squashfs with libvirt and QEMU to mount first ("-": none)`)
	fl.StringVar(&cfg.DataDir, "data-dir", "", "QUANTIX-DATA's mount point (default /var/lib/quantix)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	cfg.Args = []string{"--config", "/etc/libvirt/libvirtd.conf"}
	cfg.Stdout, cfg.Stderr = stdout, stderr
	svc, err := libvirtd.New(cfg, slog.New(slog.NewTextHandler(stderr, nil)).With("service", libvirtd.Name))
	if err != nil {
		return err
	}
	return svc.Run(ctx)
}
