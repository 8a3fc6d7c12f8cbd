package network

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/quantix/quantix"
)

// ApplyResult is the outcome of a runtime apply.
type ApplyResult struct {
	// Applied is true when the new settings reached the kernel and are running.
	Applied bool `json:"applied"`
	// GatewayReachable reports the ARP check of the gateway (and the probe URL);
	// CheckError says why not.
	GatewayReachable bool   `json:"gateway_reachable"`
	CheckError       string `json:"check_error,omitempty"`
	// Deadline is when the settings roll back unless confirmed (zero if committed).
	Deadline time.Time `json:"deadline,omitzero"`
	// Committed is true when the settings were persisted (confirm timeout 0 and the
	// check passed, or confirmed).
	Committed bool `json:"committed"`
	// RolledBack is true when the last good settings were restored instead.
	RolledBack bool `json:"rolled_back"`
	// SavedTo is the persistent file written when committed.
	SavedTo string `json:"saved_to,omitempty"`
	Status  Status `json:"status"`
}

type checkJob struct {
	rollback bool
	probeURL string
	// reply, for a rollback asked on the socket, answers once it is verified.
	reply chan response
}

type checkResult struct {
	job *checkJob
	err error
}

type pending struct {
	plan     plan
	prev     plan
	origin   Origin
	timeout  time.Duration
	deadline time.Time
	job      *checkJob
	reply    chan response // nil once answered
	checked  bool
	checkErr error
}

// validateApply checks settings sent for apply, including that the interface
// exists, without changing anything.
func (s *Service) validateApply(name string, data []byte) (plan, error) {
	st, err := Parse(name, data)
	if err != nil {
		return plan{}, err
	}
	p, err := st.compile(s.cfg.Bridge)
	if err != nil {
		return plan{}, err
	}
	nic, err := s.env.findLink(p.iface, s.ourBridges(p), s.cfg.SysfsRoot)
	if err != nil {
		return plan{}, st.fieldErr("interface", "%v", err)
	}
	if p.bridge == "" {
		return p, nil
	}
	if nic.Attrs().Name == p.bridge {
		return plan{}, st.fieldErr("bridge", "%q is the interface itself: the bridge needs a name of its own (e.g. br0), or set bridge = \"\"", p.bridge)
	}
	if nic.Type() == "bridge" {
		return plan{}, st.fieldErr("interface", "%s is itself a bridge: name the NIC that goes under bridge %s", nic.Attrs().Name, p.bridge)
	}
	if br, err := s.env.linkByName(p.bridge); err == nil && br.Type() != "bridge" {
		return plan{}, st.fieldErr("bridge", "%s exists and is a %s, not a bridge: choose another name", p.bridge, br.Type())
	}
	return p, nil
}

func (s *Service) handle(ctx context.Context, req request) {
	switch req.Op {
	case opApply:
		s.apply(ctx, req)
	case opConfirm:
		if s.pending == nil {
			req.reply <- response{Error: "nothing to confirm: no applied configuration is pending"}
			return
		}
		if err := s.commit(); err != nil {
			req.reply <- response{Error: err.Error()}
			return
		}
		st := s.Status()
		req.reply <- response{OK: true, Status: &st}
	case opRollback:
		if s.pending == nil {
			req.reply <- response{Error: "nothing to roll back: no applied configuration is pending"}
			return
		}
		by := req.Name
		if by == "" {
			by = "request"
		}
		s.rollback(ctx, "rejected by "+by, req.reply)
	}
}

