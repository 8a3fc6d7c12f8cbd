// Package vdc is the Quantix control plane service (qx-vdc serve): it loads
// vdc.toml and secrets.toml, connects to PostgreSQL with a password, applies the
// schema migrations, serves the HTTP API on its listen port (TLS from the agent CA for
// agents, plain HTTP for qx-ctl and health checks, told apart by the first byte) and
// the web UI with the whole API on its HTTPS listener, and keeps node phases current
// from their heartbeats on the database clock.
package vdc

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/api"
	"github.com/quantix/quantix/vdc/migrations"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/web"
)

// Config is vdc.toml; flags override it.
//
//	listen = ":8080"
//	database_url = "postgres://quantix@127.0.0.1:5432/quantix_vdc"  # password from secrets.toml
//	heartbeat_interval = "30s"
//	join_tokens = ["lab-token"]   # static tokens, labs and tests only
//	admin_token = ""              # seeds an empty database; else secrets.toml's admin_token_hash, else generated
//	secrets_file = "/quantix/vdc/secrets.toml"
//	database_max_conns = 16
//	database_timeout = "5s"       # connect, statement and silent-server deadline
//	heartbeat_writers = 2
//	ui_listen = ":8443"           # HTTPS: the web UI and the whole API
//	tls_cert = ""                 # with tls_key; else a generated self-signed pair
//	tls_key = ""
//	agent_urls = ["https://vdc-1:8080", "https://vdc-2:8080"]  # announced to agents
//	agent_plain_http = false      # lab only: agents may use plain HTTP on listen
//	agent_cert_lifetime = "2160h" # the agent serving certificate (90 days), renewed at 2/3
//	agent_ca_lifetime = "87600h"  # a new agent CA (10 years)
//	agent_ca_overlap = "720h"     # a rotation announces both pins this long (30 days)
//	agent_ca_warn = "8760h"       # warn when the agent CA has less than this left (1 year)
//	data_dir = "/var/lib/quantix/vdc"  # VM images (docs/design.md §14), on QUANTIX-DATA
//	max_image_bytes = 68719476736     # one image or release upload at most (64 GiB)
//	trusted_keys_files = ["/etc/quantix/trusted-keys", "/quantix/upgrade/trusted-keys"]
//	upgrade_node_timeout = "15m"  # one node of a rolling upgrade, from staging to its slot good
//	init_socket = "/run/quantix/init.sock"  # the appliance's qx-init: this vDC's own slots and upgrade
type Config struct {
	Listen            string           `toml:"listen"`
	DatabaseURL       string           `toml:"database_url"`
	DatabaseMaxConns  int              `toml:"database_max_conns"`
	DatabaseTimeout   quantix.Duration `toml:"database_timeout"`
	HeartbeatInterval quantix.Duration `toml:"heartbeat_interval"`
	JoinTokens        []string         `toml:"join_tokens"`
	AdminToken        string           `toml:"admin_token"`
	SecretsFile       string           `toml:"secrets_file"`
	// HeartbeatWriters is how many heartbeat statements may run at once; heartbeats
	// arriving meanwhile are coalesced into the next one (see store.Batcher).
	HeartbeatWriters int `toml:"heartbeat_writers"`
	// UIListen is the HTTPS address of the web UI, which serves the whole API too.
	UIListen string `toml:"ui_listen"`
	// TLSCert and TLSKey are PEM files for UIListen. Without them the vDC generates
	// a self-signed ECDSA P-256 certificate once and keeps it in TLSDir().
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// AgentURLs are the URLs agents reach the vDCs of this database at (several
	// vDC processes, docs/design.md §17). The vDC announces them in its answers to
	// registrations and heartbeats, so agents learn the current list; empty: none
	// announced (an agent keeps what it was configured with).
	AgentURLs []string `toml:"agent_urls"`

	// Agent transport (docs/design.md §15): listen serves TLS with certificates from
	// the agent CA, and plain HTTP only for browsers, health checks and admin tools;
	// AgentPlainHTTP lets agents use plain HTTP too (labs only, warned at start).
	AgentPlainHTTP    bool             `toml:"agent_plain_http"`
	AgentCertLifetime quantix.Duration `toml:"agent_cert_lifetime"`
	AgentCALifetime   quantix.Duration `toml:"agent_ca_lifetime"`
	AgentCAOverlap    quantix.Duration `toml:"agent_ca_overlap"`
	AgentCAWarn       quantix.Duration `toml:"agent_ca_warn"`

	// DataDir holds the uploaded VM images. It must exist or its parent must (the
	// vDC creates the last folder), and be writable: else the vDC does not start.
	DataDir       string `toml:"data_dir"`
	MaxImageBytes int64  `toml:"max_image_bytes"`

	// Upgrades (docs/design.md §16): uploaded release bundles must be signed by a
	// key of TrustedKeysFiles (default: the image's own and the site's keys; a
	// missing file adds none); UpgradeNodeTimeout fails a rolling upgrade whose
	// node is not running the release with its slot good in that time.
	TrustedKeysFiles   []string         `toml:"trusted_keys_files"`
	UpgradeNodeTimeout quantix.Duration `toml:"upgrade_node_timeout"`
	// InitSocket is the control socket of the qx-init this vDC runs under on its
	// appliance (quantix.InitSocket): GET /api/v1/controller shows its slots and
	// POST /api/v1/controller/upgrade has it stage a release. Without one (a
	// development run) both say so.
	InitSocket string `toml:"init_socket"`
	// Version is the vDC's version for the version-skew rule (quantix.Version;
	// tests set another).
	Version string `toml:"-"`

	// Stdout receives the ready marker and the one-time admin token line.
	Stdout io.Writer `toml:"-"`
}

