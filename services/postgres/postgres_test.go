package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
)

// requirePostgres fails (never skips, except with -short) when PostgreSQL 15 or root
// is missing: the service's privilege drop is what is being tested.
func requirePostgres(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real PostgreSQL server; skipped with -short")
	}
	if _, err := os.Stat(filepath.Join(DefaultBinDir, "initdb")); err != nil {
		t.Fatalf("PostgreSQL 15 is missing (%v): run make deps (apt-get install postgresql-15)", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("this test drops privileges to the postgres user and must run as root")
	}
	if _, err := lookupOSUser(DefaultOSUser); err != nil {
		t.Fatalf("%v: run make deps (apt-get install postgresql-15 creates the postgres user)", err)
	}
}

// testConfig is a configuration under a fresh folder in /tmp that the postgres user
// can reach (t.TempDir's parents are 0700).
func testConfig(t testing.TB) Config {
	t.Helper()
	root, err := os.MkdirTemp("/tmp", "qxpg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.DataRoot = filepath.Join(root, "data")
	cfg.SocketDir = filepath.Join(root, "run")
	cfg.Port = freePort(t)
	cfg.Secrets = filepath.Join(root, "cfg", "vdc", "secrets.toml")
	cfg.StopTimeout = quantix.Duration{Duration: 30 * time.Second}
	cfg.StartTimeout = quantix.Duration{Duration: 60 * time.Second}
	// No block devices: this machine's disks are not the appliance's.
	cfg.SysBlock = filepath.Join(root, "sys")
	cfg.DevDir = filepath.Join(root, "dev")
	return cfg
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// running is one Run of the service.
type running struct {
	svc            *Service
	cancel         context.CancelFunc
	done           chan error
	stdout, stderr *syncbuf.Buffer
}

// start runs the service and waits until it is ready or Run returns.
func start(t testing.TB, cfg Config) (*running, error) {
	t.Helper()
	r := &running{done: make(chan error, 1), stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}}
	cfg.Stdout, cfg.Stderr = r.stdout, r.stderr
	log := slog.New(slog.NewTextHandler(r.stderr, nil))
	svc, err := New(cfg, log)
	if err != nil {
		return nil, err
	}
	r.svc = svc
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(60 * time.Second):
			t.Errorf("Run did not return 60 s after cancel")
		}
		if t.Failed() {
			t.Logf("service stderr:\n%s\nstdout:\n%s", r.stderr, r.stdout)
		}
	})
	select {
	case <-svc.Ready():
		return r, nil
	case err := <-r.done:
		r.done <- err
		return r, fmt.Errorf("Run returned before ready: %w", err)
	case <-time.After(2 * time.Minute):
		return r, errors.New("not ready within 2 minutes")
	}
}

// stop cancels Run as SIGTERM does and wants a clean return.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("Run did not return 60 s after cancel")
	}
}

func secretsOf(t *testing.T, cfg Config) quantix.VDCSecretsFile {
	t.Helper()
	s, err := quantix.LoadVDCSecrets(cfg.Secrets)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(cctx, url)
}

func wantMode(t *testing.T, path string, mode os.FileMode, uid int) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != mode {
		t.Errorf("%s has mode %v, want %v", path, st.Mode().Perm(), mode)
	}
	if got := int(st.Sys().(*syscall.Stat_t).Uid); got != uid {
		t.Errorf("%s belongs to uid %d, want %d", path, got, uid)
	}
}

