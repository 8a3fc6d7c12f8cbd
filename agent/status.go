package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/quantix/quantix"
)

// Agent states in Status.State.
const (
	StateStarting    = "starting"
	StateRegistering = "registering"
	StateRegistered  = "registered"
	StateRefused     = "refused" // 401/409/400: the operator must act; see Error
)

// Status is what /status shows.
type Status struct {
	NodeID    string `json:"node_id"`
	VDC       string `json:"vdc_url"` // the vDC in use, one of control_plane's
	Hostname  string `json:"hostname"`
	MachineID string `json:"machine_id"`
	State     string `json:"state"`
	// Error is the current problem and what the operator must do about it.
	Error                    string             `json:"error,omitempty"`
	Registration             Attempt            `json:"registration"`
	Heartbeat                Attempt            `json:"heartbeat"`
	StateSync                Attempt            `json:"state_sync"`
	HeartbeatIntervalSeconds int                `json:"heartbeat_interval_seconds"`
	Management               ManagementStatus   `json:"management"`
	Hypervisor               quantix.Hypervisor `json:"hypervisor"`
	Counts                   Counts             `json:"counts"`
	AgentVersion             string             `json:"agent_version"`
	// OS is what heartbeats report about the running OS and the upgrade.
	OS *quantix.NodeOS `json:"os,omitempty"`
}

// Attempt is the outcome of the last registration, heartbeat or state upload.
type Attempt struct {
	At     *time.Time `json:"at,omitempty"`
	OK     bool       `json:"ok"`
	Result string     `json:"result,omitempty"` // registration kind, "ok", "full"
	Error  string     `json:"error,omitempty"`
	// LastOK is the time of the last successful one.
	LastOK *time.Time `json:"last_ok,omitempty"`
}

func (a *Attempt) record(at time.Time, result string, err error) {
	a.At, a.OK, a.Result, a.Error = &at, err == nil, result, ""
	if err != nil {
		a.Error = err.Error()
		return
	}
	a.LastOK = &at
}

// ManagementStatus is the management address as last found.
type ManagementStatus struct {
	IP        string `json:"ip,omitempty"`
	Interface string `json:"interface,omitempty"`
	Source    string `json:"source,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Counts are counters since the agent started, and the inventory size.
type Counts struct {
	VMs                  int `json:"vms"`
	StoragePools         int `json:"storage_pools"`
	Registrations        int `json:"registrations"`
	RegistrationFailures int `json:"registration_failures"`
	Heartbeats           int `json:"heartbeats"`
	HeartbeatFailures    int `json:"heartbeat_failures"`
	EventsSent           int `json:"events_sent"`
	StatePuts            int `json:"state_puts"`
	ManagementChanges    int `json:"management_changes"`
}

type statusBoard struct {
	mu sync.Mutex
	st Status
}

func newStatusBoard(st Status) *statusBoard {
	st.AgentVersion = quantix.Version
	return &statusBoard{st: st}
}

func (b *statusBoard) update(f func(*Status)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(&b.st)
}

func (b *statusBoard) get(hv quantix.Hypervisor) Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.st
	st.Hypervisor = hv
	if hv.State != quantix.HypervisorAvailable {
		st.Counts.VMs, st.Counts.StoragePools = 0, 0
	}
	return st
}

// Handler serves /healthz, /status and /metrics.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+quantix.PathHealthz, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Status())
	})
	mux.HandleFunc("GET "+quantix.PathMetrics, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, s.Status())
	})
	return mux
}

func writeMetrics(w http.ResponseWriter, st Status) {
	b2f := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	ts := func(t *time.Time) float64 {
		if t == nil {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	var b strings.Builder
	metric := func(name, typ, help string, value any, labels ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s", name, help, name, typ, name)
		if len(labels) > 0 {
			b.WriteString("{")
			for i := 0; i < len(labels); i += 2 {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, "%s=%q", labels[i], labels[i+1])
			}
			b.WriteString("}")
		}
		fmt.Fprintf(&b, " %v\n", value)
	}
	metric("quantix_agent_info", "gauge", "Agent version, hostname and node id.", 1,
		"version", st.AgentVersion, "hostname", st.Hostname, "node_id", st.NodeID)
	metric("quantix_agent_registered", "gauge", "1 while the agent holds a registration.", b2f(st.State == StateRegistered))
	metric("quantix_agent_refused", "gauge", "1 while the vDC refuses the registration (operator action needed).", b2f(st.State == StateRefused))
	metric("quantix_agent_registrations_total", "counter", "Successful registrations.", st.Counts.Registrations)
	metric("quantix_agent_registration_failures_total", "counter", "Failed registrations.", st.Counts.RegistrationFailures)
	metric("quantix_agent_heartbeats_total", "counter", "Successful heartbeats.", st.Counts.Heartbeats)
	metric("quantix_agent_heartbeat_failures_total", "counter", "Failed heartbeats.", st.Counts.HeartbeatFailures)
	metric("quantix_agent_last_heartbeat_timestamp_seconds", "gauge", "Time of the last successful heartbeat.", ts(st.Heartbeat.LastOK))
	metric("quantix_agent_heartbeat_interval_seconds", "gauge", "Heartbeat interval the vDC asked for.", st.HeartbeatIntervalSeconds)
	metric("quantix_agent_state_puts_total", "counter", "Full state uploads.", st.Counts.StatePuts)
	metric("quantix_agent_events_sent_total", "counter", "Incremental inventory events sent.", st.Counts.EventsSent)
	metric("quantix_agent_management_address_changes_total", "counter", "Management address changes seen.", st.Counts.ManagementChanges)
	metric("quantix_agent_hypervisor_up", "gauge", "1 while libvirt is connected.", b2f(st.Hypervisor.State == quantix.HypervisorAvailable))
	metric("quantix_agent_vms", "gauge", "Domains libvirt reports.", st.Counts.VMs)
	metric("quantix_agent_storage_pools", "gauge", "Storage pools libvirt reports.", st.Counts.StoragePools)
	w.Write([]byte(b.String()))
}
