package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
)

// VDC talks to the real vDC in the QvDC VM with the admin token from its config disk.
type VDC struct {
	Base  string // http://10.77.0.10:8080
	Token string
	HTTP  *http.Client
}

// get fetches path and decodes a 200 answer into v (v nil: the body is ignored).
func (c *VDC) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+path, nil)
	if err != nil {
		return err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return doJSON(c.HTTP, req, v)
}

func doJSON(hc *http.Client, req *http.Request, v any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("GET %s: read body: %w", req.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: decode %q: %w", req.URL, body, err)
	}
	return nil
}

// Ready is nil when /readyz answers 200 (database reachable, schema current).
func (c *VDC) Ready(ctx context.Context) error {
	return c.get(ctx, quantix.PathReadyz, nil)
}

// Nodes lists the registry.
func (c *VDC) Nodes(ctx context.Context) ([]quantix.Node, error) {
	var l quantix.NodeList
	if err := c.get(ctx, quantix.PathNodes, &l); err != nil {
		return nil, err
	}
	return l.Nodes, nil
}

// Events returns a node's history (registrations, refused takeovers, phase and
// management_ip changes).
func (c *VDC) Events(ctx context.Context, nodeID string) ([]quantix.NodeEvent, error) {
	var l struct {
		Events []quantix.NodeEvent `json:"events"`
	}
	if err := c.get(ctx, quantix.PathEvents(nodeID), &l); err != nil {
		return nil, err
	}
	return l.Events, nil
}

// AgentStatus fetches a node agent's /status through the workstation.
func AgentStatus(ctx context.Context, hc *http.Client, addr string) (agent.Status, error) {
	var st agent.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return st, err
	}
	err = doJSON(hc, req, &st)
	return st, err
}

// byHostname returns the rows with hostname h.
func byHostname(nodes []quantix.Node, h string) []quantix.Node {
	var out []quantix.Node
	for _, n := range nodes {
		if n.Hostname == h {
			out = append(out, n)
		}
	}
	return out
}

// describeNodes is a one-line view of the registry for failure messages.
func describeNodes(nodes []quantix.Node) string {
	if len(nodes) == 0 {
		return "(no nodes)"
	}
	var b strings.Builder
	for i, n := range nodes {
		if i > 0 {
			b.WriteString("; ")
		}
		hb := "never"
		if n.LastHeartbeat != nil {
			hb = n.LastHeartbeat.UTC().Format(time.TimeOnly)
		}
		fmt.Fprintf(&b, "%s id=%s ip=%s phase=%s last_heartbeat=%s", n.Hostname, n.ID, n.ManagementIP, n.Phase, hb)
	}
	return b.String()
}
