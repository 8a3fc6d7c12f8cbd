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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/spec"
)

// Restart policy (COMMON.md service process contract).
const (
	MinBackoff   = 1 * time.Second
	MaxBackoff   = 30 * time.Second
	StableRun    = time.Minute      // a run this long resets the backoff
	ConfigRetry  = 60 * time.Second // exit 78 (EX_CONFIG): retry slowly
	ExitConfig   = 78
	DefaultGrace = 10 * time.Second // SIGTERM to SIGKILL
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
	Services []spec.Service
	// Console receives every line the services print (prefixed with the service
	// name) and the supervisor's fatal markers.
	Console io.Writer
	// LogDir holds <name>.log per service; empty disables log files.
	LogDir string
	// Clock defaults to the real clock.
	Clock Clock
	// Grace is how long a service has to exit after SIGTERM (default DefaultGrace).
	Grace time.Duration
	// Env is the services' environment (default os.Environ()).
	Env []string
}

// Supervisor runs services as child processes: in dependency order, each started
// once the services it depends on are ready, restarted with backoff, stopped in
// reverse order.
type Supervisor struct {
	cfg      SupervisorConfig
	log      *slog.Logger
	order    []string
	svcs     map[string]*service
	allReady chan struct{}

	consoleMu sync.Mutex
}

type service struct {
	spec   spec.Service
	ready  chan struct{}
	once   sync.Once
	mu     sync.Mutex
	cmd    *exec.Cmd // running process, nil between runs
	done   chan struct{}
	stopMu sync.Mutex
	stop   bool
	exited chan struct{} // closed when the service's loop has returned
}

// NewSupervisor checks the service list (names, dependencies, no cycles).
func NewSupervisor(cfg SupervisorConfig, log *slog.Logger) (*Supervisor, error) {
	if err := validateServicesOnly(cfg.Services); err != nil {
		return nil, err
	}
	order, err := spec.ServiceOrder(cfg.Services)
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	s := &Supervisor{cfg: cfg, log: log, order: order, svcs: map[string]*service{}, allReady: make(chan struct{})}
	for _, sp := range cfg.Services {
		s.svcs[sp.Name] = &service{spec: sp, ready: make(chan struct{}), exited: make(chan struct{})}
	}
	return s, nil
}

func validateServicesOnly(svcs []spec.Service) error {
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

// AllReady is closed once every service has been ready once.
func (s *Supervisor) AllReady() <-chan struct{} { return s.allReady }

// Ready is closed once service name has been ready once.
func (s *Supervisor) Ready(name string) <-chan struct{} { return s.svcs[name].ready }

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
			select {
			case <-s.svcs[name].ready:
			case <-runCtx.Done():
				return
			}
		}
		close(s.allReady)
	}()
	<-ctx.Done()
	for i := len(s.order) - 1; i >= 0; i-- {
		s.stopService(s.svcs[s.order[i]])
	}
	cancel()
	for _, name := range s.order {
		<-s.svcs[name].exited
	}
	return nil
}

// stopService stops one service and waits for its process to end.
func (s *Supervisor) stopService(svc *service) {
	svc.stopMu.Lock()
	svc.stop = true
	svc.stopMu.Unlock()
	svc.mu.Lock()
	cmd, done := svc.cmd, svc.done
	svc.mu.Unlock()
	if cmd == nil {
		return
	}
	s.log.Info("stopping service", "service", svc.spec.Name, "pid", cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(s.cfg.Grace):
		s.log.Warn("service ignored SIGTERM, killing it", "service", svc.spec.Name, "grace", s.cfg.Grace)
		_ = cmd.Process.Kill()
		<-done
	}
}

func (svc *service) stopping() bool {
	svc.stopMu.Lock()
	defer svc.stopMu.Unlock()
	return svc.stop
}

func (svc *service) markReady() { svc.once.Do(func() { close(svc.ready) }) }

// loop runs one service until the supervisor stops.
func (s *Supervisor) loop(ctx context.Context, svc *service) {
	defer close(svc.exited)
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
		ran := s.cfg.Clock.Now().Sub(start)
		var delay time.Duration
		switch {
		case err != nil: // could not start at all: the image is wrong, like exit 78
			s.console(quantix.FatalMarker(svc.spec.Name, err))
			delay = ConfigRetry
		case code == 0:
			s.log.Info("service finished", "service", svc.spec.Name)
			svc.markReady() // done: dependants may go on
			return
		case code == ExitConfig:
			msg := lastErr
			if msg == "" {
				msg = "exit status 78 (configuration error)"
			}
			s.console(quantix.FatalMarker(svc.spec.Name, errors.New(msg)))
			delay = ConfigRetry
		default:
			backoff = NextBackoff(backoff, ran)
			delay = backoff
			s.log.Warn("service exited, restarting", "service", svc.spec.Name, "code", code, "ran", ran.Round(time.Millisecond), "delay", delay, "last_err", lastErr)
		}
		select {
		case <-s.cfg.Clock.After(delay):
		case <-ctx.Done():
			return
		}
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
func (s *Supervisor) runOnce(svc *service) (code int, lastErr string, err error) {
	name := svc.spec.Name
	cmd := exec.Command(svc.spec.Command, svc.spec.Args...)
	cmd.Env = s.cfg.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, "", err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return 0, "", err
	}
	logw := s.openLog(name)
	defer logw.Close()

	svc.mu.Lock()
	if svc.stopping() {
		svc.mu.Unlock()
		return 0, "", nil
	}
	if err := cmd.Start(); err != nil {
		svc.mu.Unlock()
		return 0, "", fmt.Errorf("start %s: %w", svc.spec.Command, err)
	}
	done := make(chan struct{})
	svc.cmd, svc.done = cmd, done
	svc.mu.Unlock()
	s.log.Info("service started", "service", name, "pid", cmd.Process.Pid)
	if svc.spec.Ready == spec.ReadyStart {
		svc.markReady()
	}

	var wg sync.WaitGroup
	var last string
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.forward(name, stdout, logw, func(line string) {
			if m, ok := quantix.ParseMarker(line); ok && m.Kind == quantix.MarkerReady && m.Get("service") == name {
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
	wg.Wait()
	werr := cmd.Wait()
	svc.mu.Lock()
	svc.cmd, svc.done = nil, nil
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
