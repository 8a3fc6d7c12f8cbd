package quantix

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// This file holds the vDC HTTP API v1 wire types (docs/design.md §5). The agent, the vDC,
// qx-ctl and the tests all use these, so a field cannot be renamed on one side only.

// API paths.
const (
	PathRegister    = "/api/v1/nodes/register"
	PathNodes       = "/api/v1/nodes"
	PathVMs         = "/api/v1/vms"
	PathPools       = "/api/v1/storage-pools"
	PathJoinTokens  = "/api/v1/join-tokens"
	PathHealthz     = "/healthz"
	PathReadyz      = "/readyz"
	PathMetrics     = "/metrics"
	MaxRequestBytes = 1 << 20 // bodies above this get 413
)

// PathAdminTokenRotate is POST (admin): a new cluster-wide admin token.
const PathAdminTokenRotate = "/api/v1/admin-token/rotate"

// PathHeartbeat, PathState and PathEvents are the per-node paths.
func PathHeartbeat(nodeID string) string { return PathNodes + "/" + nodeID + "/heartbeat" }
func PathState(nodeID string) string     { return PathNodes + "/" + nodeID + "/state" }
func PathEvents(nodeID string) string    { return PathNodes + "/" + nodeID + "/events" }
func PathNode(nodeID string) string      { return PathNodes + "/" + nodeID }

// Registration kinds (docs/design.md §4).
const (
	RegistrationRegistered   = "registered"   // new hostname, 201
	RegistrationReregistered = "reregistered" // same node_secret, 200
	RegistrationReenrolled   = "reenrolled"   // same machine_id, new secret, valid join token, 200
)

// Node phases (docs/design.md §6).
const (
	PhaseReady        = "ready"
	PhaseNotReady     = "not_ready"
	PhaseDisconnected = "disconnected"
	PhaseMaintenance  = "maintenance"
)

// Hypervisor states.
const (
	HypervisorAvailable   = "available"
	HypervisorUnavailable = "unavailable"
	HypervisorUnknown     = "unknown" // the agent has not said yet
)

// Accelerators a node's guests run with (Hypervisor.Accelerator).
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// DefaultHeartbeatInterval is the vDC's default (docs/design.md §6).
const DefaultHeartbeatInterval = 30 * time.Second

// CPUInfo describes the host's processors.
type CPUInfo struct {
	Model   string `json:"model,omitempty"`
	Sockets int    `json:"sockets,omitempty"`
	Cores   int    `json:"cores,omitempty"`   // physical cores in all
	Threads int    `json:"threads,omitempty"` // logical CPUs in all
}

// Hypervisor is the agent's view of the local hypervisor (libvirt).
type Hypervisor struct {
	State   string `json:"state"`            // HypervisorAvailable, HypervisorUnavailable, HypervisorUnknown
	Reason  string `json:"reason,omitempty"` // why it is unavailable
	URI     string `json:"uri,omitempty"`
	Version string `json:"version,omitempty"` // libvirt version when available
	// QEMUVersion is the hypervisor's version as libvirt reports it.
	QEMUVersion string `json:"qemu_version,omitempty"`
	// Accelerator is what guests run with: "kvm" when a probe showed that KVM runs
	// a guest, else "tcg" (docs/design.md §13); AcceleratorReason says why not kvm.
	Accelerator       string `json:"accelerator,omitempty"`
	AcceleratorReason string `json:"accelerator_reason,omitempty"`
	// Persistent says whether VM definitions and disks are on QUANTIX-DATA (true)
	// or in RAM on a live boot without one (false); nil when the agent did not say.
	Persistent *bool `json:"persistent,omitempty"`
}