func (s *Service) apply(ctx context.Context, req request) {
	if job := s.awaiting; job != nil && job.reply != nil {
		// A rollback asked on the socket still waits for its address: the new
		// settings replace it before it could be verified.
		job.reply <- response{Error: "rolled back, but new settings were applied before the rollback was verified"}
		job.reply = nil
	}
	if p := s.pending; p != nil {
		req.reply <- response{Error: fmt.Sprintf("%s is applied and waits for confirmation until %s: run qx-net confirm, or wait for the rollback",
			p.plan.source, p.deadline.Format(time.RFC3339))}
		return
	}
	pd := &pending{
		plan: req.plan, prev: s.good, origin: s.origin, timeout: req.timeout,
		job: &checkJob{probeURL: req.ProbeURL}, reply: req.reply,
	}
	if pd.job.probeURL == "" {
		pd.job.probeURL = s.cfg.ProbeURL
	}
	if pd.timeout > 0 {
		pd.deadline = time.Now().Add(pd.timeout)
		s.confirmC = time.After(pd.timeout)
	}
	s.pending = pd
	s.origin = OriginApply
	s.awaiting = pd.job
	s.log.Info("applying", "config", req.plan.describe(), "confirm_timeout", pd.timeout)
	s.updatePending()
	if err := s.activate(ctx, req.plan); err != nil {
		s.rollback(ctx, fmt.Sprintf("applying %s failed: %v", req.plan.source, err), nil)
	}
}

func (s *Service) updatePending() {
	p := s.pending
	s.update(func(st *Status) {
		if p == nil {
			st.Pending = nil
			return
		}
		st.Pending = &PendingStatus{Config: p.plan.source, Deadline: p.deadline, Checked: p.checked, GatewayReachable: p.checked && p.checkErr == nil}
		if p.checkErr != nil {
			st.Pending.CheckError = p.checkErr.Error()
		}
	})
}

func (s *Service) onCheck(ctx context.Context, r checkResult) {
	if r.job.rollback {
		s.update(func(st *Status) {
			if st.LastRollback == nil {
				return
			}
			st.LastRollback.Done, st.LastRollback.Verified = true, r.err == nil
			if r.err != nil {
				st.LastRollback.Error = r.err.Error()
			}
		})
		if r.err != nil {
			s.setError(fmt.Errorf("rollback verification failed: %w", r.err))
		} else {
			s.log.Info("rollback verified", "config", s.cur.describe())
		}
		if r.job.reply != nil {
			st := s.Status()
			resp := response{OK: true, Status: &st}
			if r.err != nil {
				resp = response{Error: "rolled back, but the restored configuration failed verification: " + r.err.Error(), Status: &st}
			}
			r.job.reply <- resp
			r.job.reply = nil
		}
		return
	}
	p := s.pending
	if p == nil || p.job != r.job {
		return
	}
	p.checked, p.checkErr = true, r.err
	s.updatePending()
	if r.err != nil {
		s.log.Warn("apply check failed", "config", p.plan.source, "err", r.err)
	}
	switch {
	case p.timeout == 0 && r.err == nil:
		if err := s.commit(); err != nil {
			s.rollback(ctx, err.Error(), nil)
		}
	case p.timeout == 0:
		s.rollback(ctx, r.err.Error(), nil)
	default:
		s.answer(p, nil)
	}
}

// answer replies to the qx-net apply waiting for p, once.
func (s *Service) answer(p *pending, rollbackErr error) {
	if p.reply == nil {
		return
	}
	res := &ApplyResult{Applied: true, GatewayReachable: p.checked && p.checkErr == nil, Deadline: p.deadline}
	if p.checkErr != nil {
		res.CheckError = p.checkErr.Error()
	} else if !p.checked {
		res.CheckError = "not checked yet"
	}
	resp := response{OK: true, Apply: res}
	switch {
	case rollbackErr != nil:
		res.Applied, res.RolledBack, res.Deadline = false, true, time.Time{}
		resp.OK, resp.Error = false, "rolled back to the last good configuration: "+rollbackErr.Error()
	case s.pending != p:
		res.Committed, res.Deadline, res.SavedTo = true, time.Time{}, s.cfg.PersistentPath
	}
	res.Status = s.Status()
	p.reply <- resp
	p.reply = nil
}