// Defaults.
const (
	DefaultHeartbeatWriters = 2
	DefaultListen           = ":8080"
	DefaultUIListen         = ":8443"
	DefaultDatabaseURL      = "postgres://quantix@127.0.0.1:5432/quantix_vdc?sslmode=disable"
	DefaultDataDir          = quantix.DataDir + "/vdc"
	DefaultMaxImageBytes    = 64 << 30
	// DefaultUpgradeNodeTimeout covers download, stage, reboot and the trial's
	// health gate of one node.
	DefaultUpgradeNodeTimeout = 15 * time.Minute
)

// DefaultConfig is the configuration without vdc.toml or flags.
func DefaultConfig() Config {
	return Config{
		Listen:             DefaultListen,
		UIListen:           DefaultUIListen,
		DatabaseURL:        DefaultDatabaseURL,
		DatabaseMaxConns:   16,
		DatabaseTimeout:    quantix.Duration{Duration: store.DefaultDatabaseTimeout},
		HeartbeatWriters:   DefaultHeartbeatWriters,
		HeartbeatInterval:  quantix.Duration{Duration: quantix.DefaultHeartbeatInterval},
		SecretsFile:        quantix.VDCSecrets,
		AgentCertLifetime:  quantix.Duration{Duration: DefaultAgentCertLifetime},
		AgentCALifetime:    quantix.Duration{Duration: DefaultAgentCALifetime},
		AgentCAOverlap:     quantix.Duration{Duration: DefaultAgentCAOverlap},
		AgentCAWarn:        quantix.Duration{Duration: DefaultAgentCAWarn},
		DataDir:            DefaultDataDir,
		MaxImageBytes:      DefaultMaxImageBytes,
		TrustedKeysFiles:   []string{quantix.TrustedKeysPath, quantix.SiteTrustedKeys},
		UpgradeNodeTimeout: quantix.Duration{Duration: DefaultUpgradeNodeTimeout},
		InitSocket:         quantix.InitSocket,
		Version:            quantix.Version,
	}
}

// LoadConfigFile decodes vdc.toml strictly over cfg. A missing file is not an
// error when missingOK (the default path on a fresh appliance).
func LoadConfigFile(path string, cfg *Config, missingOK bool) error {
	err := quantix.DecodeTOMLFile(path, cfg)
	if missingOK && errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	return nil
}

