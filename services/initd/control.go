package initd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/quantix/quantix"
)

// controlTimeout bounds a request's read and a quick answer; a restart may take
// the supervisor's grace period and a start on top of it.
const controlTimeout = 5 * time.Second

// Control serves init's control-socket protocol (quantix.InitSocket; the client is
// quantix.InitClient): power requests go to actions (init's
// main loop), service requests to the supervisor.
type Control struct {
	sup     *Supervisor
	actions chan<- quantix.HaltAction
	log     *slog.Logger

	// Slots answers the slots and stage requests; nil on a live boot.
	Slots SlotService

	mu       sync.Mutex
	shutdown quantix.HaltAction // set once a poweroff or reboot is under way
}

// SlotService is what the slots and stage requests need (SlotKeeper).
type SlotService interface {
	Slots() (quantix.SlotsStatus, error)
	Stage(dir string) (quantix.Staged, error)
}

// NewControl returns the control socket's handler for sup; accepted poweroff and
// reboot requests are sent to actions (buffered; a second one is dropped).
func NewControl(sup *Supervisor, actions chan<- quantix.HaltAction, log *slog.Logger) *Control {
	return &Control{sup: sup, actions: actions, log: log}
}

// ShuttingDown records that action is under way: restarts are refused from now on.
func (c *Control) ShuttingDown(a quantix.HaltAction) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shutdown == "" {
		c.shutdown = a
	}
}

func (c *Control) shuttingDown() quantix.HaltAction {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shutdown
}

// Listen serves the control socket at path (mode 0600: root only) until the
// returned listener is closed.
func (c *Control) Listen(path string) (net.Listener, error) {
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go c.serveConn(conn)
		}
	}()
	return ln, nil
}

func (c *Control) serveConn(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(controlTimeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	req := strings.TrimSpace(line)
	if strings.HasPrefix(req, quantix.InitRequestRestart+" ") {
		// Stopping may take the grace period, starting a moment more.
		_ = conn.SetDeadline(time.Now().Add(c.sup.Grace() + controlTimeout))
	}
	if strings.HasPrefix(req, quantix.InitRequestStage+" ") {
		_ = conn.SetDeadline(time.Now().Add(quantix.StageTimeout))
	}
	fmt.Fprintln(conn, c.Answer(context.Background(), req))
}

// Answer handles one request line and returns the answer line.
func (c *Control) Answer(ctx context.Context, req string) string {
	verb, arg, _ := strings.Cut(req, " ")
	switch verb {
	case string(quantix.Poweroff), string(quantix.Reboot):
		if arg != "" {
			break
		}
		c.ShuttingDown(quantix.HaltAction(verb))
		select {
		case c.actions <- quantix.HaltAction(verb):
		default: // one is already on its way
		}
		return quantix.InitAnswerOK
	case quantix.InitRequestServices:
		if arg != "" {
			break
		}
		b, err := json.Marshal(quantix.ServiceList{Services: c.sup.Services()})
		if err != nil {
			return "error: " + err.Error()
		}
		return string(b)
	case quantix.InitRequestRestart:
		name := strings.TrimSpace(arg)
		if name == "" || strings.ContainsAny(name, " \t") {
			return fmt.Sprintf("error: restart needs one service name (services: %s)", strings.Join(c.sup.Order(), ", "))
		}
		if a := c.shuttingDown(); a != "" {
			return fmt.Sprintf("error: %v (%s)", ErrShuttingDown, a)
		}
		ctx, cancel := context.WithTimeout(ctx, c.sup.Grace()+controlTimeout)
		defer cancel()
		if err := c.sup.Restart(ctx, name); err != nil {
			if !errors.Is(err, ErrUnknownService) {
				c.log.Warn("restart failed", "service", name, "err", err)
			}
			// The client names the request; the answer says what went wrong.
			return "error: " + strings.TrimPrefix(err.Error(), "restart "+name+": ")
		}
		c.log.Info("service restarted on request", "service", name)
		return quantix.InitAnswerOK
	case quantix.InitRequestSlots:
		if arg != "" {
			break
		}
		if c.Slots == nil {
			return "error: " + ErrNotAB.Error()
		}
		return answerJSON(c.Slots.Slots())
	case quantix.InitRequestStage:
		dir := strings.TrimSpace(arg)
		if dir == "" {
			return "error: stage needs the bundle's folder"
		}
		if c.Slots == nil {
			return "error: " + ErrNotAB.Error()
		}
		if a := c.shuttingDown(); a != "" {
			return fmt.Sprintf("error: %v (%s)", ErrShuttingDown, a)
		}
		st, err := c.Slots.Stage(dir)
		if err != nil {
			c.log.Warn("stage refused", "bundle", dir, "err", err)
		} else {
			c.log.Info("staged", "bundle", dir, "slot", st.Slot, "version", st.Version, "seconds", st.Seconds)
		}
		return answerJSON(st, err)
	}
	return fmt.Sprintf("error: unknown request %q (poweroff, reboot, services, restart <name>, slots, stage <folder>)", req)
}

// answerJSON is v as one JSON line, or err's answer.
func answerJSON[T any](v T, err error) string {
	if err != nil {
		return "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "error: " + err.Error()
	}
	return string(b)
}
