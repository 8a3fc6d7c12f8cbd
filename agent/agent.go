// Package agent is the Quantix node agent (qx-node): it gives the host a persistent
// identity, registers it with the vDC and keeps it registered across restarts,
// reboots, node deletions and address changes, heartbeats with the management
// address found fresh each time, and reports the libvirt domains and storage pools
// as full state and as incremental events, and the running OS and upgrade progress
// with every heartbeat (agent/nodeos carries upgrades out). It serves its own status on
// /healthz, /status and /metrics.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/hypervisor"
	"github.com/quantix/quantix/agent/internal/backoff"
	"github.com/quantix/quantix/agent/nodeos"
	"github.com/quantix/quantix/agent/vms"
)

// ErrRefused is wrapped when the vDC refuses the registration in a way only the
// operator can fix (401, 403, 409, 400). Only --register mode returns it; the
// service keeps retrying slowly.
var ErrRefused = errors.New("registration refused")

// Service is a running node agent.
type Service struct {
	cfg      Config
	log      *slog.Logger
	hostname string
	api      *client
	// joinSecret is the secret part of the join token: all the vDC needs, sent only
	// after the TLS handshake checked the pin.
	joinSecret string
	tokenPin   string
	clockWarn  atomic.Int64 // unix nanoseconds of the last clock warning

	idMu sync.Mutex
	id   Identity
	mon  *hypervisor.Monitor
	vmch *vms.Channel
	vms  *vms.Reconciler
	os   *nodeos.Upgrader
	st   *statusBoard
	cpu  cpuSampler

	// Owned by the Run loop.
	nodeID   string
	interval time.Duration
	reported *hypervisor.Snapshot // the inventory the vDC has; nil = send it whole
	sentHV   string               // the hypervisor state the vDC last heard
	lastMgmt Management
}

