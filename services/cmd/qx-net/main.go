// Command qx-net is the Quantix network service and its CLI (docs/design.md §10):
//
//	qx-net serve                      run the service (prints the ready marker)
//	qx-net apply --config FILE        hand settings to the running service (safe apply)
//	qx-net apply --once --config FILE apply in the foreground and exit
//	qx-net confirm                    keep the applied settings (persist them)
//	qx-net rollback                   reject them: the last good settings come back now
//	qx-net status [--json]            show the state
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qx-net:", err)
		var ue usageError
		switch {
		case errors.As(err, &ue):
			os.Exit(2)
		case errors.Is(err, quantix.ErrConfig), errors.Is(err, network.ErrInvalidSettings):
			os.Exit(quantix.ExitConfig)
		default:
			os.Exit(1)
		}
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usage = `usage: qx-net serve [flags]
       qx-net apply --config FILE [--confirm-timeout 60s] [--probe-url URL]
       qx-net apply --once --config FILE
       qx-net confirm
       qx-net rollback
       qx-net status [--json]
run "qx-net <command> -h" for the flags of a command`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{usage}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(ctx, args, stdout, stderr)
	case "apply":
		return apply(ctx, args, stdout, stderr)
	case "confirm":
		return confirm(ctx, args, stdout, stderr)
	case "rollback":
		return rollback(ctx, args, stdout, stderr)
	case "status":
		return status(ctx, args, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q\n%s", cmd, usage)}
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("qx-net "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// serviceFlags are the paths and knobs of network.Config.
func serviceFlags(fs *flag.FlagSet, cfg *network.Config, level *string) {
	fs.StringVar(&cfg.PersistentPath, "persistent", quantix.NetworkConfig, "persistent network.toml (QUANTIX-CFG)")
	fs.StringVar(&cfg.SessionPath, "session", network.DefaultSessionPath, "session copy of network.toml")
	fs.StringVar(&cfg.ResolvConf, "resolv-conf", network.DefaultResolvConf, "resolv.conf to write")
	fs.StringVar(&cfg.StateFile, "state-file", network.DefaultStateFile, "JSON state file")
	fs.StringVar(&cfg.Socket, "socket", quantix.NetworkSocket, "unix socket of the service")
	fs.StringVar(&cfg.CmdlinePath, "cmdline", network.DefaultCmdlinePath, "kernel command line (for ip=)")
	fs.StringVar(&cfg.SysfsRoot, "sysfs", network.DefaultSysfsRoot, "sysfs root for the automatic interface choice")
	fs.StringVar(&cfg.NetNS, "netns", "", "network namespace path to manage (default: our own)")
	fs.StringVar(&cfg.ProbeURL, "probe-url", "", "URL checked after an apply besides the gateway (e.g. the vDC)")
	fs.DurationVar(&cfg.CheckTimeout, "check-timeout", network.DefaultCheckTimeout, "gateway/probe check timeout")
	fs.DurationVar(&cfg.DHCPRetryMax, "dhcp-retry-max", 32*time.Second, "longest wait between DHCP discovers")
	fs.StringVar(&cfg.Hostname, "hostname", "", "host name sent to the DHCP server (default: the system's)")
	fs.StringVar(&cfg.Bridge, "bridge", "", "the image's default for network.toml's bridge key: the bridge holding the address (\"\": on the NIC)")
	fs.StringVar(level, "log-level", "info", "debug, info, warn or error")
}

func logger(stderr io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Sprintf("--log-level %q: use debug, info, warn or error", level)}
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l})), nil
}

func defaultHostname(cfg *network.Config) {
	if cfg.Hostname != "" {
		return
	}
	if h, err := os.Hostname(); err == nil && h != "(none)" && h != "localhost" && quantix.ValidateHostname(h) == nil {
		cfg.Hostname = h
	}
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg network.Config
	var level string
	fs := newFlags("serve", stderr)
	serviceFlags(fs, &cfg, &level)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := logger(stderr, level)
	if err != nil {
		return err
	}
	defaultHostname(&cfg)
	cfg.Stdout = stdout
	s, err := network.New(cfg, log)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

func apply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg network.Config
	var level, file string
	var once bool
	var confirmTimeout time.Duration
	fs := newFlags("apply", stderr)
	serviceFlags(fs, &cfg, &level)
	fs.StringVar(&file, "config", "", "network.toml to apply (required)")
	fs.BoolVar(&once, "once", false, "apply in the foreground without the service; exit 0 once the kernel state is reached")
	fs.DurationVar(&confirmTimeout, "confirm-timeout", network.DefaultConfirm, "roll back unless `qx-net confirm` comes within this; 0 commits at once if the gateway answers")
	if err := parse(fs, args); err != nil {
		return err
	}
	if file == "" {
		return usageError{"apply: --config FILE is required"}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if !once {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		defer cancel()
		res, err := network.Client{Socket: cfg.Socket}.Apply(ctx, file, data, confirmTimeout, cfg.ProbeURL)
		if err != nil {
			if res.RolledBack {
				printStatus(stdout, res.Status)
			}
			return err
		}
		printStatus(stdout, res.Status)
		switch {
		case res.Committed:
			fmt.Fprintln(stdout, "committed: saved to", res.SavedTo)
		case !res.GatewayReachable:
			fmt.Fprintf(stdout, "WARNING: %s\nrolls back at %s unless `qx-net confirm`\n", res.CheckError, res.Deadline.Format(time.RFC3339))
			return fmt.Errorf("applied, but the check failed: %s", res.CheckError)
		default:
			fmt.Fprintf(stdout, "applied; gateway reachable; rolls back at %s unless `qx-net confirm`\n", res.Deadline.Format(time.RFC3339))
		}
		return nil
	}
	settings, err := network.Parse(file, data)
	if err != nil {
		return err
	}
	if _, err := (network.Client{Socket: cfg.Socket}).Status(ctx); err == nil {
		return fmt.Errorf("apply --once: qx-net serve is running on %s; use qx-net apply without --once", cfg.Socket)
	}
	log, err := logger(stderr, level)
	if err != nil {
		return err
	}
	defaultHostname(&cfg)
	cfg.Settings, cfg.Once = &settings, true
	s, err := network.New(cfg, log)
	if err != nil {
		return err
	}
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("apply %s: %w", file, err)
	}
	printStatus(stdout, s.Status())
	return nil
}

