// Package vdctest runs real vDCs for tests: a throwaway PostgreSQL 15 server
// (initdb into a temp folder, password authentication) and the same service code
// `qx-vdc serve` runs, in-process, on 127.0.0.1 against a fresh database: the agent
// API over TLS from the agent CA (VDC.AgentURL, VDC.Pin, VDC.AgentClient, and a
// VDC.JoinToken that carries the pin), the same port in plain HTTP for admin calls
// (VDC.URL; agents are refused there unless Options.PlainAgents), and the HTTPS web
// UI with its generated certificate (VDC.UIURL, VDC.CertFile, VDC.HTTPSClient).
package vdctest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/store"
)

// Options configure Start. Zero values pick test-friendly defaults.
type Options struct {
	Postgres *Postgres // nil: Shared(t)
	// DatabaseURL, when set, is used as it is instead of a fresh database of
	// Postgres: several vDCs on one database (docs/design.md §17).
	DatabaseURL       string
	HeartbeatInterval time.Duration // 0: 2s
	JoinTokens        []string      // nil: one random static token
	// AdminToken is the vDC's admin_token; "": a random one. With the DatabaseURL
	// of another vDC pass that vDC's: the first token on a database is the
	// cluster's, and a vDC configured with another refuses its own (it warns).
	AdminToken string
	// Listen is the API address; "": 127.0.0.1:0.
	Listen string
	// PlainAgents sets agent_plain_http: agents may use VDC.URL (plain HTTP).
	PlainAgents bool
	// AgentCertLifetime, AgentCAOverlap and AgentCAWarn set agent_cert_lifetime,
	// agent_ca_overlap and agent_ca_warn; 0 keeps the defaults.
	AgentCertLifetime, AgentCAOverlap, AgentCAWarn time.Duration
	// Log receives the vDC's log; nil: t.Log.
	Log io.Writer
	// DatabaseTimeout is vdc.toml's database_timeout (0: the default).
	DatabaseTimeout time.Duration
	// AgentURLs is vdc.toml's agent_urls: the vDC URLs announced to agents.
	AgentURLs []string
	// StartCmd starts a StartProcess vDC's command (nil: cmd.Start), e.g. in a
	// network namespace.
	StartCmd func(*exec.Cmd) error
	// MaxImageBytes bounds image uploads; 0: the vDC default.
	MaxImageBytes int64
	// TrustedKeysFiles are vdc.toml's trusted_keys_files (nil: none, so no
	// release upload passes).
	TrustedKeysFiles []string
	// Version is the vDC's own version (the version-skew rule); "": quantix.Version.
	Version string
	// UpgradeNodeTimeout is vdc.toml's upgrade_node_timeout; 0: the default.
	UpgradeNodeTimeout time.Duration
	// InitSocket is vdc.toml's init_socket (services/initd/inittest serves one);
	// "": a path where nothing listens, never the host's own qx-init.
	InitSocket string
}

// VDC is a running vDC.
type VDC struct {
	URL string // http://127.0.0.1:port: admin calls in plain HTTP
	// AgentURL is https://127.0.0.1:port, the same port in TLS: what agents use.
	AgentURL string
	// Pin is the agent CA pin (the same after a restart: the CA is in the database).
	Pin   string
	UIURL string // https://127.0.0.1:port: the web UI and the API over TLS
	// CertFile is the UI's generated self-signed certificate (PEM).
	CertFile    string
	DataDir     string // the images
	AdminToken  string
	JoinToken   string // a valid static join token, qx1.<Pin>.<secret>
	DatabaseURL string
	Stdout      *syncbuf.Buffer // the service's stdout: ready marker

	cfg vdc.Config
	svc *vdc.Service
	// agentClient is AgentClient's, made once: the pin outlives restarts.
	agentClient *http.Client
	log         *slog.Logger
	mu          sync.Mutex
	cancel      context.CancelFunc
	done        chan error
}