// New checks cfg, loads or creates the identity, and returns a Service.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	host, err := ResolveHostname(cfg.Hostname, os.Hostname, "")
	if err != nil {
		return nil, err
	}
	id, created, err := LoadOrCreateIdentity(cfg.IdentityPath(), cfg.ProductUUIDPath)
	if errors.Is(err, ErrCorruptIdentity) {
		return nil, fmt.Errorf("%w: %w: restore it from a backup; or, to start over, delete the file and delete this node (%s) in the vDC", quantix.ErrConfig, err, host)
	}
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created node identity", "path", cfg.IdentityPath(), "machine_id", id.MachineID, "machine_id_source", id.MachineIDSource)
	}
	mon, err := hypervisor.New(hypervisor.Config{URI: cfg.LibvirtURI, MaxBackoff: cfg.LibvirtBackoffMax}, log.With("component", "libvirt"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	s := &Service{
		cfg:        cfg,
		log:        log,
		hostname:   host,
		id:         id,
		mon:        mon,
		joinSecret: quantix.SecretOfJoinToken(cfg.JoinToken),
	}
	if pin, _, err := quantix.ParseJoinToken(cfg.JoinToken); err == nil {
		s.tokenPin = pin
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = quantix.PinnedTLSFunc(s.trustedPins, s.clockWarning)
	// HTTP/1.1 only: over HTTP/2 every request (heartbeats, the desired long-poll)
	// shares one connection, and after a change of the management address that
	// connection, bound to the old address, stays in use while the long-poll holds
	// it: heartbeats then hang until their timeout (seen in the e2e DHCP fallback).
	// One connection per request in flight, dropped with the address, is what the
	// address-change handling relies on.
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	urls := strings.Split(cfg.ControlPlane, ",")
	if slices.ContainsFunc(urls, func(u string) bool { return strings.HasPrefix(u, "https://") }) && len(s.trustedPins()) == 0 {
		return nil, fmt.Errorf("%w: no CA pin to check the vDC at %s with: configure a join token of the form %s.<CA pin>.<secret> "+
			"(qx-ctl tokens create shows it), or restore %s with its ca_pins", quantix.ErrConfig, cfg.ControlPlane, quantix.JoinTokenPrefix, cfg.IdentityPath())
	}
	s.api = newClient(urls, &http.Client{Timeout: cfg.RequestTimeout, Transport: tr}, log)
	// The desired long-poll is held longer than any other request: its own
	// client, bounded per request, to the vDC the agent uses.
	s.vmch = vms.NewChannel(s.api.current, &http.Client{Transport: tr}, cfg.RequestTimeout)
	oscfg := cfg.OS
	oscfg.Fetcher = s.vmch
	s.os, err = nodeos.New(oscfg, log.With("component", "upgrade"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	s.vms, err = vms.New(vms.Config{
		Channel:     s.vmch,
		Libvirt:     mon.Conn,
		Accelerator: func() string { return mon.Status().Accelerator },
		ImagesDir:   cfg.ImagesDir,
		ConsoleDir:  cfg.ConsoleDir,
		PollWait:    cfg.DesiredWait,
		Upgrade:     s.os.Want,
	}, log.With("component", "vms"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", quantix.ErrConfig, err)
	}
	s.st = newStatusBoard(Status{
		VDC:       cfg.ControlPlane,
		Hostname:  host,
		MachineID: id.MachineID,
		State:     StateStarting,
	})
	return s, nil
}

// Hostname is the name the agent registers under.
func (s *Service) Hostname() string { return s.hostname }

// Identity is the node's persistent identity.
func (s *Service) Identity() Identity {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	return s.id
}

// trustedPins are the CA pins the vDC's chain must hold: those in the identity
// (learned from the vDC) and the join token's.
func (s *Service) trustedPins() []string {
	s.idMu.Lock()
	pins := slices.Clone(s.id.CAPins)
	s.idMu.Unlock()
	if s.tokenPin != "" && !slices.Contains(pins, s.tokenPin) {
		pins = append(pins, s.tokenPin)
	}
	return pins
}

// learnPins stores the pins the vDC announced, when they changed (a CA rotation).
func (s *Service) learnPins(pins []string) {
	if len(pins) == 0 {
		return
	}
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if slices.Equal(pins, s.id.CAPins) {
		return
	}
	id := s.id
	id.CAPins = slices.Clone(pins)
	if err := SaveIdentity(s.cfg.IdentityPath(), id); err != nil {
		s.log.Error("store the vDC's CA pins in the identity", "err", err, "pins", pins)
		return
	}
	s.log.Info("trusting the vDC's CA pins", "pins", pins, "before", s.id.CAPins)
	s.id = id
}

// clockWarning logs, at most every 10 minutes, that the local clock is before the
// vDC certificate's validity.
func (s *Service) clockWarning(msg string) {
	now, last := time.Now().UnixNano(), s.clockWarn.Load()
	if now-last > int64(10*time.Minute) && s.clockWarn.CompareAndSwap(last, now) {
		s.log.Warn("clock behind the vDC certificate", "detail", msg)
	}
}

// Status returns a copy of the agent's current status.
func (s *Service) Status() Status {
	st := s.st.get(s.mon.Status())
	st.VDC = s.api.current()
	st.OS = s.os.OS()
	return st
}

// Run registers and heartbeats until ctx ends (then it returns nil). In Once mode
// it returns after the first registration and state upload.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() { defer wg.Done(); s.mon.Run(ctx) }()
	if !s.cfg.Once {
		wg.Add(1)
		go func() { defer wg.Done(); s.vms.Run(ctx) }()
		wg.Add(1)
		go func() { defer wg.Done(); s.os.Run(ctx) }()
	}

	if s.cfg.HTTPListen != "" {
		ln, err := net.Listen("tcp", s.cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("%w: http_listen %s: %w", quantix.ErrConfig, s.cfg.HTTPListen, err)
		}
		srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
		wg.Add(1)
		go func() { defer wg.Done(); srv.Serve(ln) }()
		defer func() {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			srv.Shutdown(sctx)
		}()
		s.log.Info("status endpoint listening", "addr", ln.Addr().String())
	}

	// Give libvirt a moment so the first registration already says whether the
	// hypervisor is there; a slow libvirt does not hold registration up.
	select {
	case <-s.mon.Tried():
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return nil
	}

	regBackoff := backoff.Backoff{Min: s.cfg.RegisterBackoffMin, Max: s.cfg.RegisterBackoffMax}
	hbBackoff := backoff.Backoff{Min: s.cfg.RegisterBackoffMin, Max: s.cfg.RegisterBackoffMax}
	heartbeat := time.NewTimer(time.Hour)
	fullSync := time.NewTicker(s.cfg.FullSyncEvery)
	defer heartbeat.Stop()
	defer fullSync.Stop()

	for {
		if s.nodeID == "" {
			err := s.register(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				delay := regBackoff.Next()
				if errors.Is(err, ErrRefused) {
					if s.cfg.Once {
						return err
					}
					delay = s.cfg.RefusedRetry
				}
				s.log.Info("registration retry scheduled", "in", delay.Round(time.Millisecond))
				if !sleep(ctx, delay) {
					return nil
				}
				continue
			}
			regBackoff.Reset()
			s.sync(ctx, true)
			if s.cfg.Once {
				if st := s.st.get(s.mon.Status()); st.StateSync.Error != "" {
					return fmt.Errorf("registered as node %s, but the state upload failed: %s", s.nodeID, st.StateSync.Error)
				}
				return nil
			}
			heartbeat.Reset(s.interval)
			fullSync.Reset(s.cfg.FullSyncEvery)
			continue
		}

		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C:
			s.sync(ctx, false)
			if s.nodeID == "" {
				continue
			}
			if err := s.heartbeat(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if s.nodeID == "" {
					continue // 404/401: register again at once
				}
				heartbeat.Reset(min(hbBackoff.Next(), s.interval))
				continue
			}
			hbBackoff.Reset()
			heartbeat.Reset(s.interval)
		case <-s.mon.Changes():
			s.sync(ctx, false)
			// libvirt going away or coming back is news for the vDC now, not at
			// the next heartbeat.
			if s.nodeID != "" && s.mon.Status().State != s.sentHV {
				if err := s.heartbeat(ctx); err == nil {
					heartbeat.Reset(s.interval)
				}
			}
		case <-fullSync.C:
			s.sync(ctx, true)
		case <-s.vms.Changes():
			// A new applied generation or a VM error: the vDC hears it now.
			s.sync(ctx, false)
			if s.nodeID != "" {
				if err := s.heartbeat(ctx); err == nil {
					heartbeat.Reset(s.interval)
				}
			}
		case <-s.os.Changes():
			// Upgrade progress, also the activation the reboot waits on.
			if s.nodeID != "" {
				if err := s.heartbeat(ctx); err == nil {
					heartbeat.Reset(s.interval)
				}
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// addressPoll is how often a request in flight checks the management address.
const addressPoll = time.Second

// requestContext bounds one request to the vDC: RequestTimeout, and a change of the
// management address while it is in flight. Its connection was made from the old
// address, which may be gone, so the answer could never arrive; the request ends
// within addressPoll and the next one dials from the new address.
func (s *Service) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	from := s.lastMgmt
	if !from.IP.IsValid() {
		return rctx, cancel
	}
	wctx, wcancel := context.WithCancelCause(rctx)
	go func() {
		t := time.NewTicker(addressPoll)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			if m, err := DetectManagement(s.cfg.Netlink, s.cfg.Interface); err == nil && m.IP != from.IP {
				wcancel(fmt.Errorf("management address changed from %s to %s during the request", from.IP, m.IP))
				s.api.http.CloseIdleConnections()
				return
			}
		}
	}()
	return wctx, func() { wcancel(context.Canceled); cancel() }
}

// management finds the management address now and logs when it changed.
func (s *Service) management() (Management, error) {
	m, err := DetectManagement(s.cfg.Netlink, s.cfg.Interface)
	if err != nil {
		s.st.update(func(st *Status) { st.Management.Error = err.Error() })
		return Management{}, fmt.Errorf("management address: %w", err)
	}
	if s.lastMgmt.IP.IsValid() && (m.IP != s.lastMgmt.IP || m.Interface != s.lastMgmt.Interface) {
		s.log.Info("management address changed", "old", s.lastMgmt.IP, "old_interface", s.lastMgmt.Interface, "new", m.IP, "interface", m.Interface, "source", m.Source)
		s.st.update(func(st *Status) { st.Counts.ManagementChanges++ })
		// A kept-alive connection is bound to the old address, which may be gone:
		// requests on it would wait out their timeout. Dial afresh from the new one.
		s.api.http.CloseIdleConnections()
		s.vms.Interrupt()
	} else if !s.lastMgmt.IP.IsValid() {
		s.log.Info("management address", "ip", m.IP, "interface", m.Interface, "source", m.Source)
	}
	s.lastMgmt = m
	s.st.update(func(st *Status) {
		st.Management = ManagementStatus{IP: m.IP.String(), Interface: m.Interface, Source: m.Source}
	})
	return m, nil
}

// register registers once and records the outcome.
func (s *Service) register(ctx context.Context) error {
	s.st.update(func(st *Status) {
		if st.State != StateRefused {
			st.State = StateRegistering
		}
	})
	err := s.tryRegister(ctx)
	if err == nil || ctx.Err() != nil {
		return err
	}
	now := time.Now()
	refused := errors.Is(err, ErrRefused)
	s.st.update(func(st *Status) {
		st.Registration.record(now, "", err)
		st.Counts.RegistrationFailures++
		if refused {
			st.State = StateRefused
			st.Error = err.Error()
		} else {
			st.Error = "cannot register yet: " + err.Error()
		}
	})
	if refused {
		s.log.Error("registration refused; the operator must act", "err", err)
	} else {
		s.log.Warn("registration failed", "err", err)
	}
	return err
}

func (s *Service) tryRegister(ctx context.Context) error {
	m, err := s.management()
	if err != nil {
		return err
	}
	hv := s.mon.Status()
	id := s.Identity()
	req := quantix.RegisterRequest{
		Hostname:     s.hostname,
		MachineID:    id.MachineID,
		NodeSecret:   id.NodeSecret,
		ManagementIP: m.IP.String(),
		AgentVersion: quantix.Version,
		CPU:          cpuInfo(),
		Labels:       s.cfg.Labels,
		Hypervisor:   &hv,
	}
	if total, _, ok := memInfo(); ok {
		req.MemoryBytes = total
	}
	rctx, cancel := s.requestContext(ctx)
	defer cancel()
	resp, err := s.api.register(rctx, s.joinSecret, req)
	if err != nil {
		return s.explainRegisterError(err)
	}
	s.learnPins(resp.AgentCAPins)
	s.nodeID = resp.NodeID
	s.vmch.SetNode(resp.NodeID, s.id.NodeSecret)
	s.sentHV = hv.State
	s.interval = time.Duration(resp.HeartbeatIntervalSeconds) * time.Second
	if s.interval <= 0 {
		s.interval = quantix.DefaultHeartbeatInterval
	}
	s.reported = nil
	now := time.Now()
	s.st.update(func(st *Status) {
		st.NodeID = resp.NodeID
		st.State = StateRegistered
		st.Error = ""
		st.Registration.record(now, resp.Registration, nil)
		st.HeartbeatIntervalSeconds = int(s.interval / time.Second)
		st.Counts.Registrations++
	})
	fmt.Fprintln(s.cfg.Stdout, quantix.ReadyMarker("agent", "node_id", resp.NodeID, "registration", resp.Registration))
	s.log.Info("registered with the vDC", "node_id", resp.NodeID, "registration", resp.Registration,
		"hostname", s.hostname, "management_ip", m.IP, "heartbeat_interval", s.interval)
	return nil
}

// explainRegisterError turns the vDC's refusals into what the operator must do.
func (s *Service) explainRegisterError(err error) error {
	if errors.Is(err, quantix.ErrPinMismatch) {
		return fmt.Errorf("%w: %w: nothing was sent to it. If the vDC's agent CA was rotated while this node was away "+
			"(past the overlap), join again with a new token (qx-ctl tokens create) in --join-token, join_token in %s or %s=",
			ErrRefused, err, quantix.AgentConfig, quantix.ParamToken)
	}
	var ae *APIError
	if !errors.As(err, &ae) {
		return err
	}
	switch ae.Status {
	case http.StatusConflict:
		return fmt.Errorf("%w: hostname %s is registered to another machine (vDC: %s): delete that node in the vDC, or give this host another hostname", ErrRefused, s.hostname, ae.Message)
	case http.StatusUnauthorized, http.StatusForbidden:
		if s.cfg.JoinToken == "" {
			return fmt.Errorf("%w: the vDC does not know hostname %s with this identity and no join token is configured (vDC: %s): set --join-token, join_token in %s or %s= on the kernel command line", ErrRefused, s.hostname, ae.Message, quantix.AgentConfig, quantix.ParamToken)
		}
		return fmt.Errorf("%w: the vDC rejected the join token for hostname %s (vDC: %s): create a new join token in the vDC and configure it", ErrRefused, s.hostname, ae.Message)
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return fmt.Errorf("%w: the vDC rejected the registration as invalid (vDC: %s): fix the named setting", ErrRefused, ae.Message)
	}
	return err
}

// heartbeat sends one heartbeat. On 404 or 401 it forgets the node id, so the loop
// registers again.
func (s *Service) heartbeat(ctx context.Context) error {
	now := time.Now()
	fail := func(err error) error {
		s.st.update(func(st *Status) {
			st.Heartbeat.record(now, "", err)
			st.Counts.HeartbeatFailures++
			if st.State == StateRegistered {
				st.Error = "heartbeat failed, retrying: " + err.Error()
			}
		})
		return err
	}
	m, err := s.management()
	if err != nil {
		s.log.Warn("heartbeat skipped", "err", err)
		return fail(err)
	}
	hv := s.mon.Status()
	req := quantix.HeartbeatRequest{ManagementIP: m.IP.String(), Hypervisor: &hv, AppliedGeneration: s.vms.Applied(), OS: s.os.OS()}
	if s.reported != nil {
		req.StateHash = s.reported.Hash()
	}
	if _, used, ok := memInfo(); ok {
		req.MemoryUsedBytes = &used
	}
	if p, ok := s.cpu.percent(); ok {
		req.CPUPercent = &p
	}
	rctx, cancel := s.requestContext(ctx)
	defer cancel()
	resp, err := s.api.heartbeat(rctx, s.nodeID, s.Identity().NodeSecret, req)
	if err != nil {
		var ae *APIError
		if errors.Is(err, quantix.ErrPinMismatch) {
			s.log.Error("the vDC's certificate matches no trusted CA pin; nothing was sent, registering again", "node_id", s.nodeID, "err", err)
			s.forget()
		} else if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			s.log.Warn("the vDC does not know this node any more (deleted?); registering again", "node_id", s.nodeID, "vdc", ae.Message)
			s.forget()
		} else if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
			s.log.Warn("the vDC rejected the node secret; registering again", "node_id", s.nodeID, "vdc", ae.Message)
			s.forget()
		} else {
			s.log.Warn("heartbeat failed", "node_id", s.nodeID, "err", err)
		}
		return fail(err)
	}
	s.sentHV = hv.State
	s.os.Reported(req.OS)
	s.vms.Notify(resp.DesiredGeneration)
	s.learnPins(resp.AgentCAPins)
	if resp.HeartbeatIntervalSeconds > 0 {
		s.interval = time.Duration(resp.HeartbeatIntervalSeconds) * time.Second
	}
	s.st.update(func(st *Status) {
		st.Heartbeat.record(now, "ok", nil)
		st.HeartbeatIntervalSeconds = int(s.interval / time.Second)
		st.Counts.Heartbeats++
		if st.State == StateRegistered {
			st.Error = ""
		}
	})
	if resp.FullSync {
		// With libvirt unavailable there is no inventory to send, and the vDC asks on
		// every heartbeat until there is: not worth a line each time.
		lvl := slog.LevelInfo
		if hv.State != quantix.HypervisorAvailable {
			lvl = slog.LevelDebug
		}
		s.log.Log(ctx, lvl, "the vDC asked for the full state", "hypervisor", hv.State)
		s.sync(ctx, true)
	}
	return nil
}

func (s *Service) forget() {
	s.nodeID = ""
	s.vmch.SetNode("", "")
	s.reported = nil
	s.st.update(func(st *Status) { st.State = StateRegistering })
}

// sync brings the vDC's inventory up to date: the whole state when full is set or
// the vDC has none, else the differences as events.
func (s *Service) sync(ctx context.Context, full bool) {
	if s.nodeID == "" {
		return
	}
	snap := s.mon.Snapshot(ctx)
	if snap.Available() {
		snap.VMs = s.vms.Annotate(snap.VMs)
	}
	s.st.update(func(st *Status) {
		st.Counts.VMs, st.Counts.StoragePools = len(snap.VMs), len(snap.Pools)
	})
	if !snap.Available() {
		// Nothing is known, so nothing is sent: the heartbeat carries the
		// hypervisor state. When libvirt is back the state goes up whole.
		if s.reported != nil {
			s.log.Warn("hypervisor unavailable; inventory reporting paused", "reason", snap.Hypervisor.Reason)
		}
		s.reported = nil
		return
	}
	rctx, cancel := s.requestContext(ctx)
	defer cancel()
	now := time.Now()
	if !full && s.reported != nil {
		evs := hypervisor.Diff(*s.reported, snap, now)
		if len(evs) == 0 {
			return
		}
		ack, err := s.api.postEvents(rctx, s.nodeID, s.Identity().NodeSecret, quantix.NodeEvents{Events: evs, StateHash: snap.Hash()})
		if err == nil && !ack.FullSync {
			s.reported = &snap
			s.st.update(func(st *Status) { st.Counts.EventsSent += len(evs) })
			s.log.Info("sent inventory events", "node_id", s.nodeID, "events", len(evs))
			return
		}
		if err != nil {
			if s.lostNode(err) {
				return
			}
			s.log.Warn("sending inventory events failed; sending the full state", "node_id", s.nodeID, "err", err)
		} else {
			s.log.Info("the vDC asked for the full state after events", "node_id", s.nodeID)
		}
	}
	st := quantix.NodeState{VMs: snap.VMs, StoragePools: snap.Pools, StateHash: snap.Hash(), Hypervisor: &snap.Hypervisor,
		AppliedGeneration: s.vms.Applied()}
	if st.VMs == nil {
		st.VMs = []quantix.VM{}
	}
	if st.StoragePools == nil {
		st.StoragePools = []quantix.StoragePool{}
	}
	_, err := s.api.putState(rctx, s.nodeID, s.Identity().NodeSecret, st)
	if err != nil {
		s.reported = nil
		s.st.update(func(st *Status) { st.StateSync.record(now, "", err) })
		if !s.lostNode(err) {
			s.log.Warn("sending the full state failed; retrying with the next heartbeat", "node_id", s.nodeID, "err", err)
		}
		return
	}
	s.reported = &snap
	s.st.update(func(st *Status) {
		st.StateSync.record(now, "full", nil)
		st.Counts.StatePuts++
	})
	s.log.Info("sent the full state", "node_id", s.nodeID, "vms", len(snap.VMs), "storage_pools", len(snap.Pools), "state_hash", st.StateHash)
}

// lostNode handles a 404/401 on a node path: the node must register again.
func (s *Service) lostNode(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusUnauthorized) {
		s.log.Warn("the vDC no longer accepts this node; registering again", "node_id", s.nodeID, "vdc", ae.Message)
		s.forget()
		return true
	}
	return false
}
