package vdc_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/migrations"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startService runs a vDC with cfg; stop stops it and returns Run's error.
func startService(cfg vdc.Config) (string, func() error, error) {
	return startServiceLog(cfg, quiet)
}

// startServiceLog is startService logging to log.
func startServiceLog(cfg vdc.Config, log *slog.Logger) (string, func() error, error) {
	svc, err := vdc.New(cfg, log)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	select {
	case <-svc.Ready():
	case err := <-done:
		cancel()
		return "", nil, err
	}
	stop := func() error {
		cancel()
		return <-done
	}
	return "http://" + svc.Addr().String(), stop, nil
}

// runService runs a vDC with cfg; it returns its URL and a stop function.
func runService(t *testing.T, cfg vdc.Config) (string, func()) {
	t.Helper()
	u, stop, err := startService(cfg)
	if err != nil {
		t.Fatalf("vdc: %v", err)
	}
	return u, func() {
		if err := stop(); err != nil {
			t.Errorf("vdc stopped with %v", err)
		}
	}
}

func withoutPassword(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(u.User.Username())
	return u.String()
}

// TestAdminTokenAndSecrets: first start without an admin token generates one,
// prints it once, stores only its hash in the database (cluster-wide), and reads
// the database password from secrets.toml, leaving it as the bootstrap wrote it.
func TestAdminTokenAndSecrets(t *testing.T) {
	skipShort(t)
	pg := vdctest.Shared(t)
	dbURL := pg.NewDatabase(t)
	secrets := filepath.Join(t.TempDir(), "vdc", "secrets.toml")
	if err := quantix.SaveVDCSecrets(secrets, quantix.VDCSecretsFile{DatabasePassword: pg.Password}); err != nil {
		t.Fatal(err)
	}
	out := &syncbuf.Buffer{}
	cfg := vdc.DefaultConfig()
	cfg.Listen, cfg.UIListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DatabaseURL = withoutPassword(t, dbURL)
	cfg.SecretsFile = secrets
	cfg.DataDir = t.TempDir()
	cfg.Stdout = out
	base, stop := runService(t, cfg)

	var token string
	for _, line := range strings.Split(out.String(), "\n") {
		if m, ok := quantix.ParseMarker(line); ok && m.Kind == quantix.MarkerAdminToken {
			token = m.Get("token")
		}
	}
	if len(token) != 64 {
		t.Fatalf("no admin-token marker with a token on stdout:\n%s", out)
	}
	sec, err := quantix.LoadVDCSecrets(secrets)
	if err != nil {
		t.Fatal(err)
	}
	if sec.DatabasePassword != pg.Password || sec.AdminTokenHash != "" {
		t.Errorf("secrets.toml = %+v, want the database password kept and no admin hash (the database holds it)", sec)
	}
	if got := storedAdminHash(t, dbURL); got != store.HashSecret(token) {
		t.Errorf("admin_token holds %x, want the printed token's digest", got[:4])
	}
	raw, _ := os.ReadFile(secrets)
	if strings.Contains(string(raw), token) {
		t.Errorf("secrets.toml holds the admin token in clear")
	}
	if fi, err := os.Stat(secrets); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secrets.toml mode = %v, %v; want 0600", fi.Mode(), err)
	}
	if code, b := call(t, http.MethodGet, base+quantix.PathNodes, token, nil); code != 200 {
		t.Errorf("GET nodes with the printed admin token: %d %s", code, b)
	}
	stop()

	// Second start: the stored hash is used, nothing is printed.
	out2 := &syncbuf.Buffer{}
	cfg.Stdout = out2
	base, stop = runService(t, cfg)
	defer stop()
	if strings.Contains(out2.String(), quantix.MarkerAdminToken) {
		t.Errorf("second start printed an admin token again:\n%s", out2)
	}
	if code, b := call(t, http.MethodGet, base+quantix.PathNodes, token, nil); code != 200 {
		t.Errorf("GET nodes with the first token after restart: %d %s", code, b)
	}
	if !strings.Contains(out2.String(), "QUANTIX: ready service=vdc url=") {
		t.Errorf("no ready marker on stdout:\n%s", out2)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, toml, want string
	}{
		{"unknown key", "listen = \":1\"\nlisten_port = 3\n", `vdc.toml:2: unknown key "listen_port"`},
		{"bad duration", "heartbeat_interval = \"soon\"\n", "vdc.toml"},
		{"interval too short", "heartbeat_interval = \"10ms\"\n", "heartbeat_interval"},
		{"short join token", "join_tokens = [\"abc\"]\n", "join_tokens[0]"},
		{"too many heartbeat writers", "heartbeat_writers = 16\n", "heartbeat_writers"},
		{"bad listen", "listen = \"nope\"\n", "listen"},
		{"bad ui_listen", "ui_listen = \"8443\"\n", "ui_listen"},
		{"empty ui_listen", "ui_listen = \"\"\n", "ui_listen is empty"},
		{"ui port taken by listen", "listen = \":9000\"\nui_listen = \":9000\"\n", "same port"},
		{"tls_cert without tls_key", "tls_cert = \"/etc/ssl/x.pem\"\n", "tls_cert and tls_key go together"},
		{"missing tls files", "tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n", "tls_cert: stat /nonexistent/c.pem"},
	}
	for _, tc := range cases {
		p := filepath.Join(dir, "vdc.toml")
		os.WriteFile(p, []byte(tc.toml), 0o644)
		cfg := vdc.DefaultConfig()
		err := vdc.LoadConfigFile(p, &cfg, false)
		if err == nil {
			err = cfg.Validate()
		}
		if !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a configuration error naming %q", tc.name, err, tc.want)
		}
	}
	cfg := vdc.DefaultConfig()
	if err := vdc.LoadConfigFile(filepath.Join(dir, "missing.toml"), &cfg, true); err != nil {
		t.Errorf("missing default vdc.toml: %v", err)
	}
	if err := vdc.LoadConfigFile(filepath.Join(dir, "missing.toml"), &cfg, false); !errors.Is(err, quantix.ErrConfig) {
		t.Errorf("missing explicit vdc.toml: %v, want a configuration error", err)
	}
	os.WriteFile(filepath.Join(dir, "vdc.toml"), []byte("heartbeat_interval = \"5s\"\njoin_tokens = [\"0123456789abcdef\"]\n"), 0o644)
	cfg = vdc.DefaultConfig()
	if err := vdc.LoadConfigFile(filepath.Join(dir, "vdc.toml"), &cfg, false); err != nil || cfg.HeartbeatInterval.Duration != 5*time.Second || len(cfg.JoinTokens) != 1 {
		t.Errorf("vdc.toml = %+v, %v", cfg, err)
	}
	// No password anywhere: refused, never trust auth.
	_, err := vdc.DatabaseURLWithPassword("postgres://quantix@127.0.0.1/quantix", filepath.Join(dir, "none.toml"))
	if !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), "database_password") {
		t.Errorf("database URL without any password: %v", err)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("metered")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	heartbeat(t, v, n, quantix.HeartbeatRequest{})
	if code, b := call(t, http.MethodGet, v.URL+quantix.PathHealthz, "", nil); code != 200 {
		t.Errorf("/healthz: %d %s", code, b)
	}
	if code, b := call(t, http.MethodGet, v.URL+quantix.PathReadyz, "", nil); code != 200 {
		t.Errorf("/readyz: %d %s", code, b)
	}
	code, b := call(t, http.MethodGet, v.URL+quantix.PathMetrics, "", nil)
	for _, want := range []string{
		`qx_vdc_registrations_total{kind="registered"} 1`,
		`qx_vdc_heartbeats_total 1`,
		`qx_vdc_nodes{phase="ready"} 1`,
		`qx_vdc_nodes{phase="disconnected"} 0`,
		`# TYPE qx_vdc_http_request_duration_seconds histogram`,
		`qx_vdc_http_request_duration_seconds_count{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200"} 1`,
		`qx_vdc_http_request_duration_seconds_bucket{method="POST",route="/api/v1/nodes/register",code="201",le="+Inf"} 1`,
	} {
		if code != 200 || !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, b)
		}
	}
	// A schema the binary does not expect: not ready, saying why.
	conn, err := pgx.Connect(context.Background(), v.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	conn.Exec(context.Background(), `UPDATE `+migrations.VersionTable+` SET version = version + 1`)
	code, b = call(t, http.MethodGet, v.URL+quantix.PathReadyz, "", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(b), "newer") {
		t.Errorf("/readyz with a newer schema: %d %s, want 503 naming it", code, b)
	}
	v.Stop(t)
	// And the vDC refuses to start on it.
	cfg := vdc.DefaultConfig()
	cfg.Listen, cfg.DatabaseURL, cfg.AdminToken = "127.0.0.1:0", v.DatabaseURL, v.AdminToken
	cfg.DataDir = t.TempDir()
	svc, err := vdc.New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Run(context.Background()); !errors.Is(err, migrations.ErrSchemaNewer) {
		t.Errorf("start on a newer schema: %v, want ErrSchemaNewer", err)
	}
}