// Validate checks the configuration, naming the bad key.
func (c *Config) Validate() error {
	switch {
	case c.Listen == "":
		return fmt.Errorf("%w: listen is empty", quantix.ErrConfig)
	case c.HeartbeatInterval.Duration < 100*time.Millisecond || c.HeartbeatInterval.Duration > time.Hour:
		return fmt.Errorf("%w: heartbeat_interval %s is outside 100ms..1h", quantix.ErrConfig, c.HeartbeatInterval.Duration)
	case c.DatabaseTimeout.Duration < 100*time.Millisecond || c.DatabaseTimeout.Duration > 10*time.Minute:
		return fmt.Errorf("%w: database_timeout %s is outside 100ms..10m", quantix.ErrConfig, c.DatabaseTimeout.Duration)
	case c.DatabaseMaxConns < 1 || c.DatabaseMaxConns > 1000:
		return fmt.Errorf("%w: database_max_conns %d is outside 1..1000", quantix.ErrConfig, c.DatabaseMaxConns)
	case c.HeartbeatWriters < 1 || c.HeartbeatWriters >= c.DatabaseMaxConns:
		return fmt.Errorf("%w: heartbeat_writers %d is outside 1..database_max_conns-1 (%d)", quantix.ErrConfig, c.HeartbeatWriters, c.DatabaseMaxConns-1)
	}
	if c.DataDir == "" {
		return fmt.Errorf("%w: data_dir is empty (the folder for VM images, default %s)", quantix.ErrConfig, DefaultDataDir)
	}
	if c.UpgradeNodeTimeout.Duration < time.Second {
		return fmt.Errorf("%w: upgrade_node_timeout %s is below 1s", quantix.ErrConfig, c.UpgradeNodeTimeout.Duration)
	}
	if c.MaxImageBytes < 1<<20 {
		return fmt.Errorf("%w: max_image_bytes %d is below 1 MiB", quantix.ErrConfig, c.MaxImageBytes)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("%w: listen %q: %v", quantix.ErrConfig, c.Listen, err)
	}
	if err := c.validateUI(); err != nil {
		return err
	}
	switch {
	case c.AgentCertLifetime.Duration < time.Second:
		return fmt.Errorf("%w: agent_cert_lifetime %s is below 1s", quantix.ErrConfig, c.AgentCertLifetime.Duration)
	case c.AgentCALifetime.Duration < c.AgentCertLifetime.Duration:
		return fmt.Errorf("%w: agent_ca_lifetime %s is shorter than agent_cert_lifetime %s", quantix.ErrConfig, c.AgentCALifetime.Duration, c.AgentCertLifetime.Duration)
	case c.AgentCAOverlap.Duration < time.Second || c.AgentCAOverlap.Duration >= c.AgentCALifetime.Duration:
		return fmt.Errorf("%w: agent_ca_overlap %s is outside 1s..agent_ca_lifetime", quantix.ErrConfig, c.AgentCAOverlap.Duration)
	case c.AgentCAWarn.Duration < 0:
		return fmt.Errorf("%w: agent_ca_warn %s is negative", quantix.ErrConfig, c.AgentCAWarn.Duration)
	}
	for i, t := range c.JoinTokens {
		if len(t) < 16 {
			return fmt.Errorf("%w: join_tokens[%d] is %d characters; use at least 16", quantix.ErrConfig, i, len(t))
		}
	}
	if len(c.AgentURLs) > 0 {
		urls, err := quantix.ParseVDCURLs(strings.Join(c.AgentURLs, ","))
		if err != nil {
			return fmt.Errorf("%w: agent_urls: %w", quantix.ErrConfig, err)
		}
		c.AgentURLs = urls
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return fmt.Errorf("%w: admin_token is %d characters; use at least 16", quantix.ErrConfig, len(c.AdminToken))
	}
	if _, err := url.Parse(c.DatabaseURL); err != nil || !strings.HasPrefix(c.DatabaseURL, "postgres") {
		return fmt.Errorf("%w: database_url %q is not a postgres:// URL", quantix.ErrConfig, redactURL(c.DatabaseURL))
	}
	return nil
}

// DatabaseURLWithPassword returns the database URL, taking the password from
// secrets.toml (database_password, written by the postgres bootstrap) when the URL
// has none.
func DatabaseURLWithPassword(dbURL, secretsFile string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", fmt.Errorf("%w: database_url: %v", quantix.ErrConfig, err)
	}
	if _, ok := u.User.Password(); ok {
		return dbURL, nil
	}
	sec, err := quantix.LoadVDCSecrets(secretsFile)
	if err != nil {
		return "", fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	if sec.DatabasePassword == "" {
		return "", fmt.Errorf("%w: database_url has no password and %s has no database_password; "+
			"the vDC uses password authentication only", quantix.ErrConfig, secretsFile)
	}
	name := "quantix"
	if u.User != nil {
		name = u.User.Username()
	}
	u.User = url.UserPassword(name, sec.DatabasePassword)
	return u.String(), nil
}