// Start runs a vDC for t on a fresh database and stops it when t ends.
func Start(t testing.TB, opts Options) *VDC {
	t.Helper()
	pg := opts.Postgres
	if pg == nil && opts.DatabaseURL == "" {
		pg = Shared(t)
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = 2 * time.Second
	}
	if opts.JoinTokens == nil {
		opts.JoinTokens = []string{"static-" + store.NewSecret()}
	}
	if opts.AdminToken == "" {
		opts.AdminToken = "admin-" + store.NewSecret()
	}
	var w io.Writer = opts.Log
	if w == nil {
		w = tWriter{t}
	}
	dbURL := opts.DatabaseURL
	if dbURL == "" {
		dbURL = pg.NewDatabase(t)
	}
	v := &VDC{
		AdminToken:  opts.AdminToken,
		JoinToken:   opts.JoinTokens[0],
		DatabaseURL: dbURL,
		Stdout:      &syncbuf.Buffer{},
		log:         slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	cfg := vdc.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	if opts.Listen != "" {
		cfg.Listen = opts.Listen
	}
	cfg.AgentURLs = opts.AgentURLs
	cfg.DatabaseURL = v.DatabaseURL
	cfg.HeartbeatInterval = quantix.Duration{Duration: opts.HeartbeatInterval}
	if opts.DatabaseTimeout != 0 {
		cfg.DatabaseTimeout = quantix.Duration{Duration: opts.DatabaseTimeout}
	}
	cfg.JoinTokens = opts.JoinTokens
	cfg.AdminToken = opts.AdminToken
	cfg.UIListen = "127.0.0.1:0"
	cfg.SecretsFile = filepath.Join(t.TempDir(), "secrets.toml")
	cfg.DataDir = t.TempDir()
	v.DataDir = cfg.DataDir
	if opts.MaxImageBytes > 0 {
		cfg.MaxImageBytes = opts.MaxImageBytes
	}
	cfg.TrustedKeysFiles = opts.TrustedKeysFiles
	if opts.Version != "" {
		cfg.Version = opts.Version
	}
	if opts.UpgradeNodeTimeout != 0 {
		cfg.UpgradeNodeTimeout = quantix.Duration{Duration: opts.UpgradeNodeTimeout}
	}
	cfg.InitSocket = opts.InitSocket
	if cfg.InitSocket == "" {
		cfg.InitSocket = filepath.Join(t.TempDir(), "no-init.sock")
	}
	cfg.Stdout = v.Stdout
	cfg.AgentPlainHTTP = opts.PlainAgents
	for _, d := range []struct {
		dst *quantix.Duration
		v   time.Duration
	}{{&cfg.AgentCertLifetime, opts.AgentCertLifetime}, {&cfg.AgentCAOverlap, opts.AgentCAOverlap}, {&cfg.AgentCAWarn, opts.AgentCAWarn}} {
		if d.v != 0 {
			d.dst.Duration = d.v
		}
	}
	v.cfg = cfg
	v.CertFile = filepath.Join(cfg.TLSDir(), vdc.TLSCertName)
	if err := v.start(); err != nil {
		t.Fatalf("start vdc: %v", err)
	}
	// Restarts keep the addresses agents and browsers know.
	v.cfg.Listen = v.URL[len("http://"):]
	v.cfg.UIListen = v.UIURL[len("https://"):]
	t.Cleanup(func() { v.Stop(t) })
	return v
}

func (v *VDC) start() error {
	svc, err := vdc.New(v.cfg, v.log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	select {
	case <-svc.Ready():
	case err := <-done:
		cancel()
		return err
	case <-time.After(60 * time.Second):
		cancel()
		return fmt.Errorf("vdc not ready after 60s")
	}
	v.mu.Lock()
	v.URL = "http://" + svc.Addr().String()
	v.AgentURL = "https://" + svc.Addr().String()
	v.Pin = svc.AgentCAPin()
	v.JoinToken = quantix.FormatJoinToken(v.Pin, quantix.SecretOfJoinToken(v.cfg.JoinTokens[0]))
	v.UIURL = "https://" + svc.UIAddr().String()
	v.svc = svc
	agentURLs.Store(v.AgentURL, v)
	v.cancel, v.done = cancel, done
	v.mu.Unlock()
	return nil
}

// Stop stops the vDC (graceful shutdown) if it runs.
func (v *VDC) Stop(t testing.TB) {
	t.Helper()
	v.mu.Lock()
	cancel, done := v.cancel, v.done
	v.cancel, v.done = nil, nil
	v.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("vdc stopped with: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("vdc did not stop within 30s")
	}
}

// Restart stops the vDC and starts a new process-equivalent on the same database
// and address: a new epoch (nodes are asked for a full sync) and a new liveness
// grace period.
func (v *VDC) Restart(t testing.TB) {
	t.Helper()
	v.Stop(t)
	var err error
	for i := 0; i < 50; i++ { // the port may linger for a moment
		if err = v.start(); err == nil {
			return
		}
		if _, ok := err.(*net.OpError); !ok && !isAddrInUse(err) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("restart vdc: %v", err)
}

// Announce restarts the vDC announcing urls to agents (vdc.toml agent_urls).
func (v *VDC) Announce(t testing.TB, urls []string) {
	t.Helper()
	v.cfg.AgentURLs = urls
	v.Restart(t)
}

func isAddrInUse(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("address already in use"))
}

// Do sends an admin request and decodes a JSON answer into out (unless nil),
// failing t on a transport error or a status other than want.
func (v *VDC) Do(t testing.TB, method, path string, body, out any, want int) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, v.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+v.AdminToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// Nodes lists the registry.
func (v *VDC) Nodes(t testing.TB) []quantix.Node {
	t.Helper()
	var l quantix.NodeList
	v.Do(t, http.MethodGet, quantix.PathNodes, nil, &l, http.StatusOK)
	return l.Nodes
}

// Node returns one node.
func (v *VDC) Node(t testing.TB, id string) quantix.Node {
	t.Helper()
	var n quantix.Node
	v.Do(t, http.MethodGet, quantix.PathNode(id), nil, &n, http.StatusOK)
	return n
}

// DeleteNode deletes a node.
func (v *VDC) DeleteNode(t testing.TB, id string) {
	t.Helper()
	v.Do(t, http.MethodDelete, quantix.PathNode(id), nil, nil, http.StatusNoContent)
}

// NodeEvents returns a node's history.
func (v *VDC) NodeEvents(t testing.TB, id string) []quantix.NodeEvent {
	t.Helper()
	var l struct {
		Events []quantix.NodeEvent `json:"events"`
	}
	v.Do(t, http.MethodGet, quantix.PathNode(id)+"/events", nil, &l, http.StatusOK)
	return l.Events
}

// VMs returns the VM inventory.
func (v *VDC) VMs(t testing.TB) []quantix.InventoryVM {
	t.Helper()
	var l quantix.VMList
	v.Do(t, http.MethodGet, quantix.PathVMs, nil, &l, http.StatusOK)
	return l.VMs
}

// Pools returns the storage pool inventory.
func (v *VDC) Pools(t testing.TB) []quantix.InventoryPool {
	t.Helper()
	var l quantix.PoolList
	v.Do(t, http.MethodGet, quantix.PathPools, nil, &l, http.StatusOK)
	return l.StoragePools
}

// SetMaintenance puts a node into maintenance or takes it out.
func (v *VDC) SetMaintenance(t testing.TB, id string, on bool) quantix.Node {
	t.Helper()
	var n quantix.Node
	v.Do(t, http.MethodPut, quantix.PathNode(id)+"/maintenance", map[string]bool{"maintenance": on}, &n, http.StatusOK)
	return n
}

// NewJoinToken creates a database join token.
func (v *VDC) NewJoinToken(t testing.TB, ttl time.Duration, uses int) quantix.JoinToken {
	t.Helper()
	var tok quantix.JoinToken
	v.Do(t, http.MethodPost, quantix.PathJoinTokens, quantix.JoinTokenRequest{TTLSeconds: int(ttl / time.Second), Uses: uses}, &tok, http.StatusCreated)
	return tok
}

// WaitPhase waits up to timeout for node id to reach phase.
func (v *VDC) WaitPhase(t testing.TB, id, phase string, timeout time.Duration) quantix.Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := v.Node(t, id)
		if n.Phase == phase {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s (%s) is %s after %s, want %s", id, n.Hostname, n.Phase, timeout, phase)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// HTTPSClient returns a client that trusts exactly the UI's certificate and does
// not follow redirects (tests look at them).
func (v *VDC) HTTPSClient(t testing.TB) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(v.CertFile)
	if err != nil {
		t.Fatalf("read the UI certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", v.CertFile)
	}
	return &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

// AgentClient returns a client that checks the vDC's chain against Pin, as agents
// do (quantix.PinnedTLS).
func (v *VDC) AgentClient() *http.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.agentClient == nil {
		v.agentClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64,
			TLSClientConfig: quantix.PinnedTLS([]string{v.Pin}, nil)}}
	}
	return v.agentClient
}

// agentURLs maps each running vDC's AgentURL to it, for ClientFor.
var agentURLs sync.Map

// ClientFor returns the client for a request URL: AgentClient for a URL under a
// vDC's AgentURL, else a plain client. Test helpers that only have a URL use it.
func ClientFor(url string) *http.Client {
	var c *http.Client
	agentURLs.Range(func(k, val any) bool {
		if strings.HasPrefix(url, k.(string)+"/") || url == k.(string) {
			c = val.(*VDC).AgentClient()
			return false
		}
		return true
	})
	if c == nil {
		return http.DefaultClient
	}
	return c
}

// Service is the running service (nil while stopped).
func (v *VDC) Service() *vdc.Service {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.svc
}

// tWriter sends the service log to t.Log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
