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

// AgentStatus fetches a node agent's /status through the workstation.
func AgentStatus(ctx context.Context, hc *http.Client, addr string) (agent.Status, error) {
	var st agent.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return st, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return st, fmt.Errorf("GET %s: read body: %w", req.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET %s: %s: %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("GET %s: decode %q: %w", req.URL, body, err)
	}
	return st, nil
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