func (c *Config) validateUI() error {
	if c.UIListen == "" {
		return fmt.Errorf("%w: ui_listen is empty (the web UI's HTTPS address, default %s)", quantix.ErrConfig, DefaultUIListen)
	}
	uh, up, err := net.SplitHostPort(c.UIListen)
	if err != nil {
		return fmt.Errorf("%w: ui_listen %q: %v", quantix.ErrConfig, c.UIListen, err)
	}
	if n, err := strconv.Atoi(up); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%w: ui_listen %q: port %q is not a number 0..65535", quantix.ErrConfig, c.UIListen, up)
	}
	if lh, lp, _ := net.SplitHostPort(c.Listen); lp == up && up != "0" && (lh == uh || lh == "" || uh == "") {
		return fmt.Errorf("%w: ui_listen %q and listen %q use the same port; the UI needs its own (HTTPS) port", quantix.ErrConfig, c.UIListen, c.Listen)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%w: tls_cert and tls_key go together: set both (PEM files) or neither (a self-signed certificate is generated)", quantix.ErrConfig)
	}
	for _, f := range []struct{ key, path string }{{"tls_cert", c.TLSCert}, {"tls_key", c.TLSKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%w: %s: %v", quantix.ErrConfig, f.key, err)
		}
	}
	return nil
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// Service is a running vDC.
type Service struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}

	mu     sync.Mutex
	addr   net.Addr
	uiAddr net.Addr
	ca     *agentCA
}

// AgentCAPin is the pin join tokens carry (the serving agent CA's) once Ready.
func (s *Service) AgentCAPin() string {
	s.mu.Lock()
	ca := s.ca
	s.mu.Unlock()
	if ca == nil {
		return ""
	}
	return ca.JoinTokenPin()
}

// AgentCARenewals counts the serving certificate renewals of this process (tests).
func (s *Service) AgentCARenewals() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ca == nil {
		return 0
	}
	return s.ca.renewals.Load()
}

// New checks cfg and returns a service to Run.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	return &Service{cfg: cfg, log: log, ready: make(chan struct{})}, nil
}

// Ready is closed once the API listens.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Addr is the listening address once Ready.
func (s *Service) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// UIAddr is the web UI's (HTTPS) listening address once Ready.
func (s *Service) UIAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uiAddr
}

