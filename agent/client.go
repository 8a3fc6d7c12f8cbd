package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

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

// client speaks the vDC API v1.
type client struct {
	base string
	http *http.Client
}

func (c *client) do(ctx context.Context, op, method, path, bearer string, in, out any) (int, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return 0, fmt.Errorf("%s: encode: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
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
		return resp.StatusCode, fmt.Errorf("%s: read answer: %w", op, err)
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
	return resp, err
}

func (c *client) heartbeat(ctx context.Context, nodeID, secret string, req quantix.HeartbeatRequest) (quantix.HeartbeatResponse, error) {
	var resp quantix.HeartbeatResponse
	_, err := c.do(ctx, "heartbeat", http.MethodPost, quantix.PathHeartbeat(nodeID), secret, req, &resp)
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
