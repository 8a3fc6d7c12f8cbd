package network

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Socket operations.
const (
	opStatus  = "status"
	opApply   = "apply"
	opConfirm = "confirm"
	// opRollback restores the last good settings now instead of at the deadline
	// (the operator rejected the pending change); Name says who asked.
	opRollback = "rollback"
)

// request is one line of JSON on the socket; the connection carries one request
// and one response.
type request struct {
	Op string `json:"op"`
	// Name is the file name used in messages; Config its bytes (apply).
	Name   string `json:"name,omitempty"`
	Config []byte `json:"config,omitempty"`
	// ConfirmTimeout is a Go duration; "0s" commits at once when the check passes
	// and rolls back at once when it fails.
	ConfirmTimeout string `json:"confirm_timeout,omitempty"`
	ProbeURL       string `json:"probe_url,omitempty"`

	plan    plan
	timeout time.Duration
	reply   chan response
}

type response struct {
	OK     bool         `json:"ok"`
	Error  string       `json:"error,omitempty"`
	Status *Status      `json:"status,omitempty"`
	Apply  *ApplyResult `json:"apply,omitempty"`
}

// listenUnix listens on path, replacing a stale socket but never a live one.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another qx-net serve is answering on it", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return ln, nil
}

func (s *Service) serve(ctx context.Context, ln net.Listener) {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("socket accept", "err", err)
			}
			return
		}
		go s.serveConn(ctx, c)
	}
}

func (s *Service) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req request
	r := bufio.NewReader(c)
	line, err := r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	resp := s.answerRequest(ctx, &req, err)
	b, _ := json.Marshal(resp)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.Write(append(b, '\n'))
}

func (s *Service) answerRequest(ctx context.Context, req *request, readErr error) response {
	if readErr != nil {
		return response{Error: "bad request: " + readErr.Error()}
	}
	switch req.Op {
	case opStatus:
		st := s.Status()
		return response{OK: true, Status: &st}
	case opApply:
		req.timeout = DefaultConfirm
		if req.ConfirmTimeout != "" {
			d, err := time.ParseDuration(req.ConfirmTimeout)
			if err != nil || d < 0 {
				return response{Error: fmt.Sprintf("confirm timeout %q is not a duration like 60s", req.ConfirmTimeout)}
			}
			req.timeout = d
		}
		if req.Name == "" {
			req.Name = "network.toml"
		}
		// Refused before anything is touched: the running network stays as it is.
		p, err := s.validateApply(req.Name, req.Config)
		if err != nil {
			return response{Error: err.Error()}
		}
		req.plan = p
	case opConfirm, opRollback:
	default:
		return response{Error: fmt.Sprintf("unknown op %q (status, apply, confirm, rollback)", req.Op)}
	}
	req.reply = make(chan response, 1)
	select {
	case s.reqs <- *req:
	case <-ctx.Done():
		return response{Error: "service stopping"}
	}
	select {
	case resp := <-req.reply:
		return resp
	case <-ctx.Done():
		return response{Error: "service stopping"}
	}
}

// Client talks to a running qx-net serve over its socket (qx-net, the console, the
// test lab).
type Client struct {
	// Socket is the service's socket path (quantix.NetworkSocket by default).
	Socket string
}

func (c Client) do(ctx context.Context, req request) (response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return response{}, fmt.Errorf("connect to the network service at %s: %w", c.Socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return response{}, fmt.Errorf("send to %s: %w", c.Socket, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return response{}, fmt.Errorf("read from %s: %w", c.Socket, err)
	}
	var resp response
	if err := json.Unmarshal(line, &resp); err != nil {
		return response{}, fmt.Errorf("read from %s: %w", c.Socket, err)
	}
	return resp, nil
}

// Status asks the service for its state.
func (c Client) Status(ctx context.Context) (Status, error) {
	resp, err := c.do(ctx, request{Op: opStatus})
	if err != nil {
		return Status{}, err
	}
	if !resp.OK || resp.Status == nil {
		return Status{}, errors.New(resp.Error)
	}
	return *resp.Status, nil
}

// Apply hands settings (the bytes of a network.toml named name) to the service. It
// returns when they are in place and checked, refused (nothing changed), or rolled
// back. With confirmTimeout > 0 they roll back unless Confirm is called in time; 0
// commits at once if the gateway check passes. probeURL, when set, is checked too.
func (c Client) Apply(ctx context.Context, name string, data []byte, confirmTimeout time.Duration, probeURL string) (ApplyResult, error) {
	resp, err := c.do(ctx, request{Op: opApply, Name: name, Config: data, ConfirmTimeout: confirmTimeout.String(), ProbeURL: probeURL})
	if err != nil {
		return ApplyResult{}, err
	}
	var res ApplyResult
	if resp.Apply != nil {
		res = *resp.Apply
	}
	if !resp.OK {
		return res, errors.New(resp.Error)
	}
	return res, nil
}

// Rollback rejects the pending (applied, unconfirmed) settings: the service
// restores the last good ones at once and verifies them as the automatic rollback
// does (kernel read-back, then the gateway and probe check); it returns once that
// verification is done, with the status. by says who rejected them (for the
// rollback's reason, e.g. "the console"). With nothing pending it is an error and
// nothing changes.
func (c Client) Rollback(ctx context.Context, by string) (Status, error) {
	resp, err := c.do(ctx, request{Op: opRollback, Name: by})
	if err != nil {
		return Status{}, err
	}
	var st Status
	if resp.Status != nil {
		st = *resp.Status
	}
	if !resp.OK {
		return st, errors.New(resp.Error)
	}
	return st, nil
}

// Confirm makes the pending settings permanent: persisted atomically.
func (c Client) Confirm(ctx context.Context) (Status, error) {
	resp, err := c.do(ctx, request{Op: opConfirm})
	if err != nil {
		return Status{}, err
	}
	if !resp.OK {
		return Status{}, errors.New(resp.Error)
	}
	return *resp.Status, nil
}
