package initd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// Restart policy (docs/design.md §8; the grace before SIGKILL is quantix.StopGrace).
const (
	MinBackoff  = 1 * time.Second
	MaxBackoff  = 30 * time.Second
	StableRun   = time.Minute      // a run this long resets the backoff
	ConfigRetry = 60 * time.Second // quantix.ExitConfig: retry slowly
)

// Clock is the time source of the supervisor; tests pass a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// SupervisorConfig configures a Supervisor.
type SupervisorConfig struct {
	Services []quantix.Service
	// Console receives every line the services print (prefixed with the service
	// name) and the supervisor's fatal markers.
	Console io.Writer
	// LogDir holds <name>.log per service; empty disables log files.
	LogDir string
	// Clock defaults to the real clock.
	Clock Clock
	// Grace is how long a service has to exit after SIGTERM (default quantix.StopGrace).
	Grace time.Duration
	// Env is the services' environment (default os.Environ()).
	Env []string
}

// Errors Restart returns that callers may branch on.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrShuttingDown   = errors.New("the system is shutting down")
)

// Supervisor runs services as child processes: in dependency order, each started
// once the services it depends on are ready, restarted with backoff (or at once on
// request), stopped in reverse order.
type Supervisor struct {
	cfg      SupervisorConfig
	log      *slog.Logger
	order    []string
	svcs     map[string]*service
	allReady chan struct{}
	// afterBoot is closed by StartAfterBoot: the after_boot services start then.
	afterBoot     chan struct{}
	afterBootOnce sync.Once
	// shutdown is closed when Run begins to stop the services.
	shutdown     chan struct{}
	shutdownOnce sync.Once

	consoleMu sync.Mutex
}

type service struct {
	spec   quantix.Service
	ready  chan struct{} // closed once the service has been ready once
	once   sync.Once
	exited chan struct{} // closed when the service's loop has returned

	// restartMu serializes restart requests of this service.
	restartMu sync.Mutex
	// kick wakes the loop out of a backoff wait or the done state (buffered 1).
	kick chan struct{}

	mu   sync.Mutex
	cmd  *exec.Cmd     // running process, nil between runs
	done chan struct{} // closed when cmd has been waited for
	stop bool          // the supervisor is stopping this service for good
	// restartReq says that the process's next exit (or the wait the loop is in)
	// was asked for by Restart: start again at once, backoff reset.
	restartReq bool
	// started is closed after the next start attempt (successful or not).
	started chan struct{}
	// What Services reports.
	state    string
	since    time.Time
	pid      int
	starts   int
	lastErr  string
	startErr error // the last start attempt's error, nil if it started
}