// TestTwoServicesStartTogether: two vDCs on one fresh database migrate it once and
// both serve.
func TestTwoServicesStartTogether(t *testing.T) {
	skipShort(t)
	dbURL := vdctest.Shared(t).NewDatabase(t)
	dir := t.TempDir()
	var wg sync.WaitGroup
	urls := make([]string, 2)
	stops := make([]func() error, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := vdc.DefaultConfig()
			cfg.Listen, cfg.DatabaseURL, cfg.AdminToken, cfg.Stdout = "127.0.0.1:0", dbURL, "admin-0123456789abcdef", io.Discard
			cfg.UIListen, cfg.SecretsFile, cfg.DataDir = "127.0.0.1:0", filepath.Join(dir, "secrets.toml"), dir
			urls[i], stops[i], errs[i] = startService(cfg)
		}()
	}
	wg.Wait()
	for i, u := range urls {
		if errs[i] != nil {
			t.Errorf("vdc %d did not start: %v", i, errs[i])
			continue
		}
		if code, b := call(t, http.MethodGet, u+quantix.PathReadyz, "", nil); code != 200 {
			t.Errorf("vdc %d /readyz: %d %s", i, code, b)
		}
		if err := stops[i](); err != nil {
			t.Errorf("vdc %d stopped with %v", i, err)
		}
	}
}

