// Package postgres is the QvDC's PostgreSQL service: it finds (or, when allowed,
// formats) QUANTIX-DATA, creates the cluster on first boot (initdb as the postgres
// user, SCRAM passwords only, localhost only), keeps the vDC's role and database in
// place with the role's password in /quantix/vdc/secrets.toml, runs the server as its
// child, marks it ready, and stops it with a fast shutdown so the next start needs no
// crash recovery.
//
// What it does with the data folder and the data disk is decided by two pure
// functions over observed facts, DecideCluster and DecideDisk: nothing that is not
// blank or not a cluster of the right major version is ever overwritten.
//
// The superuser password lives beside the cluster on QUANTIX-DATA, in
// /var/lib/quantix/postgresql-superuser.password (0600, root); if it is lost, the
// next start sets a new one in single-user mode.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quantix/quantix"
)

// Name is the service name in console markers.
const Name = "postgres"

// RAMWarning is the warning printed when no QUANTIX-DATA is mounted.
const RAMWarning = "no QUANTIX-DATA: the database lives in RAM and nothing will persist"

// Service runs PostgreSQL for the vDC.
type Service struct {
	cfg   Config
	log   *slog.Logger
	user  osUser
	ready chan struct{}

	mu        sync.Mutex
	prevState string
	pid       int
}

// New checks cfg and returns a service; Run does the work.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	cfg = cfg.withDerived()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.MountInfo == "" {
		cfg.MountInfo = "/proc/self/mountinfo"
	}
	if cfg.SysBlock == "" {
		cfg.SysBlock = "/sys/class/block"
	}
	if cfg.DevDir == "" {
		cfg.DevDir = "/dev"
	}
	return &Service{cfg: cfg, log: log, ready: make(chan struct{})}, nil
}

// Ready is closed once the server accepts connections and the vDC's role and
// database are in place.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// PreviousState is pg_controldata's cluster state found before the server started
// ("shut down" after a clean stop); "" for a new cluster.
func (s *Service) PreviousState() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prevState
}

// PID is the postmaster's process id while it runs, else 0.
func (s *Service) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Run prepares the cluster, runs the server until ctx is cancelled (then stops it with
// a fast shutdown and returns nil) or the server dies (then returns an error, so the
// supervisor restarts the service). Errors that need an operator wrap quantix.ErrConfig.
func (s *Service) Run(ctx context.Context) error {
	err := s.bootAndServe(ctx)
	if err != nil && ctx.Err() != nil && !errors.Is(err, quantix.ErrConfig) {
		// A stop request during start-up is a clean stop.
		s.log.Info("stopped during start-up", "err", err)
		return nil
	}
	return err
}

func (s *Service) bootAndServe(ctx context.Context) error {
	u, err := lookupOSUser(s.cfg.OSUser)
	if err != nil {
		return err
	}
	s.user = u
	major, err := s.binaryMajor(ctx)
	if err != nil {
		return err
	}
	if err := s.checkStorage(); err != nil {
		return err
	}
	if err := os.MkdirAll(s.cfg.DataRoot, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", s.cfg.DataRoot, err)
	}
	if tmp := s.initdbDir(); exists(tmp) {
		s.log.Warn("removing a cluster left half-made by an interrupted initdb", "dir", tmp)
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("remove %s: %w", tmp, err)
		}
	}

	// A/B upgrades: keep or put back the database around a trial (trial.go).
	if did, err := s.guardTrial(ctx); err != nil {
		return err
	} else if did != "" {
		s.log.Info(did)
		if s.cfg.Stdout != nil && strings.Contains(did, "discarded") {
			fmt.Fprintln(s.cfg.Stdout, quantix.WarningMarker(Name, did))
		}
	}

	facts, err := ObserveCluster(s.cfg.DataDir)
	if err != nil {
		return err
	}
	action, err := DecideCluster(facts, major)
	s.log.Info("data folder", "dir", s.cfg.DataDir, "action", action.String(), "pg_version", facts.PGVersion, "binaries", major)
	if err != nil {
		return err
	}
	switch action {
	case ClusterInit:
		if err := s.initCluster(ctx); err != nil {
			return err
		}
	case ClusterUse:
		if err := s.checkOwner(); err != nil {
			return err
		}
		if err := s.stopLeftover(ctx); err != nil {
			return err
		}
		if _, ok, err := s.readSuperuserPassword(); err != nil {
			return err
		} else if !ok {
			s.log.Warn("superuser password file missing: setting a new superuser password in single-user mode",
				"file", s.cfg.SuperuserPasswordFile)
			if err := s.resetSuperuserPassword(ctx); err != nil {
				return err
			}
		}
	}
	if err := s.writeServerConfig(s.cfg.DataDir); err != nil {
		return err
	}
	if err := s.chownMkdir(s.cfg.SocketDir, 0o755); err != nil {
		return err
	}
	superPW, ok, err := s.readSuperuserPassword()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("superuser password file %s is missing after bootstrap", s.cfg.SuperuserPasswordFile)
	}

	if action == ClusterUse {
		state, err := s.ClusterState(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.prevState = state
		s.mu.Unlock()
		if cleanState(state) {
			s.log.Info("previous shutdown was clean", "state", state)
		} else {
			s.log.Warn("previous shutdown was not clean: PostgreSQL runs crash recovery", "state", state)
		}
	}
	return s.serve(ctx, superPW, major)
}

