package vdctest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Debian's Patroni and etcd (packages patroni, etcd-server), installed by make deps.
const (
	PatroniBin = "/usr/bin/patroni"
	EtcdBin    = "/usr/bin/etcd"
)

// Patroni timings of the test cluster: a leader key lives TTL seconds, Patroni's
// loop runs every LoopWait. Patroni requires loop_wait + 2*retry_timeout <= ttl.
const (
	PatroniTTL      = 10
	PatroniLoopWait = 1
	patroniRetry    = 3
	// PatroniSafetyMargin is how long before its leader key expires a watchdog
	// resets a leader whose Patroni stopped running (Patroni's safety_margin).
	PatroniSafetyMargin = 5
)

// Patroni is a PostgreSQL cluster managed by Patroni with a single etcd as its
// store (docs/design.md §17): throwaway processes on 127.0.0.1, with
// synchronous_mode (the leader only acknowledges commits its synchronous standby
// has) and failsafe_mode (a leader that loses etcd but reaches every member stays
// the leader).
type Patroni struct {
	Members  []*PatroniMember
	Password string // of the superuser "postgres" and the role "quantix"

	dir      string
	etcdPort int
	etcdPeer int
	etcd     *process
}

// PatroniMember is one Patroni with its PostgreSQL server.
type PatroniMember struct {
	Name    string
	Port    int // PostgreSQL
	APIPort int // Patroni's REST API
	Dir     string

	patroni *process
	cfg     string
	cred    *syscall.Credential
}

// process is a child process and the end of its Wait.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

func startProcess(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	return p, nil
}

// stop sends sig and waits up to timeout, then kills.
func (p *process) stop(sig syscall.Signal, timeout time.Duration) {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT) // a frozen process cannot act on sig
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// StartPatroni starts etcd and n Patroni members (each initdb's or clones its
// server as Patroni decides), waits until one leads and the others stream from it,
// creates the role quantix and returns. Everything stops when t ends.
func StartPatroni(t testing.TB, n int) *Patroni {
	t.Helper()
	for _, bin := range []string{PatroniBin, EtcdBin} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s not found: run make deps (apt-get install patroni etcd-server): %v", bin, err)
		}
	}
	cred, uid, gid, err := serverCredential()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := serverDir("qx-patroni-", cred, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	pc := &Patroni{dir: dir, Password: randomHex(16)}
	t.Cleanup(func() {
		for _, m := range pc.Members {
			m.stop()
		}
		pc.etcd.stop(syscall.SIGTERM, 10*time.Second)
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("patroni cluster kept in %s", dir)
		}
	})
	ports, err := freePorts(2 + 2*n)
	if err != nil {
		t.Fatal(err)
	}
	pc.etcdPort, pc.etcdPeer = ports[0], ports[1]
	if err := pc.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		m := &PatroniMember{Name: fmt.Sprintf("pg%d", i), Port: ports[2+2*i], APIPort: ports[3+2*i],
			Dir: filepath.Join(dir, fmt.Sprintf("pg%d", i)), cred: cred}
		if err := os.MkdirAll(m.Dir, 0o700); err == nil && cred != nil {
			err = os.Chown(m.Dir, uid, gid)
		}
		if err != nil {
			t.Fatal(err)
		}
		m.cfg = filepath.Join(m.Dir, "patroni.yml")
		if err := os.WriteFile(m.cfg, pc.config(m), 0o644); err != nil {
			t.Fatal(err)
		}
		pc.Members = append(pc.Members, m)
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		if i == 0 { // the first initdb's; the others clone it
			if _, err := pc.WaitLeader(nil, 90*time.Second); err != nil {
				t.Fatalf("%v\n%s", err, m.Log())
			}
		}
	}
	if err := pc.WaitReplicas(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	leader, _ := pc.WaitLeader(nil, time.Second)
	if err := leader.Postgres(pc).bootstrap(); err != nil {
		t.Fatal(err)
	}
	return pc
}