// TestDataDirChecked: a data_dir the vDC cannot use stops it at start with a
// configuration error naming it; a missing last folder is created.
func TestDataDirChecked(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	os.WriteFile(file, nil, 0o644)
	dbURL := vdctest.Shared(t).NewDatabase(t)
	for _, tc := range []struct{ dataDir, want string }{
		{filepath.Join(dir, "no", "such", "parent"), "create its parent"},
		{file, "not writable"},
	} {
		cfg := vdc.DefaultConfig()
		cfg.Listen, cfg.UIListen, cfg.DatabaseURL, cfg.AdminToken, cfg.Stdout = "127.0.0.1:0", "127.0.0.1:0", dbURL, "admin-0123456789abcdef", io.Discard
		cfg.SecretsFile, cfg.DataDir = filepath.Join(dir, "secrets.toml"), tc.dataDir
		svc, err := vdc.New(cfg, quiet)
		if err != nil {
			t.Fatal(err)
		}
		err = svc.Run(context.Background())
		if !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), "data_dir "+tc.dataDir) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("start with data_dir %s: %v, want a configuration error naming it (%s)", tc.dataDir, err, tc.want)
		}
	}
	cfg := vdc.DefaultConfig()
	cfg.Listen, cfg.DatabaseURL, cfg.AdminToken, cfg.Stdout = "127.0.0.1:0", dbURL, "admin-0123456789abcdef", io.Discard
	cfg.UIListen, cfg.SecretsFile, cfg.DataDir = "127.0.0.1:0", filepath.Join(dir, "secrets.toml"), filepath.Join(dir, "images")
	_, stop, err := startService(cfg)
	if err != nil {
		t.Fatalf("start with a new data_dir under an existing folder: %v", err)
	}
	stop()
	if st, err := os.Stat(cfg.DataDir); err != nil || !st.IsDir() {
		t.Errorf("data_dir %s after the start: %v, want a folder", cfg.DataDir, err)
	}
}