// serve starts the postmaster, waits for it, ensures the vDC's database, marks ready
// and supervises the server until ctx ends or it dies.
func (s *Service) serve(ctx context.Context, superPW, major string) error {
	start := time.Now()
	// Not CommandContext: on cancellation the server gets SIGINT (fast shutdown), not
	// SIGKILL. Its own process group keeps a group-wide SIGTERM (a smart shutdown that
	// waits for clients) away from it; Pdeathsig stops it if this process is killed.
	cmd := s.command(context.Background(), "postgres", "-D", s.cfg.DataDir)
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
	var tail tailWriter
	cmd.Stdout = io.MultiWriter(s.cfg.Stderr, &tail)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.mu.Lock()
	s.pid = cmd.Process.Pid
	s.mu.Unlock()
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		s.mu.Lock()
		s.pid = 0
		s.mu.Unlock()
		close(exited)
	}()
	s.log.Info("postgres started", "pid", cmd.Process.Pid)

	fail := func(err error) error {
		if serr := s.stop(cmd, exited); serr != nil {
			s.log.Error("stop postgres", "err", serr)
		}
		return err
	}
	su, err := s.waitReady(ctx, superPW, exited)
	if err != nil {
		select {
		case <-exited:
			return fmt.Errorf("postgres exited while starting: %v: %s", waitErr, tail.lastLine())
		default:
		}
		return fail(err)
	}
	err = s.ensureDatabase(ctx, su)
	su.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fail(err)
	}
	s.log.Info("postgres ready", "seconds", fmt.Sprintf("%.2f", time.Since(start).Seconds()))
	fmt.Fprintln(s.cfg.Stdout, quantix.ReadyMarker(Name, "data", s.cfg.DataDir, "version", major))
	close(s.ready)

	select {
	case <-ctx.Done():
		s.log.Info("stopping postgres: fast shutdown")
		if err := s.stop(cmd, exited); err != nil {
			return err
		}
		s.log.Info("postgres stopped")
		return nil
	case <-exited:
		return fmt.Errorf("postgres exited: %v: %s", waitErr, tail.lastLine())
	}
}