// config is a member's patroni.yml (JSON is YAML).
func (pc *Patroni) config(m *PatroniMember) []byte {
	params := map[string]any{
		"wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on",
		"max_wal_senders": 8, "max_replication_slots": 8, "wal_keep_size": "64MB",
		"max_connections": 200, "synchronous_commit": "on",
		// A throwaway server gains nothing from flushing; full_page_writes stays on:
		// pg_rewind needs it to bring a failed primary back as a replica.
		"fsync": "off",
	}
	cfg := map[string]any{
		"scope": "quantix-test",
		"name":  m.Name,
		"log":   map[string]any{"level": "INFO", "dir": m.Dir},
		"restapi": map[string]any{
			"listen":          fmt.Sprintf("127.0.0.1:%d", m.APIPort),
			"connect_address": fmt.Sprintf("127.0.0.1:%d", m.APIPort),
		},
		"etcd3": map[string]any{"hosts": []string{fmt.Sprintf("127.0.0.1:%d", pc.etcdPort)}},
		"bootstrap": map[string]any{
			"dcs": map[string]any{
				"ttl": PatroniTTL, "loop_wait": PatroniLoopWait, "retry_timeout": patroniRetry,
				"maximum_lag_on_failover": 1 << 20,
				"synchronous_mode":        true,
				"failsafe_mode":           true,
				"postgresql": map[string]any{
					"use_pg_rewind": true, "use_slots": true, "parameters": params,
				},
			},
			"initdb": []any{map[string]string{"encoding": "UTF8"}, map[string]string{"locale": "C"}, map[string]string{"auth": "scram-sha-256"}},
			"pg_hba": []string{
				"local all all trust",
				"host replication replicator 127.0.0.1/32 scram-sha-256",
				"host all all 127.0.0.1/32 scram-sha-256",
			},
		},
		"postgresql": map[string]any{
			"listen":          fmt.Sprintf("127.0.0.1:%d", m.Port),
			"connect_address": fmt.Sprintf("127.0.0.1:%d", m.Port),
			"data_dir":        filepath.Join(m.Dir, "data"),
			"bin_dir":         PostgresBinDir,
			"pgpass":          filepath.Join(m.Dir, "pgpass"),
			"authentication": map[string]any{
				"superuser":   map[string]string{"username": "postgres", "password": pc.Password},
				"replication": map[string]string{"username": "replicator", "password": pc.Password},
				"rewind":      map[string]string{"username": "postgres", "password": pc.Password},
			},
			"parameters": map[string]any{"unix_socket_directories": m.Dir},
		},
		"watchdog": map[string]any{"mode": "off"}, // no watchdog device: tests reset "machines" themselves
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return b
}

// StartEtcd starts (or restarts, on the same data) the etcd.
func (pc *Patroni) StartEtcd() error {
	peer := fmt.Sprintf("http://127.0.0.1:%d", pc.etcdPeer)
	client := fmt.Sprintf("http://127.0.0.1:%d", pc.etcdPort)
	cmd := exec.Command(EtcdBin, "--name", "e0", "--data-dir", filepath.Join(pc.dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "e0="+peer, "--initial-cluster-state", "new", "--log-outputs", "stderr")
	logf, err := os.OpenFile(filepath.Join(pc.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("etcd log: %w", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	pc.etcd = p
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(client + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("etcd exited at start: %v", p.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("etcd not healthy after 30s (log %s)", filepath.Join(pc.dir, "etcd.log"))
}

// StopEtcd stops the etcd (SIGTERM) and waits for it.
func (pc *Patroni) StopEtcd() {
	pc.etcd.stop(syscall.SIGTERM, 10*time.Second)
}

// Start starts the member's Patroni (as the postgres user when running as root).
func (m *PatroniMember) Start() error {
	cmd := exec.Command(PatroniBin, m.cfg)
	// Its own folder: the postgres user may not enter the test's working directory
	// (a clone under a 0700 temporary folder), and Patroni's workers chdir to it.
	cmd.Dir = m.Dir
	cmd.Env = append(serverEnv(), "PATRONI_LOG_FORMAT=%(asctime)s %(levelname)s: %(message)s")
	logf, err := os.OpenFile(filepath.Join(m.Dir, "patroni.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("patroni log: %w", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGTERM makes Patroni stop its PostgreSQL too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: m.cred, Setpgid: true, Pdeathsig: syscall.SIGTERM}
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("start patroni %s: %w", m.Name, err)
	}
	m.patroni = p
	return nil
}

// stop ends Patroni and, should Patroni have left it, its PostgreSQL.
func (m *PatroniMember) stop() {
	m.patroni.stop(syscall.SIGTERM, 30*time.Second)
	if pid, err := m.PostmasterPid(); err == nil {
		syscall.Kill(pid, syscall.SIGQUIT)
	}
}

// Freeze stops the member's Patroni with SIGSTOP (a hung Patroni: its PostgreSQL
// runs on); Thaw resumes it.
func (m *PatroniMember) Freeze() error { return m.patroni.cmd.Process.Signal(syscall.SIGSTOP) }
func (m *PatroniMember) Thaw() error   { return m.patroni.cmd.Process.Signal(syscall.SIGCONT) }

// Reset is what a watchdog does to a machine whose Patroni stopped running: the
// machine resets, Patroni and its postgres die at once (SIGKILL). Start again is
// the machine's reboot.
func (m *PatroniMember) Reset() error {
	pid, err := m.PostmasterPid()
	if err != nil {
		return err
	}
	m.patroni.cmd.Process.Kill()
	<-m.patroni.exited
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 postmaster %d of %s: %w", pid, m.Name, err)
	}
	return nil
}

// PostmasterPid reads the running server's postmaster.pid.
func (m *PatroniMember) PostmasterPid() (int, error) {
	b, err := os.ReadFile(filepath.Join(m.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid of %s: %w", m.Name, err)
	}
	return pid, nil
}

// KillPostgres kills the member's postmaster with SIGKILL (kill -9), as a crash
// or an out-of-memory kill would.
func (m *PatroniMember) KillPostgres() error {
	pid, err := m.PostmasterPid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 postmaster %d of %s: %w", pid, m.Name, err)
	}
	return nil
}

// Postgres is a handle on the member's server for connections (AdminURL,
// CreateDatabase); Patroni owns the process, so never Stop it.
func (m *PatroniMember) Postgres(pc *Patroni) *Postgres {
	return &Postgres{Dir: m.Dir, Port: m.Port, Password: pc.Password, exited: make(chan struct{})}
}

// Log is the end of the member's Patroni output, for failure messages.
func (m *PatroniMember) Log() string {
	b, _ := os.ReadFile(filepath.Join(m.Dir, "patroni.out"))
	return tail(b, 30)
}

// memberStatus is what Patroni's REST API says of one member (GET /patroni).
type memberStatus struct {
	State    string `json:"state"`
	Role     string `json:"role"`
	Timeline int    `json:"timeline"`
}

func (m *PatroniMember) status() (memberStatus, error) {
	var st memberStatus
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/patroni", m.APIPort))
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// WaitLeader waits until a member other than not is the running leader (primary).
func (pc *Patroni) WaitLeader(not *PatroniMember, timeout time.Duration) (*PatroniMember, error) {
	deadline := time.Now().Add(timeout)
	var seen []string
	for {
		seen = seen[:0]
		for _, m := range pc.Members {
			st, err := m.status()
			seen = append(seen, fmt.Sprintf("%s: %s/%s %v", m.Name, st.Role, st.State, err))
			if err == nil && m != not && (st.Role == "master" || st.Role == "primary") && st.State == "running" {
				return m, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no patroni leader after %v: %s", timeout, strings.Join(seen, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// WaitReplicas waits until every member other than the leader runs as a replica
// streaming from it, and the leader has a synchronous standby.
func (pc *Patroni) WaitReplicas(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		leader, err := pc.WaitLeader(nil, time.Second)
		var last string
		if err == nil {
			var streaming, sync int
			err = func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, leader.Postgres(pc).AdminURL())
				if err != nil {
					return err
				}
				defer conn.Close(ctx)
				return conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'streaming'),
					count(*) FILTER (WHERE sync_state = 'sync') FROM pg_stat_replication`).Scan(&streaming, &sync)
			}()
			if err == nil && streaming == len(pc.Members)-1 && sync >= 1 {
				return nil
			}
			last = fmt.Sprintf("%d streaming, %d synchronous (%v)", streaming, sync, err)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("patroni replicas not streaming after %v: %s", timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// URL lists every member's server, in member order, with
// target_session_attrs=read-write, for a database the caller made.
func (pc *Patroni) URL(dbURL string) (string, error) {
	var ps []*Postgres
	for _, m := range pc.Members {
		ps = append(ps, m.Postgres(pc))
	}
	return MultiHostURL(dbURL, ps...)
}
