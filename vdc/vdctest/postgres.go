package vdctest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresBinDir holds Debian's postgresql-15 server binaries.
const PostgresBinDir = "/usr/lib/postgresql/15/bin"

// Role is the non-superuser role owning every database NewDatabase makes, the same
// shape as the appliance (role "quantix", password from secrets.toml).
const Role = "quantix"

// PostgresConfig tunes RunPostgres.
type PostgresConfig struct {
	// Durable keeps fsync and synchronous commit on, as in production. Tests leave
	// it off: a throwaway server gains nothing from flushing.
	Durable bool
	// MaxConnections is the server's max_connections (default 200).
	MaxConnections int
	// Settings are extra "-c name=value" server settings.
	Settings []string
	// Host is the address the server listens on and is reached at (default
	// 127.0.0.1). With a server in a network namespace, Start starts the server's
	// command there and Dial connects from where the server is reachable.
	Host  string
	Start func(*exec.Cmd) error
	Dial  func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Postgres is a throwaway PostgreSQL 15 server listening on 127.0.0.1 with password
// (scram-sha-256) authentication only.
type Postgres struct {
	Dir      string // temp folder: data/, the unix socket, postgres.log
	Port     int
	Password string // of both the superuser "postgres" and the role "quantix"
	Host     string // listen and connect address; "" is 127.0.0.1

	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	mu      sync.Mutex
	ndb     int
	stopped bool
}

// StartPostgres starts a server for t and stops it when t ends. A missing PostgreSQL
// installation fails the test with the command that installs it.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	p, err := RunPostgres(PostgresConfig{})
	if err != nil {
		t.Fatalf("start postgresql: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop postgresql: %v", err)
		}
	})
	return p
}

var shared struct {
	sync.Mutex
	enabled bool
	p       *Postgres
	err     error
}

// Main runs a test binary's tests with one PostgreSQL server shared by every test
// that asks for it through Shared or Start (initdb costs seconds), and stops it at the
// end. Call it from TestMain: func TestMain(m *testing.M) { vdctest.Main(m) }.
func Main(m *testing.M) {
	shared.Lock()
	shared.enabled = true
	shared.Unlock()
	code := m.Run()
	shared.Lock()
	if shared.p != nil {
		if err := shared.p.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "vdctest: stop shared postgresql: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	shared.Unlock()
	os.Exit(code)
}

// Shared returns the test binary's shared server when TestMain called Main, and
// otherwise a server of t's own (stopped when t ends).
func Shared(t testing.TB) *Postgres {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.enabled {
		return StartPostgres(t)
	}
	if shared.p == nil && shared.err == nil {
		shared.p, shared.err = RunPostgres(PostgresConfig{})
	}
	if shared.err != nil {
		t.Fatalf("start shared postgresql: %v", shared.err)
	}
	return shared.p
}

// RunPostgres initdbs a fresh cluster in a new folder under /tmp and starts it. The
// caller must Stop it. As root it runs initdb and postgres as the "postgres" system
// user (both refuse root).
func RunPostgres(cfg PostgresConfig) (*Postgres, error) {
	for _, bin := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(PostgresBinDir, bin)); err != nil {
			return nil, fmt.Errorf("%s/%s not found: run make deps (apt-get install postgresql-15): %w", PostgresBinDir, bin, err)
		}
	}
	cred, uid, gid, err := serverCredential()
	if err != nil {
		return nil, err
	}
	dir, err := serverDir("qx-pg-", cred, uid, gid)
	if err != nil {
		return nil, err
	}
	p := &Postgres{Dir: dir, Host: cfg.Host, dial: cfg.Dial, exited: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	p.Password = randomHex(16)
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("postgresql password file: %w", err)
	}
	if cred != nil {
		if err := os.Chown(pwfile, uid, gid); err != nil {
			return nil, fmt.Errorf("postgresql password file: %w", err)
		}
	}
	initdb := exec.Command(filepath.Join(PostgresBinDir, "initdb"),
		"-D", filepath.Join(dir, "data"), "-U", "postgres", "--pwfile", pwfile,
		"--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync", "--no-instructions")
	initdb.Env = serverEnv()
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	os.Remove(pwfile)
	if cfg.Host != "" {
		// initdb allows loopback clients only; a server on another address takes
		// password logins from anywhere its namespace routes.
		hba, err := os.OpenFile(filepath.Join(dir, "data", "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, err = hba.WriteString("host all all 0.0.0.0/0 scram-sha-256\n")
			err = errors.Join(err, hba.Close())
		}
		if err != nil {
			return nil, fmt.Errorf("pg_hba.conf: %w", err)
		}
	}

	for attempt := 0; ; attempt++ {
		err := p.start(cfg, cred)
		if err == nil {
			break
		}
		// Another process may have taken the free port between probe and bind.
		if attempt < 2 && strings.Contains(err.Error(), "could not bind") {
			p.Port = 0
			continue
		}
		return nil, err
	}
	if err := p.bootstrap(); err != nil {
		p.Stop()
		return nil, err
	}
	ok = true
	return p, nil
}

