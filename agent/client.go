package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/quantix/quantix"
)

// APIError is a non-2xx answer of the vDC.
type APIError struct {
	Op      string // "register", "heartbeat", "state", "events"
	Status  int
	Message string // the vDC's {"error": ...}, or the start of the body
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: vDC answered %d %s: %s", e.Op, e.Status, http.StatusText(e.Status), e.Message)
}

// client speaks the vDC API v1 to one of a list of vDCs sharing a database
// (docs/design.md §17): it stays on one, with keep-alive, and moves to the next
// when a request cannot connect or gets a 503 (that vDC or its database is in
// trouble). A request that never reached the vDC (the connection was refused or
// timed out) is tried on the next vDC at once; any other failure is returned, and
// the caller's retry goes to the next one.
type client struct {
	http *http.Client
	log  *slog.Logger

	mu   sync.Mutex
	urls []string
	cur  int
}

func newClient(urls []string, hc *http.Client, log *slog.Logger) *client {
	return &client{http: hc, log: log, urls: urls}
}

// current is the vDC URL requests go to now.
func (c *client) current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.urls[c.cur]
}

// moveFrom makes the next vDC current, if base still is (requests failing at once
// on the same vDC move once).
func (c *client) moveFrom(base string, why error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.urls) < 2 || c.urls[c.cur] != base {
		return
	}
	c.cur = (c.cur + 1) % len(c.urls)
	c.log.Warn("moving to another vDC", "from", base, "to", c.urls[c.cur], "err", why)
}

// learn adopts the list of vDC URLs the vDC announced (vdc.toml agent_urls). The
// current vDC stays current when it is listed. An invalid list is ignored.
func (c *client) learn(urls []string) {
	if len(urls) == 0 {
		return
	}
	list, err := quantix.ParseVDCURLs(strings.Join(urls, ","))
	if err != nil {
		c.log.Warn("the vDC announced an invalid list of vDC URLs; keeping the current one", "urls", urls, "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Equal(list, c.urls) {
		return
	}
	cur := c.urls[c.cur]
	c.urls, c.cur = list, max(slices.Index(list, cur), 0)
	c.log.Info("vDC list updated by the vDC", "urls", list, "current", list[c.cur])
}

func (c *client) do(ctx context.Context, op, method, path, bearer string, in, out any) (int, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return 0, fmt.Errorf("%s: encode: %w", op, err)
	}
	c.mu.Lock()
	n := len(c.urls)
	c.mu.Unlock()
	var status int
	for range n {
		base := c.current()
		status, err = c.send(ctx, op, method, base+path, bearer, body, out)
		if err == nil || ctx.Err() != nil || !(status == http.StatusServiceUnavailable || status == 0) {
			return status, err
		}
		c.moveFrom(base, err)
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "dial" {
			return status, err
		}
	}
	return status, err
}

// send makes one request; status is 0 when no answer came.
func (c *client) send(ctx context.Context, op, method, url, bearer string, body []byte, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "qx-node/"+quantix.Version)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, quantix.MaxRequestBytes))
	if err != nil {
		return 0, fmt.Errorf("%s: read answer: %w", op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e quantix.Error
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if len(msg) > 500 {
			msg = msg[:500] + "..."
		}
		return resp.StatusCode, &APIError{Op: op, Status: resp.StatusCode, Message: msg}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s: decode answer: %w", op, err)
		}
	}
	return resp.StatusCode, nil
}

func (c *client) register(ctx context.Context, joinToken string, req quantix.RegisterRequest) (quantix.RegisterResponse, error) {
	var resp quantix.RegisterResponse
	_, err := c.do(ctx, "register", http.MethodPost, quantix.PathRegister, joinToken, req, &resp)
	if err == nil && resp.NodeID == "" {
		err = fmt.Errorf("register: the vDC answered without a node_id")
	}
	if err == nil {
		c.learn(resp.VDCURLs)
	}
	return resp, err
}

func (c *client) heartbeat(ctx context.Context, nodeID, secret string, req quantix.HeartbeatRequest) (quantix.HeartbeatResponse, error) {
	var resp quantix.HeartbeatResponse
	_, err := c.do(ctx, "heartbeat", http.MethodPost, quantix.PathHeartbeat(nodeID), secret, req, &resp)
	if err == nil {
		c.learn(resp.VDCURLs)
	}
	return resp, err
}

func (c *client) putState(ctx context.Context, nodeID, secret string, st quantix.NodeState) (quantix.StateAck, error) {
	var ack quantix.StateAck
	_, err := c.do(ctx, "state", http.MethodPut, quantix.PathState(nodeID), secret, st, &ack)
	return ack, err
}

func (c *client) postEvents(ctx context.Context, nodeID, secret string, evs quantix.NodeEvents) (quantix.StateAck, error) {
	var ack quantix.StateAck
	_, err := c.do(ctx, "events", http.MethodPost, quantix.PathEvents(nodeID), secret, evs, &ack)
	return ack, err
}