// NewSupervisor checks the service list (names, dependencies, no cycles).
func NewSupervisor(cfg SupervisorConfig, log *slog.Logger) (*Supervisor, error) {
	if err := validateServicesOnly(cfg.Services); err != nil {
		return nil, err
	}
	order, err := quantix.ServiceOrder(cfg.Services)
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Grace == 0 {
		cfg.Grace = quantix.StopGrace
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	s := &Supervisor{cfg: cfg, log: log, order: order, svcs: map[string]*service{}, allReady: make(chan struct{}), afterBoot: make(chan struct{}), shutdown: make(chan struct{})}
	now := cfg.Clock.Now()
	for _, sp := range cfg.Services {
		s.svcs[sp.Name] = &service{spec: sp, ready: make(chan struct{}), exited: make(chan struct{}),
			kick: make(chan struct{}, 1), started: make(chan struct{}), state: quantix.ServiceWaiting, since: now}
	}
	return s, nil
}

func validateServicesOnly(svcs []quantix.Service) error {
	names := map[string]bool{}
	for _, s := range svcs {
		if s.Name == "" || names[s.Name] {
			return fmt.Errorf("services: empty or duplicate service name %q", s.Name)
		}
		names[s.Name] = true
		if s.Command == "" {
			return fmt.Errorf("services: %s has no command", s.Name)
		}
	}
	return nil
}

// Order returns the start order.
func (s *Supervisor) Order() []string { return append([]string(nil), s.order...) }

// AllReady is closed once every service but the after_boot ones has been ready
// once: the boot is complete then.
func (s *Supervisor) AllReady() <-chan struct{} { return s.allReady }

// StartAfterBoot lets the after_boot services start (once their dependencies are
// ready) and gives the boot_priority = "low" services the normal CPU priority.
// Init calls it after boot-complete, or when the boot takes too long.
func (s *Supervisor) StartAfterBoot() {
	s.afterBootOnce.Do(func() {
		close(s.afterBoot)
		for _, name := range s.order {
			svc := s.svcs[name]
			svc.mu.Lock()
			if svc.spec.BootPriority == quantix.PriorityLow && svc.pid != 0 {
				// The service leads its process group: this reaches every thread
				// of it and of its children.
				if err := unix.Setpriority(unix.PRIO_PGRP, svc.pid, 0); err != nil {
					s.log.Warn("normal CPU priority", "service", name, "err", err)
				}
			}
			svc.mu.Unlock()
		}
	})
}

// booting says whether StartAfterBoot has not been called yet.
func (s *Supervisor) booting() bool {
	select {
	case <-s.afterBoot:
		return false
	default:
		return true
	}
}

// lowNice is the priority boot_priority = "low" services start with during the boot.
const lowNice = 19

// startNiced starts cmd at nice lowNice: the thread that forks has that priority
// for the fork, and the child and its threads inherit it.
func startNiced(cmd *exec.Cmd, log *slog.Logger) error {
	runtime.LockOSThread()
	// PRIO_PROCESS with who 0 is the calling thread.
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, lowNice); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("lower the CPU priority for the start: %w", err)
	}
	err := cmd.Start()
	if perr := unix.Setpriority(unix.PRIO_PROCESS, 0, 0); perr != nil {
		// No other goroutine may run on this thread at nice 19: it stays locked
		// to this one, and the runtime ends it when the goroutine exits.
		log.Warn("restore the supervisor's CPU priority", "err", perr)
		return err
	}
	runtime.UnlockOSThread()
	return err
}

// Ready is closed once service name has been ready once.
func (s *Supervisor) Ready(name string) <-chan struct{} { return s.svcs[name].ready }

// Grace is how long a service has to exit after SIGTERM before it is killed.
func (s *Supervisor) Grace() time.Duration { return s.cfg.Grace }

// Services reports every service's state, in start order.
func (s *Supervisor) Services() []quantix.ServiceStatus {
	out := make([]quantix.ServiceStatus, 0, len(s.order))
	for _, name := range s.order {
		svc := s.svcs[name]
		svc.mu.Lock()
		out = append(out, quantix.ServiceStatus{Name: name, State: svc.state, PID: svc.pid, Since: svc.since,
			Restarts: max(0, svc.starts-1), LastError: svc.lastErr})
		svc.mu.Unlock()
	}
	return out
}

// setState records a new state; svc.mu must be held.
func (s *Supervisor) setState(svc *service, state string) {
	if svc.state != state {
		svc.state, svc.since = state, s.cfg.Clock.Now()
	}
}

func (s *Supervisor) shuttingDown() bool {
	select {
	case <-s.shutdown:
		return true
	default:
		return false
	}
}

// Run starts the services and supervises them until ctx is done; then it stops them
// in reverse start order (SIGTERM, then SIGKILL after Grace) and returns.
func (s *Supervisor) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, name := range s.order {
		go s.loop(runCtx, s.svcs[name])
	}
	go func() {
		for _, name := range s.order {
			if s.svcs[name].spec.AfterBoot {
				continue
			}
			select {
			case <-s.svcs[name].ready:
			case <-runCtx.Done():
				return
			}
		}
		close(s.allReady)
	}()
	<-ctx.Done()
	s.shutdownOnce.Do(func() { close(s.shutdown) })
	for i := len(s.order) - 1; i >= 0; i-- {
		s.stopService(s.svcs[s.order[i]])
	}
	cancel()
	for _, name := range s.order {
		<-s.svcs[name].exited
	}
	return nil
}

