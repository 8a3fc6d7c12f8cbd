package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// Snapshot is everything the status screen shows, gathered at once.
type Snapshot struct {
	At       time.Time
	Image    string
	Version  string
	Hostname string
	Uptime   time.Duration

	Net    *network.Status
	NetErr error

	// Agent is the node agent's /status (Quantix-OS).
	Agent    *AgentStatus
	AgentErr error
	// Phases is the vDC's node count by phase (QvDC), from its /metrics.
	Phases map[string]int
	VDCErr error
	// VDCUI is the web UI address the vDC announced in its ready marker (ui=),
	// e.g. https://[::]:8443, from its log; "" when not known (yet).
	VDCUI string
	// AgentCAPin is the pin of the vDC's agent CA (agent_ca_pin= in its ready
	// marker): what join tokens carry, shown so an operator can check a token.
	AgentCAPin string

	Services    []ServiceState
	ServicesErr error

	// Persistent is true when QUANTIX-CFG is mounted at the config folder.
	Persistent bool
	PersistErr error
	// PasswordSet says whether a console password exists.
	PasswordSet bool
}

// AgentStatus is the part of the agent's /status the console shows (agent.Status;
// decoded leniently so the console does not have to link the agent).
type AgentStatus struct {
	NodeID       string `json:"node_id"`
	VDC          string `json:"vdc_url"`
	State        string `json:"state"`
	Error        string `json:"error"`
	Registration struct {
		Result string `json:"result"`
		OK     bool   `json:"ok"`
	} `json:"registration"`
	Hypervisor quantix.Hypervisor `json:"hypervisor"`
}

// URL returns the address an operator should open: the vDC UI on QvDC, the node
// status on Quantix-OS, on the management address.
func (s *Snapshot) URL(c *Config) string {
	if s.Net == nil || s.Net.Address == "" {
		return ""
	}
	ip, _, _ := strings.Cut(s.Net.Address, "/")
	local := c.AgentURL
	path := "/status"
	if c.Image == quantix.ImageQvDC {
		// The web UI (HTTPS, its own port): as configured, else as the vDC said
		// when it got ready, else the API's address (which redirects browsers).
		local, path = c.VDCUIURL, "/"
		if local == "" {
			local = s.VDCUI
		}
		if local == "" {
			local = c.VDCURL
		}
	}
	u, err := url.Parse(local)
	if err != nil || u.Host == "" {
		return ""
	}
	port := u.Port()
	host := ip
	if port != "" {
		host = net.JoinHostPort(ip, port)
	}
	return u.Scheme + "://" + host + path
}

// gather collects a Snapshot; every source has its own short timeout and they run
// in parallel, so one hung service does not freeze the screen.
func gather(ctx context.Context, c *Config) *Snapshot {
	s := &Snapshot{At: time.Now(), Image: c.Image, Version: c.Version}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		st, err := network.Client{Socket: c.NetworkSocket}.Status(ctx)
		if err != nil {
			s.NetErr = err
			return
		}
		s.Net = &st
	})
	if c.Image == quantix.ImageQvDC {
		wg.Go(func() { s.Phases, s.VDCErr = vdcPhases(ctx, c.VDCURL) })
		if c.VDCUIURL == "" {
			s.VDCUI = readyField(filepath.Join(c.LogDir, "vdc.log"), "vdc", "ui")
		}
		s.AgentCAPin = readyField(filepath.Join(c.LogDir, "vdc.log"), "vdc", "agent_ca_pin")
	} else if c.AgentURL != "" {
		wg.Go(func() { s.Agent, s.AgentErr = agentStatus(ctx, c.AgentURL) })
	}
	if c.Init != nil {
		wg.Go(func() { s.Services, s.ServicesErr = c.Init.Services(ctx) })
	}
	s.Hostname, _ = os.Hostname()
	s.Uptime, _ = readUptime(c.UptimePath)
	s.Persistent, s.PersistErr = configMounted(c.MountInfo, c.ConfigDir)
	s.PasswordSet, _ = PasswordStore{Path: c.PasswordFile}.IsSet()
	wg.Wait()
	return s
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func getLocal(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %s", u, resp.Status)
	}
	return b, nil
}

func agentStatus(ctx context.Context, base string) (*AgentStatus, error) {
	b, err := getLocal(ctx, strings.TrimRight(base, "/")+"/status")
	if err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	var a AgentStatus
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	return &a, nil
}

// vdcPhases reads qx_vdc_nodes{phase="..."} from the local vDC's /metrics. The
// console uses /metrics rather than GET /api/v1/nodes because the admin token is
// stored only as a hash, and rather than the database because that would put
// credentials and a second view of liveness into the console: /metrics is the
// vDC's own count, unauthenticated and served on the appliance itself.
func vdcPhases(ctx context.Context, base string) (map[string]int, error) {
	b, err := getLocal(ctx, strings.TrimRight(base, "/")+quantix.PathMetrics)
	if err != nil {
		return nil, fmt.Errorf("vdc metrics: %w", err)
	}
	return ParsePhases(string(b))
}

// ParsePhases extracts the node counts by phase from a Prometheus exposition.
func ParsePhases(text string) (map[string]int, error) {
	out := map[string]int{}
	found := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "# TYPE qx_vdc_nodes ") {
			found = true
		}
		rest, ok := strings.CutPrefix(line, `qx_vdc_nodes{phase="`)
		if !ok {
			continue
		}
		phase, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			return nil, fmt.Errorf("vdc metrics: bad line %q", line)
		}
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("vdc metrics: bad count in %q", line)
		}
		out[phase] = n
		found = true
	}
	if !found {
		return nil, errors.New("vdc metrics: no qx_vdc_nodes series")
	}
	return out, nil
}

// FormatPhases renders counts in a fixed order: ready, not_ready, disconnected,
// maintenance, then any other phase alphabetically.
func FormatPhases(p map[string]int) string {
	order := []string{"ready", "not_ready", "disconnected", "maintenance"}
	seen := map[string]bool{}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s %d", k, p[k]))
		seen[k] = true
	}
	var rest []string
	for k := range p {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		parts = append(parts, fmt.Sprintf("%s %d", k, p[k]))
	}
	return strings.Join(parts, ", ")
}

// readyField returns field of the last ready marker service printed in its log,
// or "" when there is none (the service is not ready yet, or has no such field).
func readyField(logPath, service, field string) string {
	lines, err := TailLines(logPath, 200)
	if err != nil {
		return ""
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if m, ok := quantix.ParseMarker(lines[i]); ok && m.Kind == quantix.MarkerReady && m.Get("service") == service {
			return m.Get(field)
		}
	}
	return ""
}

func readUptime(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("%s: empty", path)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(v * float64(time.Second)), nil
}

// configMounted reports whether dir is the mount point of a persistent filesystem
// (a device, not RAM) according to mountinfo: that is QUANTIX-CFG, mounted by init.
func configMounted(mountinfo, dir string) (bool, error) {
	m, err := quantix.ReadMountFacts(mountinfo, dir)
	return m.Persistent(), err
}
