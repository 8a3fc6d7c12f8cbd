// Command qx-postgres is the QvDC's PostgreSQL service, supervised by init.
//
//	qx-postgres [serve] [flags]     bootstrap and run the server until SIGTERM
//	qx-postgres prepare-disk [flags] find QUANTIX-DATA, format a blank configured device
//
// serve prints `QUANTIX: ready service=postgres data=<dir> version=<major>` on stdout
// once the vDC can connect; logs go to stderr. Exit status 78 means an operator must
// act (configuration, foreign data, another PostgreSQL major version).
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
	"github.com/quantix/quantix/services/postgres"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "qx-postgres: "+err.Error())
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case errors.Is(err, quantix.ErrConfig):
		os.Exit(quantix.ExitConfig)
	}
	os.Exit(1)
}

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", postgres.Name)
	switch cmd {
	case "serve":
		cfg, err := parseFlags("serve", args, stderr, true)
		if err != nil {
			return err
		}
		cfg.Stdout, cfg.Stderr = stdout, stderr
		cfg.Trial = bootTrial(log)
		svc, err := postgres.New(cfg, log)
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	case "prepare-disk":
		cfg, err := parseFlags("prepare-disk", args, stderr, false)
		if err != nil {
			return err
		}
		res, err := postgres.PrepareDataDisk(ctx, cfg.DiskConfig, log)
		if err != nil {
			return err
		}
		switch res.Action {
		case postgres.DiskFormat:
			fmt.Fprintf(stdout, "formatted %s as QUANTIX-DATA\n", res.Device)
		case postgres.DiskUse:
			fmt.Fprintf(stdout, "QUANTIX-DATA is %s\n", res.Device)
		default:
			fmt.Fprintln(stdout, "no QUANTIX-DATA device")
		}
		return nil
	}
	return fmt.Errorf("%w: unknown command %q (want serve or prepare-disk)", errUsage, cmd)
}

// parseFlags merges the defaults, the config file and the flags (in that order).
func parseFlags(name string, args []string, stderr io.Writer, serve bool) (postgres.Config, error) {
	fs := flag.NewFlagSet("qx-postgres "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", postgres.DefaultConfigFile, "configuration file (TOML; optional at its default path)")
	var (
		binDir, dataRoot, dataDir, socketDir, secrets, superPW, device string
		port                                                           int
		formatBlank, mountData                                         bool
	)
	if serve {
		fs.StringVar(&binDir, "bin-dir", "", "PostgreSQL binaries (default "+postgres.DefaultBinDir+")")
		fs.StringVar(&dataRoot, "data-root", "", "QUANTIX-DATA mount point (default /var/lib/quantix)")
		fs.StringVar(&dataDir, "data-dir", "", "cluster folder (default "+postgres.DefaultDataDir+")")
		fs.StringVar(&socketDir, "socket-dir", "", "unix socket folder (default "+postgres.DefaultSocketDir+")")
		fs.IntVar(&port, "port", 0, "TCP port on 127.0.0.1 and ::1 (default 5432)")
		fs.StringVar(&secrets, "secrets", "", "secrets.toml holding database_password (default /quantix/vdc/secrets.toml)")
		fs.StringVar(&superPW, "superuser-password-file", "", "superuser password file (default "+postgres.DefaultSuperuserPasswordFile+")")
	}
	fs.StringVar(&device, "data-device", "", "blank block device that may become QUANTIX-DATA")
	fs.BoolVar(&formatBlank, "format-blank-data", false, "allow formatting data-device when it is blank")
	if serve {
		fs.BoolVar(&mountData, "mount-data", false, "mount QUANTIX-DATA (formatting a blank data-device first, if allowed) when init has not")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return postgres.Config{}, err
		}
		return postgres.Config{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return postgres.Config{}, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg, err := postgres.LoadConfigFile(*configFile, postgres.DefaultConfig(), !set["config"])
	if err != nil {
		return cfg, err
	}
	for name, apply := range map[string]func(){
		"bin-dir":                 func() { cfg.BinDir = binDir },
		"data-root":               func() { cfg.DataRoot = dataRoot },
		"data-dir":                func() { cfg.DataDir = dataDir },
		"socket-dir":              func() { cfg.SocketDir = socketDir },
		"port":                    func() { cfg.Port = port },
		"secrets":                 func() { cfg.Secrets = secrets },
		"superuser-password-file": func() { cfg.SuperuserPasswordFile = superPW },
		"data-device":             func() { cfg.Device = device },
		"format-blank-data":       func() { cfg.FormatBlank = formatBlank },
		"mount-data":              func() { cfg.Mount = mountData },
	} {
		if set[name] {
			apply()
		}
	}
	if !serve && cfg.Device != "" && cfg.Device[0] != '/' {
		return cfg, fmt.Errorf("%w: data_device must be an absolute path, got %q", quantix.ErrConfig, cfg.Device)
	}
	return cfg, nil
}

// bootTrial is the A/B trial state of this boot: quantix.trial=1 on the kernel
// command line, and the running release from the image configuration. Outside an
// installed image (no image configuration) there is no trial rule to apply.
func bootTrial(log *slog.Logger) postgres.Trial {
	img, err := quantix.LoadImageConfig(quantix.ImageConfigPath)
	if err != nil {
		log.Info("no image configuration: the database is not guarded across A/B trials", "err", err)
		return postgres.Trial{}
	}
	cmdline, _ := quantix.ReadCmdline()
	if !quantix.ValidSlot(cmdline.Value(quantix.ParamSlot)) {
		return postgres.Trial{} // a live boot: no slots, no trials
	}
	return postgres.Trial{On: cmdline.Value(quantix.ParamTrial) == "1", Version: img.Version}
}