// stop asks for a fast shutdown (SIGINT: roll back sessions, checkpoint, exit) and
// waits StopTimeout; past it, an immediate shutdown (SIGQUIT) and then SIGKILL.
func (s *Service) stop(cmd *exec.Cmd, exited <-chan struct{}) error {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{
		{syscall.SIGINT, s.cfg.StopTimeout.Duration},
		{syscall.SIGQUIT, 5 * time.Second},
		{syscall.SIGKILL, 5 * time.Second},
	}
	for i, st := range steps {
		if err := cmd.Process.Signal(st.sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal postgres: %w", err)
		}
		select {
		case <-exited:
			if i > 0 {
				return fmt.Errorf("postgres did not finish a fast shutdown within %s: stopped with %v; the next start runs crash recovery",
					s.cfg.StopTimeout.Duration, st.sig)
			}
			return nil
		case <-time.After(st.wait):
			s.log.Warn("postgres still running after signal", "signal", st.sig.String(), "waited", st.wait.String())
		}
	}
	return errors.New("postgres did not exit after SIGKILL")
}

// checkStorage decides whether DataRoot is persistent. Not a mount point: if a
// QUANTIX-DATA disk exists or one is configured, init must mount it first (an error);
// with none, the database lives in RAM and a warning marker says so.
func (s *Service) checkStorage() error {
	mi, err := os.ReadFile(s.cfg.MountInfo)
	if err != nil {
		return fmt.Errorf("read %s: %w", s.cfg.MountInfo, err)
	}
	m := quantix.ParseMountInfo(mi, s.cfg.DataRoot)
	if m.Persistent() {
		s.log.Info("data on a persistent device", "root", s.cfg.DataRoot, "dev", m.Source, "fstype", m.FSType)
		return nil
	}
	facts, err := ObserveDisks(s.cfg.DiskConfig, s.log)
	if err != nil {
		return err
	}
	action, dev, err := DecideDisk(facts)
	switch {
	case err != nil:
		return err
	case action == DiskUse && !s.cfg.Mount:
		return configErrorf("QUANTIX-DATA is on %s but %s is not mounted: init mounts it by label before starting postgres", dev, s.cfg.DataRoot)
	case action == DiskFormat && !s.cfg.Mount:
		return configErrorf("data_device %s is blank and may be formatted, but %s is not mounted: run `qx-postgres prepare-disk` before init mounts QUANTIX-DATA", dev, s.cfg.DataRoot)
	case action == DiskFormat || action == DiskUse:
		if action == DiskFormat {
			if err := FormatDataDevice(context.Background(), dev, s.cfg.Mkfs, s.log); err != nil {
				return err
			}
		}
		if err := mountData(dev, s.cfg.DataRoot); err != nil {
			return err
		}
		s.log.Info("mounted QUANTIX-DATA", "dev", dev, "dir", s.cfg.DataRoot, "formatted", action == DiskFormat)
		return nil
	}
	s.log.Warn("no QUANTIX-DATA: the database lives in RAM", "root", s.cfg.DataRoot, "mounted", m.Mounted, "fstype", m.FSType)
	fmt.Fprintln(s.cfg.Stdout, quantix.WarningMarker(Name, RAMWarning))
	return nil
}

// checkOwner refuses a cluster that the server's user does not own; postgres would
// refuse it too, with a less helpful message.
func (s *Service) checkOwner() error {
	st, err := os.Stat(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", s.cfg.DataDir, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != s.user.uid {
		return configErrorf("data folder %s belongs to uid %d, not to %s (uid %d): chown -R %s: %s",
			s.cfg.DataDir, sys.Uid, s.user.name, s.user.uid, s.user.name, s.cfg.DataDir)
	}
	if st.Mode().Perm()&0o027 != 0 {
		if err := os.Chmod(s.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("chmod %s: %w", s.cfg.DataDir, err)
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// mountData mounts the ext4 QUANTIX-DATA device dev at dir. The kernel asks init's
// modprobe helper for the ext4 module when it is not loaded yet.
func mountData(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	if err := syscall.Mount(dev, dir, "ext4", syscall.MS_NOATIME|syscall.MS_NODEV, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	return nil
}