// commit persists the pending settings atomically: they become the last good ones.
func (s *Service) commit() error {
	p := s.pending
	if p.plan.raw != nil {
		if err := persist(s.cfg.PersistentPath, p.plan.raw); err != nil {
			return err
		}
		if err := quantix.WriteFileAtomic(s.cfg.SessionPath, p.plan.raw, 0o644); err != nil {
			return fmt.Errorf("session copy: %w", err)
		}
	}
	s.pending, s.confirmC = nil, nil
	s.good = p.plan
	if b := s.leftBridge; b != "" && b != s.bridge {
		s.leftBridge = ""
		s.dropBridge(b)
	}
	s.log.Info("configuration committed", "config", p.plan.source, "persistent", s.cfg.PersistentPath)
	s.updatePending()
	s.answer(p, nil)
	return nil
}

// persist saves a confirmed network.toml: a crash at any moment leaves the old
// file or the new one (docs/design.md §2).
func persist(path string, data []byte) error {
	if err := quantix.WriteFileAtomic(path, data, 0o644); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	return nil
}

// removeStaleTemp removes temp files a crash in the middle of a save left next to
// path (the file itself is whole either way).
func removeStaleTemp(path string) {
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	for _, f := range old {
		os.Remove(f)
	}
}

// rollback restores the last good settings and verifies them (kernel read-back now,
// reachability once the address is in place). reply, when set, gets the outcome
// of the verification (a rollback asked on the socket).
func (s *Service) rollback(ctx context.Context, reason string, reply chan response) {
	p := s.pending
	s.pending, s.confirmC = nil, nil
	s.origin = p.origin
	s.log.Warn("rolling back", "from", p.plan.source, "to", p.prev.describe(), "reason", reason)
	s.update(func(st *Status) {
		st.Pending = nil
		st.LastRollback = &RollbackStatus{At: time.Now(), Reason: reason, To: p.prev.describe()}
	})
	job := &checkJob{rollback: true, probeURL: s.cfg.ProbeURL, reply: reply}
	s.awaiting = job
	if err := s.activate(ctx, p.prev); err != nil {
		s.awaiting = nil
		s.onCheck(ctx, checkResult{job: job, err: err})
	}
	s.setError(fmt.Errorf("rolled back %s: %s", p.plan.source, reason))
	s.answer(p, errors.New(reason))
}

// startCheck checks reachability of t's gateway (ARP) and of the probe URL in the
// background; the result comes back on s.checks.
func (s *Service) startCheck(job *checkJob, t target) {
	env, ifi, timeout, ctx := s.env, ifaceOf(s.link), s.cfg.CheckTimeout, s.runCtx
	go func() {
		err := check(ctx, env, ifi, t, job.probeURL, timeout)
		select {
		case s.checks <- checkResult{job: job, err: err}:
		case <-ctx.Done():
		}
	}()
}

func check(ctx context.Context, env *netEnv, ifi *net.Interface, t target, probeURL string, timeout time.Duration) error {
	if t.gw != nil {
		conn, err := env.openARP(ifi)
		if err != nil {
			return err
		}
		_, err = conn.resolve(ctx, t.addr.IP, t.gw, timeout)
		conn.Close()
		if err != nil {
			return fmt.Errorf("gateway %s unreachable: %w", t.gw, err)
		}
	}
	if probeURL == "" {
		return nil
	}
	dialer := &net.Dialer{Timeout: timeout}
	// The probe only asks whether the vDC answers from the new address: it sends
	// nothing secret, and trust is the agent's business (it checks the vDC's CA pin
	// on its own connections), so an https:// vDC's certificate, issued for the
	// vDC's role name and not for this address, is not verified here.
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := env.do(func() error {
				var err error
				c, err = dialer.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, probeURL, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", probeURL, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", probeURL, err)
	}
	resp.Body.Close()
	return nil
}