// TestLifecycle boots from nothing, proves the vDC's login and that nothing else gets
// in, stops cleanly, starts again on the same data without crash recovery, and then
// repairs a lost database password and a lost superuser password.
func TestLifecycle(t *testing.T) {
	requirePostgres(t)
	ctx := context.Background()
	cfg := testConfig(t)
	pgUser, _ := lookupOSUser(DefaultOSUser)
	// secrets.toml already holds the vDC's admin token hash: it must survive.
	const adminHash = "sha256:0123456789abcdef"
	if err := quantix.SaveVDCSecrets(cfg.Secrets, quantix.VDCSecretsFile{AdminTokenHash: adminHash}); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(cfg.DataRoot, "postgresql")

	// Round 1: first boot.
	r, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := r.stdout.String()
	wantReady := quantix.ReadyMarker("postgres", "data", dataDir, "version", "15")
	if !strings.Contains(out, wantReady+"\n") {
		t.Errorf("stdout = %q, want the line %q", out, wantReady)
	}
	if !strings.Contains(out, quantix.WarningMarker("postgres", RAMWarning)+"\n") {
		t.Errorf("stdout = %q, want the RAM warning (the test's data root is not a mount point)", out)
	}
	if strings.Contains(out, "LOG:") {
		t.Errorf("server log leaked to stdout: %q", out)
	}
	if got := r.svc.PreviousState(); got != "" {
		t.Errorf("PreviousState() after initdb = %q, want \"\"", got)
	}
	sec := secretsOf(t, cfg)
	if len(sec.DatabasePassword) < 40 || sec.AdminTokenHash != adminHash {
		t.Fatalf("secrets.toml = %+v, want a long database_password and admin_token_hash kept", sec)
	}
	wantMode(t, cfg.Secrets, 0o600, 0)
	wantMode(t, dataDir, 0o700, int(pgUser.uid))
	wantMode(t, cfg.DataRoot, 0o755, 0)
	wantMode(t, filepath.Join(cfg.DataRoot, "postgresql-superuser.password"), 0o600, 0)
	if m, _ := filepath.Glob(filepath.Join(cfg.DataRoot, ".initdb-pw-*")); len(m) > 0 {
		t.Errorf("initdb password files left behind: %v", m)
	}

	url := DatabaseURL(cfg.SocketDir, cfg.Port, sec.DatabasePassword)
	conn, err := connect(ctx, url)
	if err != nil {
		t.Fatalf("connect as quantix with the password from secrets.toml: %v", err)
	}
	var user, db, enc, collate string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database(), current_setting('server_encoding'), datcollate FROM pg_database WHERE datname = current_database()").Scan(&user, &db, &enc, &collate); err != nil {
		t.Fatal(err)
	}
	if user != "quantix" || db != "quantix_vdc" || enc != "UTF8" || collate != "C" {
		t.Errorf("connected as %s to %s (%s, collate %s), want quantix to quantix_vdc (UTF8, C)", user, db, enc, collate)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('round one')"); err != nil {
		t.Fatalf("create a table as quantix: %v", err)
	}
	conn.Close(ctx)

	// Over TCP on both loopback addresses, with SCRAM.
	for _, host := range []string{"127.0.0.1", "[::1]"} {
		c, err := connect(ctx, fmt.Sprintf("postgres://quantix:%s@%s:%d/quantix_vdc?sslmode=disable", sec.DatabasePassword, host, cfg.Port))
		if err != nil {
			t.Errorf("connect over TCP %s: %v", host, err)
			continue
		}
		c.Close(ctx)
	}
	// Nothing gets in without the password: no trust, no peer.
	superPW, _ := os.ReadFile(filepath.Join(cfg.DataRoot, "postgresql-superuser.password"))
	denied := map[string]string{
		"quantix without password":  fmt.Sprintf("postgres://quantix@/quantix_vdc?host=%s&port=%d&sslmode=disable", cfg.SocketDir, cfg.Port),
		"postgres without password": fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d&sslmode=disable", cfg.SocketDir, cfg.Port),
		"quantix wrong password":    DatabaseURL(cfg.SocketDir, cfg.Port, "wrong"),
		"postgres over TCP no pw":   fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", cfg.Port),
	}
	for name, u := range denied {
		c, err := connect(ctx, u)
		if err == nil {
			c.Close(ctx)
			t.Errorf("%s: connected, want refused", name)
		} else if !isAuthError(err) && !strings.Contains(err.Error(), "password") {
			t.Errorf("%s: %v, want an authentication failure", name, err)
		}
	}
	// The superuser sees what the server enforces.
	su, err := connect(ctx, fmt.Sprintf("postgres://postgres:%s@/postgres?host=%s&port=%d&sslmode=disable", strings.TrimSpace(string(superPW)), cfg.SocketDir, cfg.Port))
	if err != nil {
		t.Fatalf("connect as superuser with the stored password: %v", err)
	}
	rows, err := su.Query(ctx, "SELECT type, coalesce(address, ''), auth_method FROM pg_hba_file_rules ORDER BY line_number")
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for rows.Next() {
		var typ, addr, m string
		if err := rows.Scan(&typ, &addr, &m); err != nil {
			t.Fatal(err)
		}
		rules = append(rules, typ+" "+addr+" "+m)
	}
	want := []string{"local  scram-sha-256", "host 127.0.0.1 scram-sha-256", "host ::1 scram-sha-256"}
	if strings.Join(rules, "|") != strings.Join(want, "|") {
		t.Errorf("pg_hba rules = %q, want %q", rules, want)
	}
	settings := map[string]string{"listen_addresses": "127.0.0.1, ::1", "password_encryption": "scram-sha-256", "fsync": "on", "unix_socket_directories": cfg.SocketDir}
	for k, v := range settings {
		var got string
		if err := su.QueryRow(ctx, "SELECT current_setting($1)", k).Scan(&got); err != nil || got != v {
			t.Errorf("setting %s = %q (%v), want %q", k, got, err, v)
		}
	}
	var verifier string
	if err := su.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'quantix'").Scan(&verifier); err != nil || !strings.HasPrefix(verifier, "SCRAM-SHA-256$4096:") {
		t.Errorf("quantix's stored password = %q (%v), want a SCRAM-SHA-256 verifier", verifier, err)
	}
	su.Close(ctx)

	r.stop(t)
	state, err := r.svc.ClusterState(ctx)
	if err != nil || state != "shut down" {
		t.Fatalf("pg_controldata after stop: %q, %v, want \"shut down\"", state, err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid still there after stop: %v", err)
	}

	// Round 2: the same data, no crash recovery, the table is still there.
	r2, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.svc.PreviousState(); got != "shut down" {
		t.Errorf("PreviousState() on the second start = %q, want \"shut down\"", got)
	}
	for _, bad := range []string{"not properly shut down", "automatic recovery", "initdb"} {
		if strings.Contains(r2.stderr.String(), bad) {
			t.Errorf("second start log mentions %q", bad)
		}
	}
	if sec2 := secretsOf(t, cfg); sec2 != sec {
		t.Errorf("secrets.toml changed on the second start: %+v, want %+v", sec2, sec)
	}
	conn, err = connect(ctx, url)
	if err != nil {
		t.Fatalf("connect on the second start: %v", err)
	}
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != "round one" {
		t.Errorf("SELECT v FROM kept = %q, %v, want \"round one\"", v, err)
	}
	conn.Close(ctx)
	r2.stop(t)

	// Round 3: secrets.toml lost the database password, and the superuser password
	// file is gone too. Both are reset; other secrets are kept.
	if err := quantix.SaveVDCSecrets(cfg.Secrets, quantix.VDCSecretsFile{AdminTokenHash: adminHash}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(cfg.DataRoot, "postgresql-superuser.password")); err != nil {
		t.Fatal(err)
	}
	r3, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sec3 := secretsOf(t, cfg)
	if sec3.DatabasePassword == "" || sec3.DatabasePassword == sec.DatabasePassword || sec3.AdminTokenHash != adminHash {
		t.Errorf("secrets.toml after losing the password = %+v, want a new database_password and the admin hash kept", sec3)
	}
	for _, msg := range []string{"secrets.toml had no database_password", "superuser password file missing"} {
		if !strings.Contains(r3.stderr.String(), msg) {
			t.Errorf("log lacks %q", msg)
		}
	}
	if c, err := connect(ctx, url); err == nil {
		c.Close(ctx)
		t.Errorf("the old database password still works after the reset")
	}
	conn, err = connect(ctx, DatabaseURL(cfg.SocketDir, cfg.Port, sec3.DatabasePassword))
	if err != nil {
		t.Fatalf("connect with the new password: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != "round one" {
		t.Errorf("SELECT v FROM kept after the reset = %q, %v", v, err)
	}
	conn.Close(ctx)
	r3.stop(t)

	// Round 4: secrets.toml holds another password (restored from elsewhere): the
	// role gets the stored one.
	if err := quantix.SaveVDCSecrets(cfg.Secrets, quantix.VDCSecretsFile{DatabasePassword: "restored-password-0123456789", AdminTokenHash: adminHash}); err != nil {
		t.Fatal(err)
	}
	r4, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r4.stderr.String(), "did not match secrets.toml") {
		t.Errorf("log lacks the password mismatch warning")
	}
	conn, err = connect(ctx, DatabaseURL(cfg.SocketDir, cfg.Port, "restored-password-0123456789"))
	if err != nil {
		t.Fatalf("connect with the restored password: %v", err)
	}
	conn.Close(ctx)
	r4.stop(t)

	// Round 5: a superuser password file that does not match is an operator's
	// matter (nothing is guessed or overwritten); the error says what to do.
	superFile := filepath.Join(cfg.DataRoot, "postgresql-superuser.password")
	if err := os.WriteFile(superFile, []byte("not-the-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := start(t, cfg); err == nil || !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), "does not match the cluster: delete that file") {
		t.Fatalf("start with a wrong superuser password = %v, want quantix.ErrConfig saying to delete the file", err)
	}
	waitNoPostgres(t, dataDir)
	if state, err := r4.svc.ClusterState(ctx); state != "shut down" || err != nil {
		t.Errorf("pg_controldata after the refused start = %q, %v, want \"shut down\"", state, err)
	}
	// A database_password nobody could have generated is refused, naming the file.
	if err := os.Remove(superFile); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Secrets, []byte("database_password = \"pässwörd\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := start(t, cfg); err == nil || !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), cfg.Secrets+": database_password must be printable ASCII") {
		t.Fatalf("start with a non-ASCII database_password = %v, want quantix.ErrConfig naming the file", err)
	}
}

// TestRefusesForeignData starts on data folders it must not touch and checks that Run
// refuses with quantix.ErrConfig and leaves every byte as it was.
func TestRefusesForeignData(t *testing.T) {
	requirePostgres(t)
	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"PostgreSQL 14 cluster", map[string]string{"PG_VERSION": "14\n", "global/pg_control": "x", "base/1/1": "y", "pg_wal/000": "z"},
			[]string{"PostgreSQL 14 cluster", "runs PostgreSQL 15", "pg_upgrade"}},
		{"foreign files", map[string]string{"notes.txt": "mine"}, []string{"not a PostgreSQL cluster (notes.txt)"}},
		{"cluster owned by another user", map[string]string{"PG_VERSION": "15\n", "global/pg_control": "x", "base/1/1": "y", "pg_wal/000": "z"},
			[]string{"belongs to uid 0, not to postgres", "chown -R postgres:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			dataDir := filepath.Join(cfg.DataRoot, "postgresql")
			for name, content := range tt.files {
				p := filepath.Join(dataDir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := start(t, cfg)
			if err == nil || !errors.Is(err, quantix.ErrConfig) {
				t.Fatalf("start on %s = %v, want an quantix.ErrConfig refusal", tt.name, err)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			var got []string
			filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					rel, _ := filepath.Rel(dataDir, p)
					got = append(got, rel)
					if b, _ := os.ReadFile(p); string(b) != tt.files[rel] {
						t.Errorf("%s changed to %q", rel, b)
					}
				}
				return nil
			})
			if len(got) != len(tt.files) {
				t.Errorf("data folder now holds %v, want only %d original files", got, len(tt.files))
			}
			if _, err := os.Stat(cfg.Secrets); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("secrets.toml written although the data was refused")
			}
		})
	}
}