// RegisterRequest is the body of POST /api/v1/nodes/register. A new hostname needs a
// join token as "Authorization: Bearer <token>"; a known node proves itself with
// node_secret.
type RegisterRequest struct {
	Hostname     string            `json:"hostname"`
	MachineID    string            `json:"machine_id"`
	NodeSecret   string            `json:"node_secret"` // hex of 32 random bytes
	ManagementIP string            `json:"management_ip"`
	AgentVersion string            `json:"agent_version"`
	CPU          *CPUInfo          `json:"cpu,omitempty"`
	MemoryBytes  int64             `json:"memory_bytes,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Hypervisor   *Hypervisor       `json:"hypervisor,omitempty"`
}

// RegisterResponse answers a registration.
type RegisterResponse struct {
	NodeID                   string `json:"node_id"`
	Registration             string `json:"registration"` // Registration* constants
	HeartbeatIntervalSeconds int    `json:"heartbeat_interval_seconds"`
	// VDCURLs is the current list of vDC URLs agents use (vdc.toml agent_urls;
	// absent when not configured): the agent moves to another of them when its vDC
	// fails (docs/design.md §17).
	VDCURLs []string `json:"vdc_urls,omitempty"`
	// AgentCAPins are the CA pins agents must trust now (docs/design.md §15): the
	// serving CA's, plus the next one's while a rotation overlaps. The agent stores
	// them in its identity.
	AgentCAPins []string `json:"agent_ca_pins,omitempty"`
}

// HeartbeatRequest is the body of POST /api/v1/nodes/{id}/heartbeat
// (Authorization: Bearer <node_secret>).
type HeartbeatRequest struct {
	ManagementIP    string      `json:"management_ip"`
	CPUPercent      *float64    `json:"cpu_percent,omitempty"`
	MemoryUsedBytes *int64      `json:"memory_used_bytes,omitempty"`
	StateHash       string      `json:"state_hash,omitempty"`
	Hypervisor      *Hypervisor `json:"hypervisor,omitempty"`
	// AppliedGeneration is the desired generation (vms.go) the node last converged to.
	AppliedGeneration int64 `json:"applied_generation"`
	// OS is the running release, its A/B slots and the upgrade in progress
	// (upgrades.go).
	OS *NodeOS `json:"os,omitempty"`
}

// HeartbeatResponse answers a heartbeat. FullSync asks the agent for a full state PUT.
type HeartbeatResponse struct {
	HeartbeatIntervalSeconds int  `json:"heartbeat_interval_seconds"`
	FullSync                 bool `json:"full_sync"`
	// DesiredGeneration is the node's desired generation (docs/design.md §14); when it
	// differs from what the agent applied, the agent fetches PathDesired.
	DesiredGeneration int64 `json:"desired_generation"`
	// VDCURLs: as in RegisterResponse.
	VDCURLs []string `json:"vdc_urls,omitempty"`
	// AgentCAPins: as in RegisterResponse.
	AgentCAPins []string `json:"agent_ca_pins,omitempty"`
}

// VM power states as reported by the agent (libvirt domain states).
const (
	PowerRunning     = "running"
	PowerBlocked     = "blocked"
	PowerPaused      = "paused"
	PowerShutdown    = "shutdown" // shutting down
	PowerShutoff     = "shutoff"
	PowerCrashed     = "crashed"
	PowerPMSuspended = "pmsuspended"
	PowerUnknown     = "unknown"
)

// VM is one libvirt domain as the agent sees it.
type VM struct {
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	PowerState  string `json:"power_state"`
	VCPUs       int    `json:"vcpus"`
	MemoryBytes int64  `json:"memory_bytes"`
	// Error is why the agent could not converge a managed VM to its desired state.
	Error string `json:"error,omitempty"`
}

// StoragePool is one libvirt storage pool as the agent sees it.
type StoragePool struct {
	UUID           string `json:"uuid,omitempty"`
	Name           string `json:"name"`
	Type           string `json:"type"`
	Path           string `json:"path,omitempty"`
	State          string `json:"state"` // running, inactive, building, degraded, inaccessible
	CapacityBytes  int64  `json:"capacity_bytes"`
	AvailableBytes int64  `json:"available_bytes"`
	// AllocationBytes is what the pool's volumes take (libvirt's allocation).
	AllocationBytes int64 `json:"allocation_bytes"`
}

// NodeState is the body of PUT /api/v1/nodes/{id}/state: everything the node sees.
// VMs of the node missing from the list are marked lost by the vDC, never deleted.
type NodeState struct {
	VMs          []VM          `json:"vms"`
	StoragePools []StoragePool `json:"storage_pools"`
	StateHash    string        `json:"state_hash"` // StateHash(VMs, StoragePools)
	Hypervisor   *Hypervisor   `json:"hypervisor,omitempty"`
	// AppliedGeneration is the desired generation the node converged to.
	AppliedGeneration int64 `json:"applied_generation"`
}

// Event kinds and actions for POST /api/v1/nodes/{id}/events.
const (
	EventKindVM          = "vm"
	EventKindStoragePool = "storage_pool"
	EventActionUpsert    = "upsert"  // defined, started, stopped, changed
	EventActionRemoved   = "removed" // undefined / deleted on the host
)

// StateEvent is one incremental change. Exactly one of VM and StoragePool is set,
// matching Kind. For EventActionRemoved only the UUID (VM) or name (pool) is needed.
type StateEvent struct {
	Kind        string       `json:"kind"`
	Action      string       `json:"action"`
	At          time.Time    `json:"at"`
	VM          *VM          `json:"vm,omitempty"`
	StoragePool *StoragePool `json:"storage_pool,omitempty"`
}

// NodeEvents is the body of POST /api/v1/nodes/{id}/events. StateHash is the hash of
// the node's full state after the events.
type NodeEvents struct {
	Events    []StateEvent `json:"events"`
	StateHash string       `json:"state_hash"`
}

// StateAck answers a state PUT or an events POST.
type StateAck struct {
	StateHash string `json:"state_hash"`
	FullSync  bool   `json:"full_sync"` // the events could not be applied; send full state
}

// Node is one row of the registry as the admin API shows it.
type Node struct {
	ID                string            `json:"id"`
	Hostname          string            `json:"hostname"`
	MachineID         string            `json:"machine_id"`
	ManagementIP      string            `json:"management_ip"` // address only, no prefix length
	Phase             string            `json:"phase"`
	LastHeartbeat     *time.Time        `json:"last_heartbeat"`
	RegisteredAt      time.Time         `json:"registered_at"`
	UpdatedAt         time.Time         `json:"updated_at"`
	AgentVersion      string            `json:"agent_version"`
	Hypervisor        Hypervisor        `json:"hypervisor"`
	CPU               *CPUInfo          `json:"cpu,omitempty"`
	MemoryBytes       int64             `json:"memory_bytes,omitempty"`
	CPUPercent        *float64          `json:"cpu_percent,omitempty"`
	MemoryUsedBytes   *int64            `json:"memory_used_bytes,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	VMCount           int               `json:"vm_count"`
	HeartbeatInterval int               `json:"heartbeat_interval_seconds"`
	OS                *NodeOS           `json:"os,omitempty"`
}

