package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quantix/quantix"
)

// osUser is the unprivileged system user the server runs as.
type osUser struct {
	name     string
	uid, gid uint32
}

func lookupOSUser(name string) (osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return osUser{}, configErrorf("look up system user %s (the image must have it in /etc/passwd and /etc/group): %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return osUser{}, configErrorf("system user %s has uid %q gid %q: not numbers", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return osUser{}, configErrorf("system user %s has uid 0: PostgreSQL refuses to run as root", name)
	}
	return osUser{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// command prepares a PostgreSQL program to run as the server's user with a clean,
// fixed environment (no PG* variables leak in; C locale so outputs parse).
func (s *Service) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.cfg.BinDir, prog), args...)
	cmd.Dir = "/"
	cmd.Env = []string{
		"PATH=" + s.cfg.BinDir + ":/usr/bin:/bin",
		"LC_ALL=C",
		"TZ=UTC",
		"HOME=" + filepath.Dir(s.cfg.DataDir),
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: s.user.uid, Gid: s.user.gid, Groups: []uint32{}},
	}
	return cmd
}

// tailWriter keeps the last bytes written, to quote a failed program's last words.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(p), nil
}

// lastLine returns the last non-empty line written.
func (t *tailWriter) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(t.buf)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// run runs a PostgreSQL program to completion, its output going to the server log;
// a failure quotes its last output line.
func (s *Service) run(ctx context.Context, stdin io.Reader, prog string, args ...string) error {
	cmd := s.command(ctx, prog, args...)
	var tail tailWriter
	cmd.Stdin = stdin
	cmd.Stdout = io.MultiWriter(s.cfg.Stderr, &tail)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, tail.lastLine())
	}
	return nil
}

// BinaryMajor returns the major version of the postgres binary ("15").
func (s *Service) binaryMajor(ctx context.Context) (string, error) {
	bin := filepath.Join(s.cfg.BinDir, "postgres")
	if _, err := os.Stat(bin); err != nil {
		return "", configErrorf("bin_dir %s: %w (Debian package postgresql-15)", s.cfg.BinDir, err)
	}
	out, err := s.command(ctx, "postgres", "-V").Output()
	if err != nil {
		return "", fmt.Errorf("%s -V: %w", bin, err)
	}
	return parseVersion(string(out))
}

// parseVersion reads "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)".
func parseVersion(out string) (string, error) {
	f := strings.Fields(out)
	if len(f) < 3 || f[1] != "(PostgreSQL)" {
		return "", fmt.Errorf("unexpected postgres -V output %q", strings.TrimSpace(out))
	}
	major, _, _ := strings.Cut(f[2], ".")
	if !isMajor(major) {
		return "", fmt.Errorf("unexpected postgres -V output %q", strings.TrimSpace(out))
	}
	return major, nil
}

// chownMkdir makes dir (mode perm) owned by the server's user; parents get 0755.
func (s *Service) chownMkdir(dir string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chown(dir, int(s.user.uid), int(s.user.gid)); err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return nil
}

// initdbDir is where initdb builds a new cluster before it is renamed into place,
// so an interrupted first boot leaves no half-made cluster at DataDir.
func (s *Service) initdbDir() string {
	return filepath.Join(filepath.Dir(s.cfg.DataDir), "."+filepath.Base(s.cfg.DataDir)+".initdb")
}

