package quantix

import "time"

// Upgrades delivered by the vDC (docs/design.md §16): an operator uploads a signed
// release bundle once (a Release), then starts an upgrade of one node, a list or
// all nodes; the vDC upgrades them one at a time. For each node it puts a
// DesiredUpgrade into the node's desired state (NodeDesired.Upgrade, long-polled
// like the VMs): the agent downloads the bundle's files onto QUANTIX-DATA, checks
// their sha256, asks init to stage it (InitClient.Stage: verified again against
// the node's own trusted keys, written into the other slot) and reports
// UpgradeStaged; once the vDC sets Activate the agent asks init to reboot. The
// node is done when it heartbeats with the new version and its slot committed
// (NodeOS.Slots.State == SlotGood); a node back on the old version with
// SlotRolledBack stops the whole upgrade. Nodes are never upgraded to a version
// newer than the vDC's own (the version-skew rule).

// Paths of the release and upgrade API (admin) and the node's download.
const (
	PathReleases = "/api/v1/releases" // GET list, POST multipart upload of a bundle's four files
	PathUpgrades = "/api/v1/upgrades" // GET list, POST UpgradeRequest
)

// PathRelease is one release (GET, DELETE).
func PathRelease(id string) string { return PathReleases + "/" + id }

// PathUpgrade is one rolling upgrade (GET); PathUpgrade(id)+"/cancel" is POST.
func PathUpgrade(id string) string { return PathUpgrades + "/" + id }

// PathNodeRelease is GET of one file of a release by a node (Authorization:
// Bearer <node_secret>; Range requests are served). It lives under the node's
// path like PathNodeImage, so the node secret travels on the agent channel only.
func PathNodeRelease(nodeID, release, name string) string {
	return PathNodes + "/" + nodeID + "/releases/" + release + "/" + name
}

// ReleaseFile is one file of a release bundle (the ISO, its manifest, the sums
// and their signature), as the vDC stores and serves it to nodes at
// PathNodeRelease.
type ReleaseFile struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	SHA256    string `json:"sha256"` // hex
}

// Release is an uploaded, verified release bundle.
type Release struct {
	ID        string        `json:"id"`
	Image     string        `json:"image"` // ImageQuantixOS or ImageQvDC
	Version   string        `json:"version"`
	SignedBy  string        `json:"signed_by"`
	Files     []ReleaseFile `json:"files"`
	CreatedAt time.Time     `json:"created_at"`
}

// DesiredUpgrade is the vDC's order to one node (NodeDesired.Upgrade).
type DesiredUpgrade struct {
	// Upgrade is the rolling upgrade this order belongs to.
	Upgrade string `json:"upgrade"`
	Release string `json:"release"` // Release.ID
	Image   string `json:"image"`
	Version string `json:"version"`
	// Files are downloaded into one folder and staged from it.
	Files []ReleaseFile `json:"files"`
	// Activate says: once staged, reboot into the new slot.
	Activate bool `json:"activate"`
}

// Upgrade phases a node reports for the order it works on (UpgradeProgress.Phase).
const (
	UpgradeDownloading = "downloading"
	UpgradeStaged      = "staged"     // verified and written into the other slot; waits for Activate
	UpgradeActivating  = "activating" // reboot requested
	UpgradeFailed      = "failed"     // Error says why; the node stays on its version
)

// UpgradeProgress is what a node reports about the DesiredUpgrade it works on.
type UpgradeProgress struct {
	Upgrade string    `json:"upgrade"`
	Release string    `json:"release"`
	Version string    `json:"version"`
	Phase   string    `json:"phase"`
	Error   string    `json:"error,omitempty"`
	At      time.Time `json:"at"`
}

// NodeOS is a node's operating system as its agent reports it in every
// heartbeat (HeartbeatRequest.OS) and the vDC shows it (Node.OS).
type NodeOS struct {
	Image   string `json:"image"`
	Version string `json:"version"`
	// Slots is nil on a live boot (no installed A/B disk): such a node cannot
	// be upgraded, only reinstalled.
	Slots   *SlotsStatus     `json:"slots,omitempty"`
	Upgrade *UpgradeProgress `json:"upgrade,omitempty"`
}

// ReleaseList is the body of GET PathReleases, newest first.
type ReleaseList struct {
	Releases []Release `json:"releases"`
}

// UpgradeRequest is the body of POST PathUpgrades: the release (its id, or
// "<image>-<version>"), the nodes in order (ids or hostnames) or All (every node,
// by hostname). Activate (default true) reboots each node into the release once
// staged; false stages only (the release then boots at the node's next reboot).
type UpgradeRequest struct {
	Release  string   `json:"release"`
	Nodes    []string `json:"nodes,omitempty"`
	All      bool     `json:"all,omitempty"`
	Activate *bool    `json:"activate,omitempty"`
}