// NodeList is the body of GET /api/v1/nodes. Without query parameters it holds
// every node. With any of phase, q (hostname substring), limit or offset it is one
// page in hostname order, and Total, Counts, Limit and Offset are set.
type NodeList struct {
	Nodes []Node `json:"nodes"`
	// Total counts the nodes matching phase and q in all pages.
	Total *int `json:"total,omitempty"`
	// Counts is the number of nodes matching q per phase (every phase present).
	Counts map[string]int `json:"counts,omitempty"`
	Limit  int            `json:"limit,omitempty"`
	Offset int            `json:"offset,omitempty"`
}

// NodeEvent is one entry of a node's history (registrations, re-enrolments,
// phase changes, refused takeovers).
type NodeEvent struct {
	ID      int64     `json:"id"`
	NodeID  string    `json:"node_id"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// InventoryVM is one VM in GET /api/v1/vms.
type InventoryVM struct {
	VM
	NodeID     string     `json:"node_id"`
	Hostname   string     `json:"hostname"`
	Origin     string     `json:"origin"` // "discovered" (found on the host) or "managed"
	IsManaged  bool       `json:"is_managed"`
	LastSeen   time.Time  `json:"last_seen"`
	Lost       bool       `json:"lost"`
	LostReason string     `json:"lost_reason,omitempty"`
	LostAt     *time.Time `json:"lost_at,omitempty"`
}

// VMList is the body of GET /api/v1/vms.
type VMList struct {
	VMs []InventoryVM `json:"vms"`
	// Managed is every VM the vDC created, wanted next to observed (vms.go); VMs
	// holds what the nodes report, the unmanaged ones with is_managed false.
	Managed []ManagedVM `json:"managed"`
}

// InventoryPool is one storage pool on one node in GET /api/v1/storage-pools.
type InventoryPool struct {
	StoragePool
	NodeID    string     `json:"node_id"`
	Hostname  string     `json:"hostname"`
	Origin    string     `json:"origin"`
	IsManaged bool       `json:"is_managed"`
	LastSeen  time.Time  `json:"last_seen"`
	Lost      bool       `json:"lost"`
	LostAt    *time.Time `json:"lost_at,omitempty"`
}

// PoolList is the body of GET /api/v1/storage-pools.
type PoolList struct {
	StoragePools []InventoryPool `json:"storage_pools"`
}

// JoinTokenRequest is the body of POST /api/v1/join-tokens.
type JoinTokenRequest struct {
	TTLSeconds  int    `json:"ttl_seconds"` // 0: the vDC default
	Uses        int    `json:"uses"`        // 0: the vDC default
	Description string `json:"description,omitempty"`
}

// JoinToken answers POST /api/v1/join-tokens. Token is shown only here, once.
type JoinToken struct {
	ID          string    `json:"id"`
	Token       string    `json:"token"`
	ExpiresAt   time.Time `json:"expires_at"`
	UsesLeft    int       `json:"uses_left"`
	Description string    `json:"description,omitempty"`
}

// AgentCA is one CA for agent traffic in GET /api/v1/agent-ca.
type AgentCA struct {
	Pin       string    `json:"pin"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// ServingFrom is when the vDCs start serving certificates from this CA; a
	// rotation sets it to the end of the overlap.
	ServingFrom time.Time `json:"serving_from"`
	CertPEM     string    `json:"cert_pem"`
}