// configuredAdminToken is the admin token digest this vDC's configuration offers
// an empty database: admin_token (vdc.toml or --admin-token), else secrets.toml's
// admin_token_hash (the installer's, or an older vDC's); source names it, "" for
// neither.
func (s *Service) configuredAdminToken() (hash [32]byte, source string, err error) {
	if s.cfg.AdminToken != "" {
		return store.HashSecret(s.cfg.AdminToken), "admin_token", nil
	}
	sec, err := quantix.LoadVDCSecrets(s.cfg.SecretsFile)
	if err != nil {
		return hash, "", fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	if sec.AdminTokenHash == "" {
		return hash, "", nil
	}
	hexed, ok := strings.CutPrefix(sec.AdminTokenHash, "sha256:")
	b, err := hex.DecodeString(hexed)
	if !ok || err != nil || len(b) != 32 {
		return hash, "", fmt.Errorf("%w: %s: admin_token_hash is not \"sha256:<64 hex>\"", quantix.ErrConfig, s.cfg.SecretsFile)
	}
	return [32]byte(b), s.cfg.SecretsFile + " admin_token_hash", nil
}

// initAdminToken makes sure the database holds the cluster's admin token digest
// (docs/design.md §17) and returns the checker every listener uses. The first vDC
// on an empty database stores the digest of its configured token, or generates a
// token, prints it once and stores its digest; concurrent first starts store one.
//
// From then on the database's digest is in force. A configured token that differs
// (the token was rotated, or another vDC was set up with another one) is neither
// written over it nor accepted: the vDC starts and warns, naming the key to fix.
// Refusing to start would take every vDC down at its next restart after a
// rotation, when the operator has most reason to want the control plane up.
func (s *Service) initAdminToken(ctx context.Context, st *store.Store, seed [32]byte, source string) (*store.AdminAuth, error) {
	tok := ""
	if source == "" {
		tok = store.NewSecret()
		seed = store.HashSecret(tok)
	}
	cur, created, err := st.InitAdminToken(ctx, seed)
	if err != nil {
		return nil, err
	}
	switch {
	case created && tok != "":
		fmt.Fprintln(s.cfg.Stdout, quantix.FormatMarker(quantix.MarkerAdminToken, "service", "vdc", "token", tok,
			"note", "shown once; only its hash is kept, in the database, for every vDC on it"))
		s.log.Info("generated the cluster's admin token; it was printed once on stdout")
	case created:
		s.log.Info("stored the cluster's admin token digest in the database", "from", source)
	case source != "" && !store.SameDigest(cur.Hash[:], seed[:]):
		s.log.Warn("the configured admin token is not the cluster's: the database's is in force and this one is refused "+
			"(it was rotated, or another vDC set a different one); remove it or set the current token",
			"key", source, "generation", cur.Generation, "since", cur.UpdatedAt)
	}
	return store.NewAdminAuth(st, store.AdminTokenTTL), nil
}

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error {
	dbURL, err := DatabaseURLWithPassword(s.cfg.DatabaseURL, s.cfg.SecretsFile)
	if err != nil {
		return err
	}
	adminSeed, adminSource, err := s.configuredAdminToken()
	if err != nil {
		return err
	}
	if err := checkDataDir(s.cfg.DataDir); err != nil {
		return err
	}
	s.removeBrokenUploads()
	st, err := store.Open(ctx, store.Config{DatabaseURL: dbURL, MaxConns: int32(s.cfg.DatabaseMaxConns), Timeout: s.cfg.DatabaseTimeout.Duration,
		StaticJoinTokens: s.cfg.JoinTokens}, s.log)
	if err != nil {
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	defer st.Close()
	n, err := st.Migrate(ctx)
	if ctx.Err() != nil {
		return nil // SIGTERM while starting: a clean stop
	}
	if errors.Is(err, migrations.ErrSchemaNewer) {
		return fmt.Errorf("%w: %w", quantix.ErrConfig, err) // restarting cannot help: wrong binary
	}
	if err != nil {
		return err
	}
	s.log.Info("schema current", "applied", n)
	admin, err := s.initAdminToken(ctx, st, adminSeed, adminSource)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	interval := s.cfg.HeartbeatInterval.Duration
	cs, err := st.SyncCluster(ctx, interval, store.GraceStart)
	if err != nil {
		return err
	}
	// Each writer runs one heartbeat statement (one commit) at a time; heartbeats
	// arriving meanwhile ride the next one.
	workers := s.cfg.HeartbeatWriters
	hb := store.NewBatcher(st, workers, 1000, s.log)
	defer hb.Close()
	ca := &agentCA{st: st, log: s.log.With("component", "agent-ca"), caLifetime: s.cfg.AgentCALifetime.Duration,
		certLifetime: s.cfg.AgentCertLifetime.Duration, warnBefore: s.cfg.AgentCAWarn.Duration, overlap: s.cfg.AgentCAOverlap.Duration}
	if err := ca.load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	desired := store.NewListener(st, s.log)
	desired.WatchAdminToken(admin)
	a := api.New(api.Config{Store: st, Heartbeats: hb, HeartbeatInterval: interval,
		Admin: admin, AgentURLs: s.cfg.AgentURLs, AgentCA: ca, Desired: desired, DataDir: s.cfg.DataDir,
		MaxImageBytes: s.cfg.MaxImageBytes, TrustedKeysFiles: s.cfg.TrustedKeysFiles, Version: s.cfg.Version,
		Init: quantix.InitClient{Socket: s.cfg.InitSocket}}, s.log)

	cert, err := s.loadTLS()
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	sl := newSniffListener(l)
	defer sl.close()
	uiL, err := net.Listen("tcp", s.cfg.UIListen)
	if err != nil {
		return fmt.Errorf("listen %s (ui_listen): %w", s.cfg.UIListen, err)
	}
	defer uiL.Close()
	s.mu.Lock()
	s.addr, s.uiAddr, s.ca = l.Addr(), uiL.Addr(), ca
	s.mu.Unlock()
	ui, err := web.New(web.Config{Store: st, API: a, Admin: admin,
		AgentPort: l.Addr().(*net.TCPAddr).Port}, s.log)
	if err != nil {
		return err
	}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	// The listen port serves agents over TLS (certificates of the agent CA) and, in
	// plain HTTP, qx-ctl and health checks; browsers are sent to the UI's HTTPS.
	if s.cfg.AgentPlainHTTP {
		s.log.Warn("agent_plain_http is on: agents may send their secrets in plain HTTP (labs only)", "listen", l.Addr().String())
	}
	srv := &http.Server{Handler: web.RedirectBrowsers(a.Plain(s.cfg.AgentPlainHTTP), uiL.Addr().(*net.TCPAddr).Port),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, ErrorLog: errLog}
	agentSrv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, ErrorLog: errLog,
		TLSConfig: &tls.Config{GetCertificate: ca.getCertificate, MinVersion: tls.VersionTLS12}}
	uiSrv := &http.Server{Handler: ui, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, ErrorLog: errLog,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	// Connections that never sent a request (a client's spare keep-alive dial)
	// would hold a graceful shutdown for 5 s: they are closed when it begins.
	var fresh freshConns
	srv.ConnState, uiSrv.ConnState, agentSrv.ConnState = fresh.track, fresh.track, fresh.track
	srv.RegisterOnShutdown(desired.Stop)
	uiSrv.RegisterOnShutdown(desired.Stop)
	agentSrv.RegisterOnShutdown(desired.Stop)
	serveErr := make(chan error, 3)
	go func() { serveErr <- srv.Serve(sl.plain) }()
	go func() {
		if err := agentSrv.ServeTLS(sl.tls, "", ""); err != nil {
			serveErr <- fmt.Errorf("agent TLS: %w", err)
		}
	}()
	go func() {
		if err := uiSrv.ServeTLS(uiL, "", ""); err != nil {
			serveErr <- fmt.Errorf("ui: %w", err)
		}
	}()

	sweepCtx, stopSweep := context.WithCancel(ctx)
	sweepDone := make(chan struct{}, 5)
	go func() {
		defer func() { sweepDone <- struct{}{} }()
		ca.run(sweepCtx)
	}()
	go func() {
		defer func() { sweepDone <- struct{}{} }()
		desired.Run(sweepCtx)
	}()
	go func() {
		defer func() { sweepDone <- struct{}{} }()
		s.sweep(sweepCtx, st, interval)
	}()
	go func() {
		defer func() { sweepDone <- struct{}{} }()
		s.driveUpgrades(sweepCtx, st, interval)
	}()
	go func() {
		defer func() { sweepDone <- struct{}{} }()
		t := time.NewTicker(web.PruneEvery)
		defer t.Stop()
		for {
			select {
			case <-sweepCtx.Done():
				return
			case <-t.C:
				ui.PruneSessions(sweepCtx)
			}
		}
	}()

	fmt.Fprintln(s.cfg.Stdout, quantix.ReadyMarker("vdc", "url", "https://"+l.Addr().String(),
		"agent_ca_pin", ca.JoinTokenPin(), "ui", "https://"+uiL.Addr().String(), "epoch", st.Epoch()))
	s.log.Info("serving", "addr", l.Addr().String(), "agent_ca_pin", ca.JoinTokenPin(), "agent_plain_http", s.cfg.AgentPlainHTTP, "ui", "https://"+uiL.Addr().String(),
		"heartbeat_interval", interval, "epoch", cs.Epoch, "grace_until", cs.GraceUntil, "grace_reason", cs.GraceReason)
	close(s.ready)

	select {
	case err = <-serveErr:
		err = fmt.Errorf("serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
		s.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.SetKeepAlivesEnabled(false)
		uiSrv.SetKeepAlivesEnabled(false)
		agentSrv.SetKeepAlivesEnabled(false)
		fresh.closeAll()
		err = errors.Join(srv.Shutdown(sctx), uiSrv.Shutdown(sctx), agentSrv.Shutdown(sctx))
		cancel()
		if err != nil {
			err = fmt.Errorf("shutdown: %w", err)
		}
	}
	if err != nil {
		// Serve failed on one listener: stop the other too.
		srv.Close()
		uiSrv.Close()
		agentSrv.Close()
	}
	stopSweep()
	for range cap(sweepDone) {
		<-sweepDone
	}
	return err
}

// freshConns tracks the server connections that have not begun a request yet.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (f *freshConns) track(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st == http.StateNew {
		if f.conns == nil {
			f.conns = map[net.Conn]struct{}{}
		}
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

// closeAll closes the connections still waiting for their first request.
func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// sweep updates phases from heartbeat ages a few times per interval. Each round
// first reads the cluster state, so that a database failover (a new timeline) or a
// write outage seen here grants every vDC the liveness grace: nodes are not demoted
// for heartbeats the control plane itself could not take.
func (s *Service) sweep(ctx context.Context, st *store.Store, interval time.Duration) {
	t := time.NewTicker(pollEvery(interval))
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		grace := ""
		if since := time.Since(lastOK); since > interval {
			grace = store.GraceOutage
		}
		cs, err := st.SyncCluster(ctx, interval, grace)
		var ch []store.PhaseChange
		if err == nil {
			ch, err = st.Sweep(ctx, interval, cs.GraceUntil)
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("sweep phases", "err", err, "failing_for", time.Since(lastOK).Round(time.Second))
			}
			continue
		}
		if cs.Failover {
			s.log.Warn("database failover: new epoch, every node sends its full state once", "epoch", cs.Epoch,
				"timeline", cs.Timeline, "grace_until", cs.GraceUntil)
		} else if grace != "" {
			s.log.Warn("database writes resumed: liveness grace granted", "outage", time.Since(lastOK).Round(time.Second),
				"grace_until", cs.GraceUntil)
		}
		lastOK = time.Now()
		held := 0
		for _, c := range ch {
			if c.Held {
				held++
			}
		}
		if held > 0 {
			s.log.Warn("most nodes silent at once: held at not_ready, not disconnected (check the control plane's network)",
				"held", held)
		}
		// Node by node while that stays readable; a mass change (a rack losing
		// power) is summarized. Every change is in the node's history either way.
		const each = 20
		for i, c := range ch {
			if i == each {
				s.log.Info("node phases changed", "more_nodes", len(ch)-each)
				break
			}
			s.log.Info("node phase changed", "node_id", c.NodeID, "hostname", c.Hostname, "from", c.From, "to", c.To)
		}
	}
}

// pollEvery is how often the sweeper and the upgrade driver look: a few times per
// heartbeat interval, within 100 ms .. 5 s.
func pollEvery(interval time.Duration) time.Duration {
	return min(max(interval/4, 100*time.Millisecond), 5*time.Second)
}

// driveUpgrades advances the running rolling upgrade a few times per heartbeat
// interval (each node's progress arrives with its heartbeats). Every vDC on the
// database runs it; StepUpgrade lets one of them take each step.
func (s *Service) driveUpgrades(ctx context.Context, st *store.Store, interval time.Duration) {
	t := time.NewTicker(pollEvery(interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for range 100 { // the steps due now; a bound against a loop that never settles
			changed, err := st.StepUpgrade(ctx, s.cfg.UpgradeNodeTimeout.Duration)
			if err != nil && ctx.Err() == nil {
				s.log.Error("drive upgrade", "err", err)
			}
			if !changed || err != nil {
				break
			}
		}
	}
}

// removeBrokenUploads deletes the release uploads a previous run of this vDC left
// half done (data_dir is this vDC's own).
func (s *Service) removeBrokenUploads() {
	dirs, _ := filepath.Glob(filepath.Join(s.cfg.DataDir, "releases", ".upload-*"))
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			s.log.Warn("remove a broken release upload", "dir", d, "err", err)
			continue
		}
		s.log.Info("removed a broken release upload", "dir", d)
	}
}

// checkDataDir makes sure the image folder exists (creating its last element) and
// takes files.
func checkDataDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%w: data_dir %s: %v (create its parent, or set data_dir in vdc.toml)", quantix.ErrConfig, dir, err)
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("%w: data_dir %s is not writable: %v", quantix.ErrConfig, dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
