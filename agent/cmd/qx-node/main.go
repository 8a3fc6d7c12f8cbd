// Command qx-node is the Quantix node agent: it registers the host with the vDC,
// heartbeats and reports the libvirt inventory. See package agent.
//
// Configuration, lowest precedence first: image defaults, the kernel command line
// (quantix.vdc=, quantix.token=, quantix.hostname=), /quantix/node/agent.toml, flags.
// Exit status 78 (EX_CONFIG) means the configuration is wrong.
//
// `qx-node shutdown-guests [--timeout 60s] [--libvirt-uri URI]` is the clean host
// power-off of the guests (docs/design.md §14): ACPI shutdown of every running
// guest, forced off after the timeout, while the agent starts none (the file
// quantix.GuestsStoppingFile). Quantix-OS's init runs it as a halt hook.
//
// `qx-node upgrade status|stage <bundle folder>|activate` is the operator's A/B
// upgrade on the node itself, without the vDC (docs/design.md §16): status prints
// init's slots, stage has init verify a release bundle and write it into the other
// slot, activate reboots into the staged slot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/agent/hypervisor"
	"github.com/quantix/quantix/agent/nodeos"
	"github.com/quantix/quantix/agent/vms"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "qx-node:", err)
		if errors.Is(err, quantix.ErrConfig) {
			os.Exit(quantix.ExitConfig)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "shutdown-guests" {
		return shutdownGuests(ctx, args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "upgrade" {
		return upgrade(ctx, args[1:], stdout, stderr)
	}
	fl := flag.NewFlagSet("qx-node", flag.ContinueOnError)
	fl.SetOutput(stderr)
	configPath := fl.String("config", quantix.AgentConfig, "agent configuration `file` (TOML)")
	controlPlane := fl.String("control-plane", "", "vDC `URL`, e.g. https://vdc.example:8443")
	joinToken := fl.String("join-token", "", "join `token` for the first registration")
	httpListen := fl.String("http-listen", "", "serve /healthz, /status and /metrics on `host:port`")
	stateDir := fl.String("state-dir", quantix.NodeStateDir, "`folder` holding identity.toml")
	iface := fl.String("interface", "", "management `interface` (name or MAC; default: automatic)")
	libvirtURI := fl.String("libvirt-uri", "", "local libvirt `URI` (default "+hypervisor.DefaultURI+")")
	register := fl.Bool("register", false, "register once, send the inventory, print the ready marker and exit")
	hostname := fl.String("hostname", "", "register under this `name` instead of the kernel's hostname")
	cmdlinePath := fl.String("cmdline", "/proc/cmdline", "kernel command line `file`")
	productUUID := fl.String("product-uuid", agent.DefaultProductUUIDPath, "SMBIOS product UUID `file`, read when the identity is created")
	debug := fl.Bool("debug", false, "log debug messages")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", quantix.ErrConfig, fl.Args())
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var cl quantix.Cmdline
	if data, err := os.ReadFile(*cmdlinePath); err == nil {
		cl = quantix.ParseCmdline(string(data))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read kernel command line %s: %w", *cmdlinePath, err)
	}
	file, err := agent.Load(*configPath)
	if err != nil {
		return err
	}
	var given agent.FileConfig
	fl.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "control-plane":
			given.ControlPlane = *controlPlane
		case "join-token":
			given.JoinToken = *joinToken
		case "http-listen":
			given.HTTPListen = *httpListen
		case "interface":
			given.Interface = *iface
		case "libvirt-uri":
			given.LibvirtURI = *libvirtURI
		}
	})
	if err := given.ValidateFields(); err != nil {
		return fmt.Errorf("%w: flags: %w", quantix.ErrConfig, err)
	}
	cmdline := agent.CmdlineFrom(cl)
	cfg := agent.Resolve(cmdline, file, given)
	cfg.StateDir = *stateDir
	cfg.ProductUUIDPath = *productUUID
	cfg.Once = *register
	cfg.Stdout = stdout
	cfg.Hostname, err = agent.ResolveHostname(*hostname, os.Hostname, cmdline.Hostname)
	if err != nil {
		return err
	}
	if cfg.ControlPlane == "" && !cfg.Once {
		// A live-booted node nobody configured yet: not a crash-looping error, but a
		// visible state. init counts the service as done; the operator configures the
		// vDC (console, agent.toml) and restarts the agent.
		msg := fmt.Sprintf("no vDC configured: set control_plane in %s or %s= on the kernel command line, then restart the agent", *configPath, quantix.ParamVDC)
		log.Warn("not starting", "reason", msg)
		fmt.Fprintln(stdout, quantix.WarningMarker("agent", msg))
		return nil
	}
	svc, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	log.Info("starting", "version", quantix.Version, "hostname", svc.Hostname(), "vdc", cfg.ControlPlane,
		"libvirt_uri", cfg.LibvirtURI, "state_dir", cfg.StateDir, "machine_id", svc.Identity().MachineID)
	return svc.Run(ctx)
}