// AgentCAStatus is the body of GET /api/v1/agent-ca and POST /api/v1/agent-ca/rotate.
type AgentCAStatus struct {
	// Serving is the CA the serving certificates come from now.
	Serving AgentCA `json:"serving"`
	// Next is the CA a rotation created, served from Next.ServingFrom; nil without one.
	Next *AgentCA `json:"next,omitempty"`
	// Pins are the pins announced to agents (Serving's, and Next's during the overlap).
	Pins []string `json:"pins"`
	// ExpiresInSeconds is how long the serving CA has left; Warning is set when that is
	// below the vDC's warning threshold (rotate the CA).
	ExpiresInSeconds int64  `json:"expires_in_seconds"`
	Warning          string `json:"warning,omitempty"`
	// JoinTokenPin is the pin new join tokens carry (Serving's).
	JoinTokenPin string `json:"join_token_pin"`
}

// AdminTokenRotation is the answer to POST /api/v1/admin-token/rotate.
type AdminTokenRotation struct {
	// AdminToken is the new admin token (64 hex), shown this once: the vDCs keep
	// only its digest.
	AdminToken string `json:"admin_token"`
	// Generation counts the cluster's admin tokens: 1 for the first, +1 per rotation.
	Generation int64 `json:"generation"`
	// PropagationSeconds bounds when every vDC on the database refuses the old token
	// (the one that answered does at once).
	PropagationSeconds int `json:"propagation_seconds"`
	// UISessionsEnded is how many web UI sessions the rotation ended (all of them).
	UISessionsEnded int64 `json:"ui_sessions_ended"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

// StateHash is the hash the agent attaches to its state and the vDC compares on
// heartbeats. It is order-independent: VMs sorted by UUID, pools by name.
func StateHash(vms []VM, pools []StoragePool) string {
	v := append([]VM(nil), vms...)
	p := append([]StoragePool(nil), pools...)
	sort.Slice(v, func(i, j int) bool { return v[i].UUID < v[j].UUID })
	sort.Slice(p, func(i, j int) bool { return p[i].Name < p[j].Name })
	if v == nil {
		v = []VM{}
	}
	if p == nil {
		p = []StoragePool{}
	}
	b, err := json.Marshal(struct {
		VMs   []VM          `json:"vms"`
		Pools []StoragePool `json:"pools"`
	}{v, p})
	if err != nil {
		panic(err) // plain structs of strings and ints always marshal
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// MaxVDCURLs bounds a list of vDC URLs.
const MaxVDCURLs = 16

// ParseVDCURLs parses a comma-separated list of vDC URLs (agent.toml control_plane,
// quantix.vdc= on the kernel command line): each http:// or https:// with a host,
// without a path beyond "/", a query or a fragment; no duplicates.
func ParseVDCURLs(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		u := strings.TrimRight(strings.TrimSpace(part), "/")
		if u == "" {
			return nil, fmt.Errorf("%q: an empty URL in the list", s)
		}
		if err := ValidVDCURL(u); err != nil {
			return nil, err
		}
		if slices.Contains(out, u) {
			return nil, fmt.Errorf("%q is listed twice", u)
		}
		out = append(out, u)
	}
	if len(out) > MaxVDCURLs {
		return nil, fmt.Errorf("%d vDC URLs; at most %d", len(out), MaxVDCURLs)
	}
	return out, nil
}

// ValidVDCURL checks one vDC URL.
func ValidVDCURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: want an http:// or https:// URL", s)
	case u.Host == "":
		return fmt.Errorf("%q: no host", s)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return fmt.Errorf("%q: no query, fragment or user allowed", s)
	case u.Path != "" && u.Path != "/":
		return fmt.Errorf("%q: no path allowed (the API paths are fixed)", s)
	}
	return nil
}
