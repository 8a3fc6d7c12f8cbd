// Command qx-vdc is the Quantix control plane: `qx-vdc serve` runs the vDC,
// `qx-vdc migrate up|status` manages its PostgreSQL schema.
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
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/migrations"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qx-vdc:", err)
		if errors.Is(err, quantix.ErrConfig) || errors.Is(err, flag.ErrHelp) {
			os.Exit(quantix.ExitConfig)
		}
		os.Exit(1)
	}
}

const usage = `usage:
  qx-vdc serve [--config FILE] [--listen ADDR] [--database-url URL] [--join-token TOKEN]...
               [--admin-token TOKEN] [--heartbeat-interval DURATION]
               [--ui-listen ADDR] [--tls-cert FILE --tls-key FILE]
  qx-vdc migrate up|status [--config FILE] [--database-url URL]`

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return fmt.Errorf("%w: no command", quantix.ErrConfig)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	switch args[0] {
	case "serve":
		cfg, err := loadConfig("serve", args[1:], stderr, true)
		if err != nil {
			return err
		}
		cfg.Stdout = stdout
		svc, err := vdc.New(cfg, log)
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	case "migrate":
		if len(args) < 2 || (args[1] != "up" && args[1] != "status") {
			fmt.Fprintln(stderr, usage)
			return fmt.Errorf("%w: migrate needs up or status", quantix.ErrConfig)
		}
		cfg, err := loadConfig("migrate "+args[1], args[2:], stderr, false)
		if err != nil {
			return err
		}
		return migrate(ctx, args[1], cfg, stdout, log)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", quantix.ErrConfig, args[0])
}

// loadConfig merges defaults < vdc.toml < flags.
func loadConfig(name string, args []string, stderr io.Writer, serve bool) (vdc.Config, error) {
	fs := flag.NewFlagSet("qx-vdc "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", quantix.VDCConfig, "vdc.toml `path`")
	listen := fs.String("listen", "", "HTTP listen `address` (default "+vdc.DefaultListen+")")
	dbURL := fs.String("database-url", "", "PostgreSQL `URL`; without a password, secrets.toml's database_password is used")
	var joinTokens multiFlag
	var adminToken *string
	var interval *time.Duration
	var uiListen, tlsCert, tlsKey *string
	if serve {
		uiListen = fs.String("ui-listen", "", "HTTPS `address` of the web UI and the API (default "+vdc.DefaultUIListen+")")
		tlsCert = fs.String("tls-cert", "", "PEM certificate `file` for --ui-listen (default: a generated self-signed one)")
		tlsKey = fs.String("tls-key", "", "PEM private key `file` for --tls-cert")
		fs.Var(&joinTokens, "join-token", "static join `token` (repeatable; labs and tests)")
		adminToken = fs.String("admin-token", "", "admin bearer `token` for an empty database; the database's is the cluster's (default: secrets.toml's hash, else generated and printed once)")
		interval = fs.Duration("heartbeat-interval", 0, "heartbeat `interval` (default 30s)")
	}
	if err := fs.Parse(args); err != nil {
		return vdc.Config{}, fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	if fs.NArg() > 0 {
		return vdc.Config{}, fmt.Errorf("%w: unexpected argument %q", quantix.ErrConfig, fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := vdc.DefaultConfig()
	if err := vdc.LoadConfigFile(*configPath, &cfg, !set["config"]); err != nil {
		return cfg, err
	}
	if set["listen"] {
		cfg.Listen = *listen
	}
	if set["database-url"] {
		cfg.DatabaseURL = *dbURL
	}
	if serve {
		if set["join-token"] {
			cfg.JoinTokens = joinTokens
		}
		if set["admin-token"] {
			cfg.AdminToken = *adminToken
		}
		if set["heartbeat-interval"] {
			cfg.HeartbeatInterval = quantix.Duration{Duration: *interval}
		}
		if set["ui-listen"] {
			cfg.UIListen = *uiListen
		}
		if set["tls-cert"] {
			cfg.TLSCert = *tlsCert
		}
		if set["tls-key"] {
			cfg.TLSKey = *tlsKey
		}
	}
	return cfg, cfg.Validate()
}

func migrate(ctx context.Context, cmd string, cfg vdc.Config, stdout io.Writer, log *slog.Logger) error {
	dbURL, err := vdc.DatabaseURLWithPassword(cfg.DatabaseURL, cfg.SecretsFile)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	if cmd == "up" {
		n, err := migrations.Up(ctx, conn, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "applied %d migration(s)\n", n)
	}
	st, err := migrations.ReadStatus(ctx, conn)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "schema version %d of %d (%d pending)\n", st.Current, st.Latest, st.Pending())
	return nil
}