// start starts the server of p.Dir on p.Port, or on a free port when it is 0.
func (p *Postgres) start(cfg PostgresConfig, cred *syscall.Credential) error {
	if p.Port == 0 {
		port, err := freePort()
		if err != nil {
			return err
		}
		p.Port = port
	}
	port := p.Port
	maxConn := cfg.MaxConnections
	if maxConn == 0 {
		maxConn = 200
	}
	args := []string{"-D", filepath.Join(p.Dir, "data"), "-k", p.Dir, "-h", p.host(),
		"-p", strconv.Itoa(port), "-c", "max_connections=" + strconv.Itoa(maxConn)}
	if !cfg.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	for _, s := range cfg.Settings {
		args = append(args, "-c", s)
	}
	logPath := filepath.Join(p.Dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("postgres log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(PostgresBinDir, "postgres"), args...)
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed by its timeout must not leave the server
	// running (SIGQUIT is PostgreSQL's immediate shutdown). Go sets it after
	// switching credentials, so it survives the switch to the postgres user.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	startCmd := cmd.Start
	if cfg.Start != nil {
		startCmd = func() error { return cfg.Start(cmd) }
	}
	if err := startCmd(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p.cmd = cmd
	p.exited = make(chan struct{})
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := p.Connect(ctx, p.url("postgres", "postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-p.exited:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited at start (%v):\n%s", p.waitErr, tail(log, 20))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres not accepting connections after 60s: %v\n%s", err, tail(log, 20))
		}
	}
}

// bootstrap creates the application role, as the appliance's postgres bootstrap does.
func (p *Postgres) bootstrap() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := p.Connect(ctx, p.url("postgres", "postgres"))
	if err != nil {
		return fmt.Errorf("connect postgresql: %w", err)
	}
	defer conn.Close(ctx)
	// The password is hex: safe to inline (CREATE ROLE takes no parameters).
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'", Role, p.Password)); err != nil {
		return fmt.Errorf("create role %s: %w", Role, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown), waits for it and removes its folder.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return nil
	}
	p.stopped = true
	p.mu.Unlock()
	var err error
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
			err = errors.New("postgres ignored SIGINT for 30s and was killed")
		}
	}
	if rerr := os.RemoveAll(p.Dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

func (p *Postgres) host() string {
	if p.Host == "" {
		return "127.0.0.1"
	}
	return p.Host
}

// Connect opens a connection to url (one of p's), from where p is reachable.
func (p *Postgres) Connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	if p.dial != nil {
		cfg.DialFunc = p.dial
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// Pid is the postmaster's process id.
func (p *Postgres) Pid() int { return p.cmd.Process.Pid }

// AdminURL is the superuser's URL to database "postgres".
func (p *Postgres) AdminURL() string { return p.url("postgres", "postgres") }

// URL is the role quantix's URL to database db.
func (p *Postgres) URL(db string) string { return p.url(Role, db) }

func (p *Postgres) url(user, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, p.Password),
		Host: net.JoinHostPort(p.host(), strconv.Itoa(p.Port)), Path: "/" + db,
		RawQuery: "sslmode=disable"}
	return u.String()
}

// CreateDatabase creates a fresh empty database owned by role quantix and returns
// its URL.
func (p *Postgres) CreateDatabase(ctx context.Context) (string, error) {
	p.mu.Lock()
	p.ndb++
	name := fmt.Sprintf("qx_%d_%d", os.Getpid(), p.ndb)
	p.mu.Unlock()
	conn, err := p.Connect(ctx, p.AdminURL())
	if err != nil {
		return "", fmt.Errorf("connect postgresql: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" OWNER "+Role); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return p.URL(name), nil
}

// NewDatabase is CreateDatabase for tests: a fresh database per call.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := p.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Log returns the server log, for failure messages.
func (p *Postgres) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "postgres.log"))
	return string(b)
}

// serverDir makes a folder for a server under /tmp that the postgres user (cred,
// when running as root) owns. Not t.TempDir(): its parents are 0700 and the
// postgres user could not reach it.
func serverDir(prefix string, cred *syscall.Credential, uid, gid int) (string, error) {
	dir, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		return "", fmt.Errorf("postgresql temp folder: %w", err)
	}
	err = os.Chmod(dir, 0o755)
	if err == nil && cred != nil {
		err = os.Chown(dir, uid, gid)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("postgresql temp folder: %w", err)
	}
	return dir, nil
}

func serverCredential() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, 0, 0, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root needs the postgres system user to run initdb and postgres: run make deps (apt-get install postgresql-15): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

func serverEnv() []string {
	return []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC"}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freePorts finds n distinct free ports on 127.0.0.1 (all held open while probing).
func freePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func freePort() (int, error) {
	ports, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

func tail(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