// shutdownGuests shuts the host's running guests down (ACPI, then force).
func shutdownGuests(ctx context.Context, args []string, stderr io.Writer) error {
	fl := flag.NewFlagSet("qx-node shutdown-guests", flag.ContinueOnError)
	fl.SetOutput(stderr)
	timeout := fl.Duration("timeout", 60*time.Second, "how long guests get for an ACPI shutdown before they are forced off")
	libvirtURI := fl.String("libvirt-uri", hypervisor.DefaultURI, "local libvirt `URI`")
	marker := fl.String("marker", quantix.GuestsStoppingFile, "`file` that keeps the agent from starting guests meanwhile (kept when run by init at a halt)")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	if fl.NArg() > 0 || *timeout <= 0 {
		return fmt.Errorf("%w: usage: qx-node shutdown-guests [--timeout 60s] [--libvirt-uri URI]", quantix.ErrConfig)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	mon, err := hypervisor.New(hypervisor.Config{URI: *libvirtURI}, log.With("component", "libvirt"))
	if err != nil {
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go mon.Run(ctx)
	<-mon.Tried()
	lv := mon.Conn()
	if lv == nil {
		return fmt.Errorf("shutdown guests: libvirt %s: %s", *libvirtURI, mon.Status().Reason)
	}
	// The agent runs on during a halt: it must not start what is being stopped.
	if err := quantix.WriteFileAtomic(*marker, []byte("shutting guests down\n"), 0o644); err != nil {
		return fmt.Errorf("shutdown guests: %w", err)
	}
	if os.Getenv("QUANTIX_HALT") == "" {
		// Run by hand, not by init's halt hook: the host stays up.
		defer os.Remove(*marker)
	}
	forced, err := vms.ShutdownAll(ctx, lv, *timeout, log)
	if err != nil {
		return fmt.Errorf("shutdown guests: %w", err)
	}
	log.Info("guests shut down", "forced_off", forced)
	return nil
}

const upgradeUsage = "usage: qx-node upgrade status | stage <bundle folder> | activate"

// upgrade is the operator's A/B upgrade through init's control socket.
func upgrade(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("qx-node upgrade", flag.ContinueOnError)
	fl.SetOutput(stderr)
	socket := fl.String("init-socket", quantix.InitSocket, "qx-init's control `socket`")
	dataDir := fl.String("data-dir", quantix.DataDir, "QUANTIX-DATA's mount `folder`, where the agent keeps the vDC's upgrade order")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	ic := quantix.InitClient{Socket: *socket}
	switch a := fl.Args(); {
	case len(a) == 1 && a[0] == "status":
		st, err := ic.Slots(ctx)
		if err != nil {
			return fmt.Errorf("upgrade status: %w", err)
		}
		st.Write(stdout)
		if err := nodeos.WriteOrder(stdout, *dataDir); err != nil {
			return fmt.Errorf("upgrade status: %w", err)
		}
		return nil
	case len(a) == 2 && a[0] == "stage":
		dir, err := filepath.Abs(a[1])
		if err != nil {
			return fmt.Errorf("upgrade stage: %w", err)
		}
		st, err := ic.Stage(ctx, dir)
		if err != nil {
			return fmt.Errorf("upgrade stage: %w", err)
		}
		fmt.Fprintf(stdout, "staged %s %s (signed by %s) into slot %s in %.1f s\n", st.Image, st.Version, st.SignedBy, st.Slot, st.Seconds)
		fmt.Fprintln(stdout, "reboot to activate it: qx-node upgrade activate (it boots as a trial and falls back to this release if it fails)")
		return nil
	case len(a) == 1 && a[0] == "activate":
		st, err := ic.Slots(ctx)
		if err != nil {
			return fmt.Errorf("upgrade activate: %w", err)
		}
		next, err := nodeos.Staged(st)
		if err != nil {
			return fmt.Errorf("upgrade activate: %w", err)
		}
		fmt.Fprintf(stdout, "rebooting into slot %s (%s %s)\n", next.Slot, next.Image, next.Version)
		if err := ic.Power(ctx, quantix.Reboot); err != nil {
			return fmt.Errorf("upgrade activate: %w", err)
		}
		return nil
	}
	return fmt.Errorf("%w: %s", quantix.ErrConfig, upgradeUsage)
}