func confirm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("confirm", stderr)
	socket := fs.String("socket", quantix.NetworkSocket, "unix socket of the service")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := network.Client{Socket: *socket}.Confirm(ctx)
	if err != nil {
		return err
	}
	printStatus(stdout, st)
	fmt.Fprintln(stdout, "confirmed")
	return nil
}

// rollback rejects the pending settings: the service restores the last good ones
// at once and answers when they are verified.
func rollback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollback", stderr)
	socket := fs.String("socket", quantix.NetworkSocket, "unix socket of the service")
	if err := parse(fs, args); err != nil {
		return err
	}
	// A DHCP configuration is verified once its lease is back: up to its timeout.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	st, err := network.Client{Socket: *socket}.Rollback(ctx, "qx-net rollback")
	if err != nil {
		if st.LastRollback != nil {
			printStatus(stdout, st)
		}
		return err
	}
	printStatus(stdout, st)
	fmt.Fprintln(stdout, "rolled back")
	return nil
}

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	socket := fs.String("socket", quantix.NetworkSocket, "unix socket of the service")
	asJSON := fs.Bool("json", false, "print JSON (network.Status)")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := network.Client{Socket: *socket}.Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st network.Status) {
	tf := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%s (in %s)", t.Format(time.RFC3339), time.Until(t).Round(time.Second))
	}
	or := func(s, def string) string {
		if s == "" {
			return def
		}
		return s
	}
	fmt.Fprintf(w, "interface:       %s (%s)\n", or(st.Interface, "-"), or(st.MAC, "-"))
	if st.Port != "" {
		fmt.Fprintf(w, "bridge port:     %s\n", st.Port)
	}
	fmt.Fprintf(w, "mode:            %s (from %s: %s)\n", st.Mode, st.ConfigOrigin, st.ConfigSource)
	fmt.Fprintf(w, "source:          %s\n", or(st.Source, "-"))
	fmt.Fprintf(w, "address:         %s\n", or(st.Address, "-"))
	fmt.Fprintf(w, "gateway:         %s\n", or(st.Gateway, "-"))
	fmt.Fprintf(w, "default routes:  %s\n", or(strings.Join(st.DefaultRoutes, "; "), "none"))
	fmt.Fprintf(w, "kernel addrs:    %s\n", or(strings.Join(st.KernelAddresses, " "), "none"))
	fmt.Fprintf(w, "dns:             %s\n", or(strings.Join(st.DNS, " "), "-"))
	if d := st.DHCP; d != nil {
		fmt.Fprintf(w, "dhcp state:      %s (first-lease timeout %s, fallback %s)\n", d.State, d.Timeout, d.Fallback)
		fmt.Fprintf(w, "lease:           %s from server %s, %d renewals\n", or(d.Address, "-"), or(d.Server, "-"), d.Renewals)
		fmt.Fprintf(w, "lease T1:        %s\n", tf(d.T1))
		fmt.Fprintf(w, "lease T2:        %s\n", tf(d.T2))
		fmt.Fprintf(w, "lease expiry:    %s\n", tf(d.Expiry))
	}
	if p := st.Pending; p != nil {
		check := "not checked yet"
		if p.Checked {
			check = "gateway reachable"
			if !p.GatewayReachable {
				check = "CHECK FAILED: " + p.CheckError
			}
		}
		fmt.Fprintf(w, "pending:         %s, %s; rolls back at %s unless confirmed\n", p.Config, check, tf(p.Deadline))
	} else {
		fmt.Fprintf(w, "pending:         none\n")
	}
	if r := st.LastRollback; r != nil {
		v := "verifying"
		if r.Done {
			v = "verified"
			if !r.Verified {
				v = "VERIFICATION FAILED: " + r.Error
			}
		}
		fmt.Fprintf(w, "last rollback:   %s to %s (%s): %s\n", r.At.Format(time.RFC3339), r.To, v, r.Reason)
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "last error:      %s (%s)\n", st.LastError, st.LastErrorAt.Format(time.RFC3339))
	}
}