// Rolling upgrade states (Upgrade.State).
const (
	UpgradeRunning   = "running"
	UpgradeSucceeded = "succeeded"
	UpgradeCancelled = "cancelled"
	// UpgradeFailed (above) is also a job's state: the first node that failed
	// stopped it, and the nodes after it were left alone.
)

// Node phases within a rolling upgrade (UpgradeNode.Phase).
const (
	UpgradeNodePending    = "pending"    // not started (or left alone after a failure)
	UpgradeNodeSkipped    = "skipped"    // already on the version
	UpgradeNodeStaging    = "staging"    // DesiredUpgrade given, Activate false
	UpgradeNodeActivating = "activating" // Activate true: waiting for the new version, slot good
	UpgradeNodeDone       = "done"
	UpgradeNodeFailed     = "failed"
	UpgradeNodeCancelled  = "cancelled"
)

// UpgradeNode is one node of a rolling upgrade.
type UpgradeNode struct {
	NodeID      string     `json:"node_id"`
	Hostname    string     `json:"hostname"`
	FromVersion string     `json:"from_version"`
	Phase       string     `json:"phase"`
	Error       string     `json:"error,omitempty"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
}

// Upgrade is a rolling upgrade job (GET PathUpgrade): its nodes go one at a time,
// in order.
type Upgrade struct {
	ID       string `json:"id"`
	Release  string `json:"release"` // Release.ID; empty once the release is deleted
	Image    string `json:"image"`
	Version  string `json:"version"`
	Activate bool   `json:"activate"`
	State    string `json:"state"`
	// CurrentNode is the node being upgraded (its id), empty between nodes.
	CurrentNode string        `json:"current_node,omitempty"`
	Reason      string        `json:"reason,omitempty"` // why it failed or was cancelled
	Nodes       []UpgradeNode `json:"nodes"`
	CreatedAt   time.Time     `json:"created_at"`
	UpdatedAt   time.Time     `json:"updated_at"`
	FinishedAt  *time.Time    `json:"finished_at,omitempty"`
}

// UpgradeList is the body of GET PathUpgrades, newest first.
type UpgradeList struct {
	Upgrades []Upgrade `json:"upgrades"`
}

// The QvDC appliance's own upgrade (docs/design.md §16): the vDC that answers
// asks its local qx-init (InitClient) for its slots, and to stage a stored
// qvdc release into the slot it does not run; the appliance boots it as a trial
// at its next reboot, at once when Activate.
const (
	PathController        = "/api/v1/controller"        // GET ControllerOS (admin)
	PathControllerUpgrade = PathController + "/upgrade" // POST ControllerUpgradeRequest (admin)
)

// ControllerOS is the operating system of the vDC that answered (GET
// PathController).
type ControllerOS struct {
	Hostname string `json:"hostname"`
	// Image is the booted slot's image; "" when Slots is nil.
	Image string `json:"image,omitempty"`
	// Version is the running qx-vdc's own version (the version rules' base).
	Version string `json:"version"`
	// Slots is nil when this vDC does not run under qx-init on an installed A/B
	// disk (a development run, a live boot); Unavailable then says why, and the
	// vDC cannot be upgraded through its API.
	Slots       *SlotsStatus      `json:"slots,omitempty"`
	Unavailable string            `json:"unavailable,omitempty"`
	Events      []ControllerEvent `json:"events"` // this vDC's latest upgrade events, oldest first
}

// ControllerEvent is one entry of a vDC's own upgrade history.
type ControllerEvent struct {
	ID       int64     `json:"id"`
	Hostname string    `json:"hostname"`
	Kind     string    `json:"kind"` // ControllerStaged, ControllerRefused, ControllerRebooting, ControllerRebootFailed
	Message  string    `json:"message"`
	At       time.Time `json:"at"`
}

// ControllerEvent kinds.
const (
	ControllerStaged       = "staged"
	ControllerRefused      = "refused" // qx-init refused the bundle: nothing was written
	ControllerRebooting    = "rebooting"
	ControllerRebootFailed = "reboot_failed"
)

// ControllerUpgradeRequest is the body of POST PathControllerUpgrade: the release
// (its id or "<image>-<version>", a qvdc release newer than the running one) and
// whether to reboot into it once staged (else it boots at the next reboot).
type ControllerUpgradeRequest struct {
	Release  string `json:"release"`
	Activate bool   `json:"activate"`
}

// ControllerUpgrade is the answer to POST PathControllerUpgrade: the release
// staged and where; Rebooting says the vDC reboots now (it goes away for a while).
type ControllerUpgrade struct {
	Release   Release `json:"release"`
	Staged    Staged  `json:"staged"`
	Rebooting bool    `json:"rebooting"`
}