// TestServerDeath kills the postmaster: Run must fail (so init restarts it), and the
// next start must notice the unclean shutdown and recover.
func TestServerDeath(t *testing.T) {
	requirePostgres(t)
	cfg := testConfig(t)
	r, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	pid := r.svc.PID()
	if pid <= 0 {
		t.Fatalf("PID() = %d while running", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if err == nil || !strings.Contains(err.Error(), "postgres exited") {
			t.Fatalf("Run after the server died = %v, want a \"postgres exited\" error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not notice the server's death within 30 s")
	}
	// The killed postmaster's children notice its death and exit on their own; until
	// they have, PostgreSQL refuses to start (its shared memory is still in use) and
	// init's backoff would retry. Wait for them as that backoff would.
	waitNoPostgres(t, filepath.Join(cfg.DataRoot, "postgresql"))
	r2, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.svc.PreviousState(); got != "in production" {
		t.Errorf("PreviousState() after a kill = %q, want \"in production\"", got)
	}
	if !strings.Contains(r2.stderr.String(), "previous shutdown was not clean") {
		t.Errorf("log lacks the unclean shutdown warning")
	}
	r2.stop(t)
	if state, err := r2.svc.ClusterState(context.Background()); state != "shut down" || err != nil {
		t.Errorf("pg_controldata after the recovered run's stop = %q, %v", state, err)
	}
}

// TestLeftoverPostmaster: a server still running on the data folder (its qx-postgres
// died without stopping it) is stopped with a fast shutdown, then started as ours.
func TestLeftoverPostmaster(t *testing.T) {
	requirePostgres(t)
	cfg := testConfig(t)
	r, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.stop(t)
	leftover := r.svc.command(context.Background(), "postgres", "-D", filepath.Join(cfg.DataRoot, "postgresql"))
	var lout syncbuf.Buffer
	leftover.Stdout, leftover.Stderr = &lout, &lout
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- leftover.Wait() }()
	t.Cleanup(func() { leftover.Process.Kill() })
	// Wait until it has written postmaster.pid and listens.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(lout.String(), "ready to accept connections") {
		if time.Now().After(deadline) {
			t.Fatalf("leftover server did not start: %s", lout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r2, err := start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("the leftover server still runs")
	}
	if !strings.Contains(lout.String(), "fast shutdown request") {
		t.Errorf("the leftover server was not stopped with a fast shutdown: %s", lout.String())
	}
	if got := r2.svc.PreviousState(); got != "shut down" {
		t.Errorf("PreviousState() after stopping the leftover = %q, want \"shut down\"", got)
	}
	r2.stop(t)
}

func TestScramVerifierFormat(t *testing.T) {
	// A fixed salt gives a fixed verifier; the login tests prove the server accepts it.
	v, err := scramVerifierSalt("pencil", []byte("0123456789abcdef"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.FieldsFunc(v, func(r rune) bool { return r == '$' || r == ':' })
	if len(parts) != 5 || parts[0] != "SCRAM-SHA-256" || parts[1] != "4096" || parts[2] != "MDEyMzQ1Njc4OWFiY2RlZg==" {
		t.Errorf("scramVerifierSalt() = %q", v)
	}
	if _, err := scramVerifier("pässword"); err == nil {
		t.Errorf("scramVerifier(non-ASCII) = nil error, want one (no SASLprep here)")
	}
}

// TestStorage covers where the database may live: on a mounted QUANTIX-DATA (the
// mount table is faked: it is hardware), refused while a data disk exists but is not
// mounted, and in RAM (with the warning) when there is no data disk at all.
func TestStorage(t *testing.T) {
	requirePostgres(t)
	requireMkfs(t)
	ctx := context.Background()

	t.Run("mounted data disk: no RAM warning", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.MountInfo = filepath.Join(t.TempDir(), "mountinfo")
		mi := fmt.Sprintf("22 1 0:21 / / rw - rootfs rootfs rw\n32 22 8:18 / %s rw,relatime - ext4 /dev/vdb rw\n", cfg.DataRoot)
		if err := os.WriteFile(cfg.MountInfo, []byte(mi), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := start(t, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(r.stdout.String(), "warning") {
			t.Errorf("stdout = %q, want no warning with QUANTIX-DATA mounted", r.stdout.String())
		}
		if !strings.Contains(r.stderr.String(), "data on a persistent device") {
			t.Errorf("log lacks the persistent device")
		}
		r.stop(t)
	})

	disks := func(t *testing.T, cfg *Config, format bool) string {
		d := newFakeDisks(t)
		dev := d.add(t, "vdb", 32<<20, nil)
		if format {
			if err := FormatDataDevice(ctx, dev, "", testLogger(t)); err != nil {
				t.Fatal(err)
			}
		}
		cfg.SysBlock, cfg.DevDir = d.cfg.SysBlock, d.cfg.DevDir
		return dev
	}
	refusals := []struct {
		name string
		edit func(t *testing.T, cfg *Config)
		want string
	}{
		{"data disk present but not mounted", func(t *testing.T, cfg *Config) { disks(t, cfg, true) },
			"but %s is not mounted: init mounts it by label"},
		{"blank configured disk not yet formatted", func(t *testing.T, cfg *Config) {
			cfg.Device = disks(t, cfg, false)
			cfg.FormatBlank = true
		}, "run `qx-postgres prepare-disk`"},
	}
	for _, rf := range refusals {
		t.Run(rf.name, func(t *testing.T) {
			cfg := testConfig(t)
			rf.edit(t, &cfg)
			want := rf.want
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, cfg.DataRoot)
			}
			_, err := start(t, cfg)
			if err == nil || !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), want) {
				t.Fatalf("start = %v, want quantix.ErrConfig containing %q", err, want)
			}
			if _, err := os.Stat(filepath.Join(cfg.DataRoot, "postgresql")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a cluster was made in RAM although a data disk exists")
			}
		})
	}
}

// waitNoPostgres waits until no postgres process works in dataDir.
func waitNoPostgres(t *testing.T, dataDir string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		procs, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range procs {
			var pid int
			fmt.Sscanf(filepath.Base(p), "%d", &pid)
			if isPostmasterOf(pid, dataDir) {
				left = append(left, filepath.Base(p))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres processes %v still run in %s 30 s after the postmaster was killed", left, dataDir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
