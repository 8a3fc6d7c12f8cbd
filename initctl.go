package quantix

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// This file is init's control-socket protocol: qx-init serves it (package initd);
// the qx-init CLI, the console and the installer ask it through InitClient. One
// request line, one answer line:
//
//	poweroff | reboot  -> "ok" | "error: ..."
//	services           -> {"services":[ServiceStatus...]} | "error: ..."
//	restart <name>     -> "ok" (stopped and started again) | "error: <reason>"
//	slots              -> SlotsStatus as JSON | "error: ..." (not an A/B install)
//	stage <bundle dir> -> Staged as JSON (verified and written, the next boot's
//	                      trial) | "error: <reason>" (nothing written)
//
// A request the server does not know is answered "error: unknown request ...".

// InitSocket is where qx-init takes requests (mode 0600: root only).
const InitSocket = RunDir + "/init.sock"

// HaltAction is how the machine ends once init has stopped the services.
type HaltAction string

// Halt actions, also the request words on InitSocket.
const (
	Poweroff HaltAction = "poweroff"
	Reboot   HaltAction = "reboot"
)

// Requests on InitSocket besides the halt actions.
const (
	InitRequestServices = "services"
	InitRequestRestart  = "restart"
	InitRequestSlots    = "slots"
	InitRequestStage    = "stage"
)

// StageTimeout bounds a stage request: verifying and writing a bundle of ~70 MB
// takes well under a second on a disk and some seconds under emulation.
const StageTimeout = 2 * time.Minute

// SiteTrustedKeys is the operator's own release keys on QUANTIX-CFG (one
// PublicKey a line, as TrustedKeysPath): bundles signed by them are accepted as
// well as those the image was built to trust. The installer writes it from the
// answer file's [upgrade] trusted_keys.
const SiteTrustedKeys = ConfigDir + "/upgrade/trusted-keys"

// SlotInfo is one A/B slot as init sees it on the ESP.
type SlotInfo struct {
	Slot  string `json:"slot"`
	Tries int    `json:"tries"`
	Good  bool   `json:"good"`
	// Image and Version are from the slot's manifest; empty for an empty slot.
	Image   string `json:"image,omitempty"`
	Version string `json:"version,omitempty"`
}

// SlotsStatus is the answer to the slots request.
type SlotsStatus struct {
	Booted string `json:"booted"` // the slot this boot runs (quantix.slot=)
	Trial  bool   `json:"trial"`  // this boot is a trial not yet judged
	// State is the booted slot's SlotMarker state: SlotTrial, SlotGood,
	// SlotFailed or SlotRolledBack (good after the other slot's trial failed).
	State string `json:"state"`
	// Order is the boot order from the environment block; Slots is a then b.
	Order []string   `json:"order"`
	Slots []SlotInfo `json:"slots"`
	// Next is the slot the next boot tries (Order's first with tries or good).
	Next string `json:"next"`
	// RolledBackFrom and Reason say which trial failed before this boot and why
	// (the failed gate and its error, or "no verdict" for a panic or hang).
	RolledBackFrom string `json:"rolled_back_from,omitempty"`
	Reason         string `json:"reason,omitempty"`
}

// Write prints the slots for an operator (qx-node upgrade status, qx-ctl
// controller show).
func (st SlotsStatus) Write(w io.Writer) {
	for _, l := range st.Lines() {
		fmt.Fprintln(w, l)
	}
}

// Staged is the answer to a stage request.
type Staged struct {
	Slot     string  `json:"slot"` // the slot written; it boots next, as a trial
	Image    string  `json:"image"`
	Version  string  `json:"version"`
	SignedBy string  `json:"signed_by"`
	Seconds  float64 `json:"seconds"` // verify + write
}

// InitAnswerOK is the answer to a request that was carried out.
const InitAnswerOK = "ok"

// StopGrace is how long init gives a service between SIGTERM and SIGKILL; a
// restart request can take that long before the service starts again.
const StopGrace = 10 * time.Second

// initTimeout bounds a request without a deadline of its own; a restart gets
// StopGrace on top.
const initTimeout = 5 * time.Second

// Service states, as ServiceStatus reports them (and the console shows them).
const (
	ServiceWaiting    = "waiting"    // not started: a dependency is not ready yet
	ServiceRunning    = "running"    // the process runs; its ready marker has not come yet
	ServiceReady      = "ready"      // the process runs and said it is ready
	ServiceRestarting = "restarting" // exited with an error (or a restart was asked): starts again soon
	ServiceFailed     = "failed"     // configuration error (ExitConfig) or could not start: retried slowly
	ServiceDone       = "done"       // exited 0: finished, not restarted
	ServiceStopping   = "stopping"   // being stopped for poweroff/reboot
	ServiceStopped    = "stopped"    // stopped for poweroff/reboot
)

