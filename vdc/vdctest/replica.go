package vdctest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Replicated is a primary with one streaming standby made by pg_basebackup, both
// throwaway servers on 127.0.0.1, for failover tests (docs/design.md §17).
type Replicated struct {
	Primary, Standby *Postgres
	// Sync: the standby is synchronous (synchronous_standby_names = '*'), so a
	// commit the primary acknowledged is on the standby too.
	Sync bool
}

// StartReplicated starts a primary, clones it with pg_basebackup -R and starts the
// clone as its streaming standby; both stop when t ends. With sync, commits wait
// for the standby.
func StartReplicated(t testing.TB, sync bool) *Replicated {
	t.Helper()
	r, err := RunReplicated(PostgresConfig{}, sync)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// RunReplicated is StartReplicated outside a test (the load command): cfg is the
// primary's, and the standby gets its durability and max_connections (a hot standby
// refuses to start with fewer connections than its primary). The caller must Stop it.
func RunReplicated(cfg PostgresConfig, sync bool) (*Replicated, error) {
	cfg.Settings = append(slices.Clone(cfg.Settings), "wal_level=replica", "max_wal_senders=4", "wal_keep_size=64MB",
		// Commits must wait for the standby; the base settings turn that off.
		"synchronous_commit=on")
	pri, err := RunPostgres(cfg)
	if err != nil {
		return nil, err
	}
	sb, err := pri.cloneStandby(0, cfg)
	if err != nil {
		pri.Stop()
		return nil, err
	}
	r := &Replicated{Primary: pri, Standby: sb}
	err = r.waitStreaming(30 * time.Second)
	if err == nil && sync {
		// Only now: with no standby yet, every commit (the bootstrap's too) would wait.
		err = r.SetSync(true)
	}
	if err != nil {
		err = fmt.Errorf("%w\nprimary log:\n%s\nstandby log:\n%s", err, tail([]byte(pri.Log()), 20), tail([]byte(sb.Log()), 20))
		r.Stop()
		return nil, err
	}
	return r, nil
}

// SetSync makes the standby synchronous (synchronous_standby_names = '*') or
// asynchronous (the empty list) and waits until the primary reports it so.
func (r *Replicated) SetSync(sync bool) error {
	names := ""
	if sync {
		names = "*"
	}
	r.Sync = sync
	if err := r.Primary.exec(fmt.Sprintf(`ALTER SYSTEM SET synchronous_standby_names = '%s'`, names), `SELECT pg_reload_conf()`); err != nil {
		return err
	}
	return r.waitStreaming(30 * time.Second)
}

// Stop stops the standby and the primary.
func (r *Replicated) Stop() {
	r.Standby.Stop()
	r.Primary.Stop()
}

// cloneStandby makes a standby of p with pg_basebackup -R (standby.signal and
// primary_conninfo) in a new folder and starts it on port (0: a free one), durable
// and with max_connections as pcfg, the primary's configuration.
func (p *Postgres) cloneStandby(port int, pcfg PostgresConfig) (*Postgres, error) {
	cred, uid, gid, err := serverCredential()
	if err != nil {
		return nil, err
	}
	dir, err := serverDir("qx-pg-standby-", cred, uid, gid)
	if err != nil {
		return nil, err
	}
	sb := &Postgres{Dir: dir, Password: p.Password, Port: port, exited: make(chan struct{})}
	cmd := exec.Command(filepath.Join(PostgresBinDir, "pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-U", "postgres", "-D", filepath.Join(dir, "data"), "-R", "-X", "stream", "--no-sync", "-c", "fast")
	cmd.Env = append(serverEnv(), "PGPASSWORD="+p.Password, "PGAPPNAME=standby")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_basebackup: %w\n%s", err, out)
	}
	// The clone keeps the primary's settings (they are command-line flags, not in
	// its files) only where start passes them again: it gets the same base ones.
	if err := sb.start(PostgresConfig{Durable: pcfg.Durable, MaxConnections: pcfg.MaxConnections,
		Settings: []string{"hot_standby=on", "wal_level=replica", "max_wal_senders=4"}}, cred); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return sb, nil
}

// waitStreaming waits until the primary reports the standby streaming (and
// synchronous, when Sync).
func (r *Replicated) waitStreaming(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, r.Primary.AdminURL())
		if err == nil {
			err = conn.QueryRow(ctx, `SELECT coalesce(string_agg(state || '/' || sync_state, ','), '') FROM pg_stat_replication`).Scan(&last)
			conn.Close(ctx)
		}
		cancel()
		want := "streaming/async"
		if r.Sync {
			want = "streaming/sync"
		}
		if err == nil && last == want {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("standby not %s after %v: pg_stat_replication says %q", map[bool]string{true: "streaming synchronously", false: "streaming"}[r.Sync], timeout, last)
}

// exec runs statements as the superuser.
func (p *Postgres) exec(stmts ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := p.Connect(ctx, p.AdminURL())
	if err != nil {
		return fmt.Errorf("connect postgresql: %w", err)
	}
	defer conn.Close(ctx)
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// KillPrimary stops the primary the way `pg_ctl stop -m immediate` does (SIGQUIT:
// no checkpoint, no goodbye to clients) and waits until it is gone.
func (r *Replicated) KillPrimary(t testing.TB) {
	t.Helper()
	if err := r.Primary.cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		t.Fatalf("stop the primary (immediate): %v", err)
	}
	select {
	case <-r.Primary.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the primary did not exit 30s after SIGQUIT")
	}
}

// Promote makes the standby the primary (pg_promote, waiting until it accepts
// writes).
func (r *Replicated) Promote(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.Standby.AdminURL())
	if err != nil {
		t.Fatalf("connect the standby: %v", err)
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_promote(wait => true, wait_seconds => 60)`).Scan(&ok); err != nil || !ok {
		t.Fatalf("promote the standby: %v (promoted %v)\n%s", err, ok, tail([]byte(r.Standby.Log()), 20))
	}
}

// RejoinOldPrimary brings a server back on the old primary's port as a streaming
// standby of the promoted one (what Patroni or an operator does with a failed
// primary: pg_rewind or a fresh clone; here a fresh clone). It becomes Standby; the
// promoted server becomes Primary. A vDC whose URL lists the old port first must
// never write to it.
func (r *Replicated) RejoinOldPrimary(t testing.TB) {
	t.Helper()
	old := r.Primary
	old.Stop()
	sb, err := r.Standby.cloneStandby(old.Port, PostgresConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Stop() })
	r.Primary, r.Standby = r.Standby, sb
	// The promoted server has no synchronous_standby_names: the clone streams
	// asynchronously.
	r.Sync = false
	if err := r.waitStreaming(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// MultiHostURL rewrites a database URL of p (NewDatabase's) to list the hosts of
// ps in order, with target_session_attrs=read-write: libpq's and pgx's syntax for
// "the first of these that takes writes".
func MultiHostURL(dbURL string, ps ...*Postgres) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", err
	}
	var hosts []string
	for _, p := range ps {
		hosts = append(hosts, net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)))
	}
	u.Host = strings.Join(hosts, ",")
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	u.RawQuery = q.Encode()
	return u.String(), nil
}