// initCluster runs initdb into initdbDir, writes the configuration, stores the
// superuser password and renames the cluster into DataDir.
func (s *Service) initCluster(ctx context.Context) error {
	start := time.Now()
	tmp := s.initdbDir()
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove interrupted initdb %s: %w", tmp, err)
	}
	if err := s.chownMkdir(tmp, 0o700); err != nil {
		return err
	}
	superPW, err := newPassword()
	if err != nil {
		return err
	}
	pwFile, err := s.writePWFile(filepath.Dir(tmp), superPW)
	if err != nil {
		return err
	}
	defer os.Remove(pwFile)
	s.log.Info("initdb", "dir", s.cfg.DataDir)
	err = s.run(ctx, nil, "initdb", "-D", tmp, "--username="+Superuser,
		"--encoding=UTF8", "--locale=C", "--auth=scram-sha-256",
		"--pwfile="+pwFile, "--no-instructions")
	if err != nil {
		return fmt.Errorf("initdb %s: %w", s.cfg.DataDir, err)
	}
	os.Remove(pwFile)
	if err := s.writeServerConfig(tmp); err != nil {
		return err
	}
	if err := quantix.WriteFileAtomic(s.cfg.SuperuserPasswordFile, []byte(superPW+"\n"), 0o600); err != nil {
		return fmt.Errorf("store superuser password: %w", err)
	}
	// An empty DataDir (absent, or an empty folder) is replaced by the new cluster.
	if err := os.Rename(tmp, s.cfg.DataDir); err != nil {
		return fmt.Errorf("move new cluster into %s: %w", s.cfg.DataDir, err)
	}
	if err := syncDir(filepath.Dir(s.cfg.DataDir)); err != nil {
		return err
	}
	s.log.Info("initdb done", "dir", s.cfg.DataDir, "seconds", fmt.Sprintf("%.1f", time.Since(start).Seconds()))
	return nil
}

// writePWFile writes password to a 0600 file owned by the server's user, for
// initdb --pwfile. The caller removes it.
func (s *Service) writePWFile(dir, password string) (string, error) {
	f, err := os.CreateTemp(dir, ".initdb-pw-*")
	if err != nil {
		return "", fmt.Errorf("initdb password file: %w", err)
	}
	name := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		err = f.Chown(int(s.user.uid), int(s.user.gid))
	}
	if err == nil {
		_, err = f.WriteString(password + "\n")
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("initdb password file %s: %w", name, err)
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// confInclude is appended once to postgresql.conf; quantix.conf is rewritten on every
// boot, so the settings below follow the appliance's version and configuration.
const confInclude = "include = 'quantix.conf'"

// ServerConf is the content of quantix.conf for a socket folder and port.
func ServerConf(socketDir string, port int) string {
	return fmt.Sprintf(`# Written by qx-postgres on every start; edits are lost. postgresql.conf includes it last.
# Localhost only: the vDC runs on this appliance. Both loopback addresses are named
# instead of "localhost" so no /etc/hosts is needed.
listen_addresses = '127.0.0.1, ::1'
port = %d
unix_socket_directories = '%s'
unix_socket_permissions = 0777
password_encryption = 'scram-sha-256'
ssl = off

# Durability: the vDC's state must survive power loss.
fsync = on
synchronous_commit = on
full_page_writes = on

# Memory for a small appliance (1-4 GiB, shared with the vDC).
max_connections = 50
shared_buffers = 128MB
work_mem = 4MB
maintenance_work_mem = 64MB
effective_cache_size = 512MB
max_wal_size = 256MB
min_wal_size = 64MB

# Logs go to stderr; the supervisor forwards them to the console and /var/log/quantix.
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%%m [%%p] '
log_timezone = 'UTC'
timezone = 'UTC'
`, port, strings.ReplaceAll(socketDir, "'", "''"))
}

// HBAConf is the content of pg_hba.conf: SCRAM passwords for every connection, only
// over the unix socket and loopback; no trust, no peer, no replication.
const HBAConf = `# Written by qx-postgres on every start; edits are lost.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
`

// writeServerConfig writes quantix.conf and pg_hba.conf into a cluster folder and
// makes sure postgresql.conf includes quantix.conf.
func (s *Service) writeServerConfig(dir string) error {
	pgconf := filepath.Join(dir, "postgresql.conf")
	b, err := os.ReadFile(pgconf)
	if err != nil {
		return fmt.Errorf("read %s: %w", pgconf, err)
	}
	if !hasLine(b, confInclude) {
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		b = append(b, "\n# Quantix appliance settings (written by qx-postgres on every start).\n"+confInclude+"\n"...)
		if err := s.writeOwned(pgconf, b); err != nil {
			return err
		}
	}
	if err := s.writeOwned(filepath.Join(dir, "quantix.conf"), []byte(ServerConf(s.cfg.SocketDir, s.cfg.Port))); err != nil {
		return err
	}
	return s.writeOwned(filepath.Join(dir, "pg_hba.conf"), []byte(HBAConf))
}

func hasLine(b []byte, line string) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == line {
			return true
		}
	}
	return false
}