// stopService stops one service for good and waits for its process to end.
func (s *Supervisor) stopService(svc *service) {
	svc.mu.Lock()
	svc.stop = true
	cmd, done := svc.cmd, svc.done
	if cmd != nil {
		s.setState(svc, quantix.ServiceStopping)
	} else {
		s.setState(svc, quantix.ServiceStopped)
	}
	svc.mu.Unlock()
	if cmd == nil {
		return
	}
	s.terminate(svc, cmd, done)
	svc.mu.Lock()
	s.setState(svc, quantix.ServiceStopped)
	svc.mu.Unlock()
}

// terminate sends the service's process group SIGTERM, SIGKILL after Grace, and
// waits until the service's process is gone.
func (s *Supervisor) terminate(svc *service, cmd *exec.Cmd, done chan struct{}) {
	s.log.Info("stopping service", "service", svc.spec.Name, "pid", cmd.Process.Pid)
	signalGroup(cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(s.cfg.Grace):
		s.log.Warn("service ignored SIGTERM, killing it", "service", svc.spec.Name, "grace", s.cfg.Grace)
		signalGroup(cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// signalGroup signals every process of the group pgid leads: a service and the
// children it started, which would otherwise outlive it (gokrazy's supervisor does
// the same). A group already gone is not an error.
func signalGroup(pgid int, sig syscall.Signal) {
	_ = syscall.Kill(-pgid, sig)
}

// Restart stops service name cleanly (SIGTERM, SIGKILL after Grace) and starts it
// again at once, its backoff reset; a service waiting for its backoff delay, or
// done, starts at once. It returns once the new process has started (or failed to
// start). Services depending on it keep running. Restarts of one service are
// serialized; during a poweroff or reboot they are refused (ErrShuttingDown), as
// is a service still waiting for its dependencies.
func (s *Supervisor) Restart(ctx context.Context, name string) error {
	svc, ok := s.svcs[name]
	if !ok {
		return fmt.Errorf("restart %s: %w (services: %s)", name, ErrUnknownService, strings.Join(s.order, ", "))
	}
	svc.restartMu.Lock()
	defer svc.restartMu.Unlock()
	if s.shuttingDown() {
		return fmt.Errorf("restart %s: %w", name, ErrShuttingDown)
	}
	svc.mu.Lock()
	if svc.stop {
		svc.mu.Unlock()
		return fmt.Errorf("restart %s: %w", name, ErrShuttingDown)
	}
	if svc.state == quantix.ServiceWaiting {
		svc.mu.Unlock()
		if len(svc.spec.DependsOn) == 0 {
			return fmt.Errorf("restart %s: not started yet", name)
		}
		return fmt.Errorf("restart %s: not started yet: it waits for %s to be ready", name, strings.Join(svc.spec.DependsOn, ", "))
	}
	svc.restartReq = true
	started := svc.started
	cmd, done := svc.cmd, svc.done
	s.setState(svc, quantix.ServiceRestarting)
	svc.mu.Unlock()
	s.log.Info("restart requested", "service", name)
	if cmd != nil {
		s.terminate(svc, cmd, done)
	} else {
		select {
		case svc.kick <- struct{}{}:
		default:
		}
	}
	select {
	case <-started:
	case <-s.shutdown:
		return fmt.Errorf("restart %s: %w", name, ErrShuttingDown)
	case <-svc.exited:
		return fmt.Errorf("restart %s: %w", name, ErrShuttingDown)
	case <-ctx.Done():
		return fmt.Errorf("restart %s: stopped, not started again yet: %w", name, ctx.Err())
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if svc.startErr != nil {
		return fmt.Errorf("restart %s: %w", name, svc.startErr)
	}
	return nil
}

func (svc *service) stopping() bool {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	return svc.stop
}

// takeRestart reports and clears a pending restart request.
func (svc *service) takeRestart() bool {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	r := svc.restartReq
	svc.restartReq = false
	return r
}

func (svc *service) markReady() { svc.once.Do(func() { close(svc.ready) }) }

// loop runs one service until the supervisor stops.
func (s *Supervisor) loop(ctx context.Context, svc *service) {
	defer close(svc.exited)
	if svc.spec.AfterBoot {
		select {
		case <-s.afterBoot:
		case <-ctx.Done():
			return
		}
	}
	for _, d := range svc.spec.DependsOn {
		select {
		case <-s.svcs[d].ready:
		case <-ctx.Done():
			return
		}
	}
	backoff := time.Duration(0)
	for !svc.stopping() && ctx.Err() == nil {
		start := s.cfg.Clock.Now()
		code, lastErr, err := s.runOnce(svc)
		if svc.stopping() || ctx.Err() != nil {
			return
		}
		if svc.takeRestart() {
			s.log.Info("service restarting on request", "service", svc.spec.Name)
			backoff = 0
			continue
		}
		ran := s.cfg.Clock.Now().Sub(start)
		var delay time.Duration
		state := quantix.ServiceRestarting
		switch {
		case err != nil: // could not start at all: the image is wrong, like exit 78
			s.console(quantix.FatalMarker(svc.spec.Name, err))
			lastErr, state, delay = err.Error(), quantix.ServiceFailed, ConfigRetry
		case code == 0:
			s.log.Info("service finished", "service", svc.spec.Name)
			s.setDown(svc, quantix.ServiceDone, "")
			svc.markReady() // done: dependants may go on
			select {
			case <-svc.kick: // restart asked: run it again
				svc.takeRestart()
				backoff = 0
				continue
			case <-ctx.Done():
				return
			}
		case code == quantix.ExitConfig:
			msg := lastErr
			if msg == "" {
				msg = "exit status 78 (configuration error)"
			}
			s.console(quantix.FatalMarker(svc.spec.Name, errors.New(msg)))
			lastErr, state, delay = msg, quantix.ServiceFailed, ConfigRetry
		default:
			backoff = NextBackoff(backoff, ran)
			delay = backoff
			if lastErr == "" {
				lastErr = fmt.Sprintf("exit status %d", code)
			}
			s.log.Warn("service exited, restarting", "service", svc.spec.Name, "code", code, "ran", ran.Round(time.Millisecond), "delay", delay, "last_err", lastErr)
		}
		s.setDown(svc, state, lastErr)
		select {
		case <-s.cfg.Clock.After(delay):
		case <-svc.kick:
			svc.takeRestart()
			backoff = 0
		case <-ctx.Done():
			return
		}
	}
}

// setDown records that the service's process is gone.
func (s *Supervisor) setDown(svc *service, state, lastErr string) {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if svc.stop {
		return
	}
	s.setState(svc, state)
	if lastErr != "" {
		svc.lastErr = lastErr
	}
}

// NextBackoff returns the delay before the next restart: MinBackoff at first,
// doubling up to MaxBackoff, and back to MinBackoff after a run of StableRun.
func NextBackoff(prev, ran time.Duration) time.Duration {
	if prev == 0 || ran >= StableRun {
		return MinBackoff
	}
	return min(prev*2, MaxBackoff)
}

// runOnce starts the service process, forwards its output and waits for it. It
// returns the exit code (-1 when killed by a signal) and the last stderr line.
//
// The service leads its own session and so its own process group. Once it has
// exited, what is left of the group is killed: children a service left behind
// never run beside its next start, nor hold its output open. They are orphans then,
// and u-root's init (PID 1) reaps them.
func (s *Supervisor) runOnce(svc *service) (code int, lastErr string, err error) {
	name := svc.spec.Name
	cmd := exec.Command(svc.spec.Command, svc.spec.Args...)
	cmd.Env = s.cfg.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Own pipes, not cmd's: Wait returns when the service exits, even while a child
	// still holds the write ends, so that child can be killed.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		return 0, "", err
	}
	defer stdout.Close()
	stderr, stderrW, err := os.Pipe()
	if err != nil {
		stdoutW.Close()
		return 0, "", err
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stdoutW, stderrW
	closeWriters := func() {
		stdoutW.Close()
		stderrW.Close()
	}
	logw := s.openLog(name)
	defer logw.Close()

	svc.mu.Lock()
	if svc.stop {
		svc.mu.Unlock()
		closeWriters()
		return 0, "", nil
	}
	// This start answers any restart asked until now.
	svc.restartReq = false
	select {
	case <-svc.kick:
	default:
	}
	svc.starts++
	var startErr error
	start := cmd.Start
	if svc.spec.BootPriority == quantix.PriorityLow && s.booting() {
		// Under svc.mu: StartAfterBoot sees this process once it is started.
		start = func() error { return startNiced(cmd, s.log) }
	}
	if err := start(); err != nil {
		startErr = fmt.Errorf("start %s: %w", svc.spec.Command, err)
	}
	closeWriters() // the service has its copies
	svc.startErr = startErr
	close(svc.started)
	svc.started = make(chan struct{})
	if startErr != nil {
		svc.pid = 0
		s.setState(svc, quantix.ServiceFailed)
		svc.lastErr = startErr.Error()
		svc.mu.Unlock()
		return 0, "", startErr
	}
	done := make(chan struct{})
	svc.cmd, svc.done, svc.pid = cmd, done, cmd.Process.Pid
	s.setState(svc, quantix.ServiceRunning)
	if svc.spec.Ready == quantix.ReadyOnStart {
		s.setState(svc, quantix.ServiceReady)
	}
	svc.mu.Unlock()
	s.log.Info("service started", "service", name, "pid", cmd.Process.Pid)
	if svc.spec.Ready == quantix.ReadyOnStart {
		svc.markReady()
	}

	var wg sync.WaitGroup
	var last string
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.forward(name, stdout, logw, func(line string) {
			if m, ok := quantix.ParseMarker(line); ok && m.Kind == quantix.MarkerReady && m.Get("service") == name {
				svc.mu.Lock()
				if svc.cmd == cmd && svc.state == quantix.ServiceRunning {
					s.setState(svc, quantix.ServiceReady)
				}
				svc.mu.Unlock()
				svc.markReady()
			}
		})
	}()
	go func() {
		defer wg.Done()
		s.forward(name, stderr, logw, func(line string) {
			if t := strings.TrimSpace(line); t != "" {
				last = t
			}
		})
	}()
	werr := cmd.Wait()
	// The group keeps its number while any member lives, so this reaches the
	// service's own leftovers only.
	signalGroup(cmd.Process.Pid, syscall.SIGKILL)
	wg.Wait()
	svc.mu.Lock()
	svc.cmd, svc.done, svc.pid = nil, nil, 0
	svc.mu.Unlock()
	close(done)
	code = cmd.ProcessState.ExitCode()
	if werr != nil && code == 0 {
		code = -1
	}
	return code, last, nil
}

func (s *Supervisor) forward(name string, r io.Reader, logw io.Writer, each func(string)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		each(line)
		s.consoleMu.Lock()
		fmt.Fprintf(logw, "%s\n", line)
		if strings.HasPrefix(line, quantix.MarkerPrefix) {
			fmt.Fprintf(s.cfg.Console, "%s\n", line)
		} else {
			fmt.Fprintf(s.cfg.Console, "%s: %s\n", name, line)
		}
		s.consoleMu.Unlock()
	}
}

func (s *Supervisor) console(line string) {
	s.consoleMu.Lock()
	defer s.consoleMu.Unlock()
	fmt.Fprintln(s.cfg.Console, line)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (s *Supervisor) openLog(name string) io.WriteCloser {
	if s.cfg.LogDir == "" {
		return nopCloser{io.Discard}
	}
	if err := os.MkdirAll(s.cfg.LogDir, 0o755); err != nil {
		s.log.Warn("no service log", "service", name, "err", err)
		return nopCloser{io.Discard}
	}
	f, err := os.OpenFile(filepath.Join(s.cfg.LogDir, name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		s.log.Warn("no service log", "service", name, "err", err)
		return nopCloser{io.Discard}
	}
	return f
}