// ServiceStatus is one supervised service as the services request reports it.
type ServiceStatus struct {
	Name  string `json:"name"`
	State string `json:"state"` // Service* states
	PID   int    `json:"pid,omitempty"`
	// Since is when the service entered its state.
	Since     time.Time `json:"since,omitzero"`
	Restarts  int       `json:"restarts,omitempty"`
	LastError string    `json:"last_error,omitempty"`
}

// ServiceList is the answer to the services request.
type ServiceList struct {
	Services []ServiceStatus `json:"services"`
}

// ErrInitUnsupported says that the running qx-init does not answer a request.
var ErrInitUnsupported = errors.New("qx-init does not support this request")

// ErrNotAB is init's answer to the slots and stage requests on a machine that did
// not boot from an installed A/B disk (a live boot from the ISO); InitClient
// returns an error wrapping it, so callers can say so instead of failing.
var ErrNotAB = errors.New("not booted from an installed A/B disk (a live boot): there are no slots to upgrade; install the image first")

// InitClient asks a running qx-init over its control socket.
type InitClient struct {
	// Socket is the control socket; "" means InitSocket.
	Socket string
}

// Ask sends one request line and returns the answer line. An "error: ..." answer
// is returned as an error (wrapping ErrInitUnsupported for an unknown request).
// Without a deadline on ctx the request gets a few seconds.
func (c InitClient) Ask(ctx context.Context, req string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, initTimeout)
		defer cancel()
	}
	sock := c.Socket
	if sock == "" {
		sock = InitSocket
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return "", fmt.Errorf("connect to qx-init at %s: %w", sock, err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	if _, err := fmt.Fprintln(conn, req); err != nil {
		return "", fmt.Errorf("send %s to qx-init: %w", req, err)
	}
	resp, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && resp == "" {
		return "", fmt.Errorf("no answer from qx-init to %s: %w", req, err)
	}
	resp = strings.TrimSpace(resp)
	if strings.HasPrefix(resp, "error: unknown request") {
		return "", fmt.Errorf("%s: %w (%s)", req, ErrInitUnsupported, resp)
	}
	if e, ok := strings.CutPrefix(resp, "error: "); ok {
		if e == ErrNotAB.Error() {
			return "", fmt.Errorf("%s: %w", req, ErrNotAB)
		}
		return "", fmt.Errorf("%s: %s", req, e)
	}
	return resp, nil
}

// Power asks qx-init to stop every service cleanly and then power off or reboot.
func (c InitClient) Power(ctx context.Context, a HaltAction) error {
	if a != Poweroff && a != Reboot {
		return fmt.Errorf("power: unknown action %q", a)
	}
	return c.askOK(ctx, string(a))
}

// Restart asks qx-init to stop service name cleanly and start it again. Without a
// deadline on ctx it waits StopGrace and a little more.
func (c InitClient) Restart(ctx context.Context, name string) error {
	if name == "" || strings.ContainsAny(name, " \t\n") {
		return fmt.Errorf("restart: bad service name %q", name)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StopGrace+2*initTimeout)
		defer cancel()
	}
	return c.askOK(ctx, InitRequestRestart+" "+name)
}

// Services asks qx-init for the supervised services and their states, in start order.
func (c InitClient) Services(ctx context.Context) ([]ServiceStatus, error) {
	resp, err := c.Ask(ctx, InitRequestServices)
	if err != nil {
		return nil, err
	}
	var l ServiceList
	if err := json.Unmarshal([]byte(resp), &l); err != nil {
		return nil, fmt.Errorf("%s: bad answer from qx-init: %w", InitRequestServices, err)
	}
	return l.Services, nil
}

func (c InitClient) askOK(ctx context.Context, req string) error {
	resp, err := c.Ask(ctx, req)
	if err != nil {
		return err
	}
	if resp != InitAnswerOK {
		return fmt.Errorf("%s: qx-init answered %q", req, resp)
	}
	return nil
}

// Slots asks qx-init for the A/B slots of the installed disk it booted from.
func (c InitClient) Slots(ctx context.Context) (SlotsStatus, error) {
	var st SlotsStatus
	resp, err := c.Ask(ctx, InitRequestSlots)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(resp), &st); err != nil {
		return st, fmt.Errorf("%s: bad answer from qx-init: %w", InitRequestSlots, err)
	}
	return st, nil
}

// Stage asks qx-init to verify the release bundle in dir (a folder it can read)
// against the keys it trusts and write it into the slot that is not booted, as the
// next boot's trial. Nothing is written when the bundle is refused. The new
// release runs only after a reboot (Power(Reboot)).
func (c InitClient) Stage(ctx context.Context, dir string) (Staged, error) {
	var st Staged
	if dir == "" || strings.ContainsAny(dir, "\n\r") {
		return st, fmt.Errorf("stage: bad bundle folder %q", dir)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StageTimeout)
		defer cancel()
	}
	resp, err := c.Ask(ctx, InitRequestStage+" "+dir)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(resp), &st); err != nil {
		return st, fmt.Errorf("%s: bad answer from qx-init: %w", InitRequestStage, err)
	}
	return st, nil
}