// writeOwned writes a file atomically, 0600 and owned by the server's user.
func (s *Service) writeOwned(path string, data []byte) error {
	if err := quantix.WriteFileAtomic(path, data, 0o600); err != nil {
		return err
	}
	if err := os.Chown(path, int(s.user.uid), int(s.user.gid)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// ClusterState returns pg_controldata's "Database cluster state" ("shut down",
// "in production", ...).
func (s *Service) ClusterState(ctx context.Context) (string, error) {
	out, err := s.command(ctx, "pg_controldata", "-D", s.cfg.DataDir).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("pg_controldata %s: %w: %s", s.cfg.DataDir, err, strings.TrimSpace(string(out)))
	}
	return parseClusterState(string(out))
}

func parseClusterState(out string) (string, error) {
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Database cluster state" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("pg_controldata printed no \"Database cluster state\"")
}

// CleanStates are the pg_controldata states after which no crash recovery runs.
func cleanState(state string) bool {
	return state == "shut down" || state == "shut down in recovery"
}

// resetSuperuserPassword sets a new superuser password in single-user mode (the
// server must be stopped) and stores it. It is used when the password file is lost.
func (s *Service) resetSuperuserPassword(ctx context.Context) error {
	pw, err := newPassword()
	if err != nil {
		return err
	}
	verifier, err := scramVerifier(pw)
	if err != nil {
		return err
	}
	stmt := fmt.Sprintf("ALTER ROLE %s PASSWORD %s;\n", quoteIdent(Superuser), quoteLiteral(verifier))
	if err := s.run(ctx, strings.NewReader(stmt), "postgres", "--single", "-D", s.cfg.DataDir, "postgres"); err != nil {
		return fmt.Errorf("reset superuser password: %w", err)
	}
	if err := quantix.WriteFileAtomic(s.cfg.SuperuserPasswordFile, []byte(pw+"\n"), 0o600); err != nil {
		return fmt.Errorf("store superuser password: %w", err)
	}
	return nil
}

// readSuperuserPassword returns the stored superuser password; ok is false when the
// file does not exist.
func (s *Service) readSuperuserPassword() (string, bool, error) {
	b, err := os.ReadFile(s.cfg.SuperuserPasswordFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read superuser password: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return "", false, nil
	}
	return pw, true, nil
}

// stopLeftover stops a postmaster still running on DataDir from an earlier
// qx-postgres that died without stopping it (postgres would refuse to start next to
// it). Only a process named postgres whose working folder is DataDir is signalled.
func (s *Service) stopLeftover(ctx context.Context) error {
	b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, "postmaster.pid"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read postmaster.pid: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 1 {
		return nil // postgres itself reports a garbled lock file
	}
	if !isPostmasterOf(pid, s.cfg.DataDir) {
		return nil // stale after a crash: postgres removes it itself
	}
	s.log.Warn("a postgres from an earlier run is still running: fast shutdown", "pid", pid)
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		return fmt.Errorf("stop leftover postgres %d: %w", pid, err)
	}
	deadline := time.Now().Add(s.cfg.StopTimeout.Duration)
	for isPostmasterOf(pid, s.cfg.DataDir) {
		if time.Now().After(deadline) {
			return fmt.Errorf("leftover postgres %d did not stop within %s", pid, s.cfg.StopTimeout.Duration)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func isPostmasterOf(pid int, dataDir string) bool {
	proc := fmt.Sprintf("/proc/%d", pid)
	comm, err := os.ReadFile(proc + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
		return false
	}
	// A zombie (exited, not yet reaped) has no working folder any more.
	cwd, err := os.Readlink(proc + "/cwd")
	if err != nil {
		return false
	}
	want, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		want = dataDir
	}
	return cwd == want
}
