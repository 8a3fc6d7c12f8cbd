package quantix

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"
)

// This file holds the contract of VMs driven from the vDC (docs/design.md §14): the
// spec an operator gives, the wanted state the vDC keeps, and what a node pulls over
// its agent channel to converge libvirt. The vDC, the agent, qx-ctl and the tests all
// use these types.

// Paths of the managed-VM and image API. PathVMs (wire.go) lists VMs and creates them.
const (
	PathImages = "/api/v1/images"
)

// PathVM is one VM (GET, PATCH the spec, DELETE), by its UUID or name.
func PathVM(ref string) string { return PathVMs + "/" + ref }

// PathVMAction is POST {"action": ...} (VMAction*).
func PathVMAction(ref string) string { return PathVMs + "/" + ref + "/actions" }

// PathVMConsole is GET of a VM's serial console output (text/plain, the last
// MaxConsoleBytes at least).
func PathVMConsole(ref string) string { return PathVMs + "/" + ref + "/console" }

// PathImage is one image (GET metadata, DELETE).
func PathImage(id string) string { return PathImages + "/" + id }

// Agent-channel paths (Authorization: Bearer <node_secret>).

// PathDesired is GET ?after=<generation>&wait=<seconds>: the node's desired VMs
// (NodeDesired). With after and wait it is a long-poll: the vDC answers as soon as the
// node's desired generation differs from after, or after wait seconds with the
// current one (at most MaxDesiredWait).
func PathDesired(nodeID string) string { return PathNodes + "/" + nodeID + "/desired" }

// PathNodeImage is GET of an image's bytes for a node that has a VM using it
// (Content-Length and the sha256 in NodeDesired; the node verifies it).
func PathNodeImage(nodeID, imageID string) string {
	return PathNodes + "/" + nodeID + "/images/" + imageID
}

// PathNodeConsole is PUT of a VM's serial console tail by its node (the raw bytes,
// application/octet-stream, at most MaxConsoleBytes: the newest bytes of the log).
func PathNodeConsole(nodeID, vmUUID string) string {
	return PathNodes + "/" + nodeID + "/vms/" + vmUUID + "/console"
}

// Limits.
const (
	MaxConsoleBytes = 64 << 10 // console tail a node sends and the vDC keeps per VM
	MaxDesiredWait  = 60       // seconds a desired long-poll may be held
	MaxVCPUs        = 256
	MinVMMemory     = 16 << 20 // 16 MiB: tiny test guests boot in that
	MaxVMDisks      = 16
	MaxVMNICs       = 8
	MaxDiskBytes    = 64 << 40 // 64 TiB
)

// Wanted power states (the operator's word).
const (
	WantedRunning = "running"
	WantedStopped = "stopped"
)

// Observed VM states as the vDC shows them next to the wanted state (docs/design.md
// §14). running, stopped, paused and crashed come from libvirt through the node;
// error carries a reason; unknown while the node is not ready or disconnected (never
// stopped); lost when the node no longer has it.
const (
	ObservedRunning = "running"
	ObservedStopped = "stopped"
	ObservedPaused  = "paused"
	ObservedCrashed = "crashed"
	ObservedError   = "error"
	ObservedUnknown = "unknown"
	ObservedLost    = "lost"
	ObservedPending = "pending" // created at the vDC, not yet reported by its node
)

// ObservedFromPower maps a libvirt power state (VM.PowerState) to an observed state.
func ObservedFromPower(power string) string {
	switch power {
	case PowerRunning, PowerBlocked, PowerShutdown:
		return ObservedRunning
	case PowerPaused, PowerPMSuspended:
		return ObservedPaused
	case PowerShutoff:
		return ObservedStopped
	case PowerCrashed:
		return ObservedCrashed
	}
	return ObservedUnknown
}

// Power actions (POST PathVMAction).
const (
	VMActionStart    = "start"     // wanted running
	VMActionStop     = "stop"      // wanted stopped: ACPI, then force after the timeout
	VMActionForceOff = "force-off" // wanted stopped at once
	VMActionReboot   = "reboot"    // ACPI reboot of a running VM
)

// Firmware kinds.
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// Boot devices (VMSpec.BootOrder).
const (
	BootDisk    = "disk"
	BootCDROM   = "cdrom"
	BootNetwork = "network"
)

// NetworkManagement is the one network a VM NIC can join today: the management
// bridge br0 of its node (docs/design.md §13).
const NetworkManagement = "management"

// Image formats.
const (
	ImageRaw   = "raw"
	ImageQCOW2 = "qcow2"
	ImageISO   = "iso"
)

// DefaultStopTimeoutSeconds is how long a stop waits for the guest's ACPI shutdown
// before it forces the VM off.
const DefaultStopTimeoutSeconds = 120

// DiskSpec is one disk of a VM: blank of SizeBytes, or a copy of image ImageID
// (SizeBytes then 0 for the image's own size, or larger to grow it).
type DiskSpec struct {
	SizeBytes int64  `json:"size_bytes,omitempty"`
	ImageID   string `json:"image_id,omitempty"`
}

// NICSpec is one network interface. MAC is assigned by the vDC when empty and stays
// the same for the VM's life.
type NICSpec struct {
	Network string `json:"network"` // NetworkManagement
	MAC     string `json:"mac,omitempty"`
}

// VMSpec is what an operator asks for. Node is empty for "let the vDC place it".
type VMSpec struct {
	Name        string     `json:"name"`
	VCPUs       int        `json:"vcpus"`
	MemoryBytes int64      `json:"memory_bytes"`
	Disks       []DiskSpec `json:"disks,omitempty"`
	CDROM       string     `json:"cdrom_image_id,omitempty"` // an ISO image attached as CD-ROM
	NICs        []NICSpec  `json:"nics,omitempty"`
	Firmware    string     `json:"firmware,omitempty"`   // FirmwareBIOS (default) or FirmwareUEFI
	BootOrder   []string   `json:"boot_order,omitempty"` // Boot*; default disk, cdrom, network
	// StopTimeoutSeconds bounds the ACPI shutdown of a stop; 0 means the default.
	StopTimeoutSeconds int `json:"stop_timeout_seconds,omitempty"`
}

// FieldError says which field of a spec is wrong; the vDC answers it with 400.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidVMName checks an RFC 1123 label: 1-63 of a-z, 0-9 and '-', not starting or
// ending with '-'.
func ValidVMName(name string) error {
	if !nameRE.MatchString(name) {
		return &FieldError{"name", fmt.Sprintf("%q is not an RFC 1123 label (1-63 lower-case letters, digits and '-', starting and ending with a letter or digit)", name)}
	}
	return nil
}

// ValidMAC checks a unicast MAC address in the 52:54:00 form libvirt prints.
func ValidMAC(mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 || strings.ToLower(mac) != hw.String() {
		return fmt.Errorf("%q is not a MAC address like 52:54:00:12:34:56", mac)
	}
	if hw[0]&1 != 0 {
		return fmt.Errorf("%s is a multicast address", mac)
	}
	return nil
}

// Validate checks what a spec can say on its own (images and nodes are the vDC's to
// check). The error is a *FieldError naming the first wrong field, like
// "disks[1].size_bytes: ...".
func (s *VMSpec) Validate() error {
	if err := ValidVMName(s.Name); err != nil {
		return err
	}
	if s.VCPUs < 1 || s.VCPUs > MaxVCPUs {
		return &FieldError{"vcpus", fmt.Sprintf("%d is not between 1 and %d", s.VCPUs, MaxVCPUs)}
	}
	if s.MemoryBytes < MinVMMemory || s.MemoryBytes%(1<<20) != 0 {
		return &FieldError{"memory_bytes", fmt.Sprintf("%d is not a whole number of MiB of at least %d MiB", s.MemoryBytes, MinVMMemory>>20)}
	}
	if len(s.Disks) > MaxVMDisks {
		return &FieldError{"disks", fmt.Sprintf("%d disks; at most %d", len(s.Disks), MaxVMDisks)}
	}
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		switch {
		case d.SizeBytes < 0 || d.SizeBytes > MaxDiskBytes:
			return &FieldError{f + ".size_bytes", fmt.Sprintf("%d is out of range", d.SizeBytes)}
		case d.SizeBytes%(1<<20) != 0:
			return &FieldError{f + ".size_bytes", fmt.Sprintf("%d is not a whole number of MiB", d.SizeBytes)}
		case d.ImageID == "" && d.SizeBytes == 0:
			return &FieldError{f, "needs size_bytes (a blank disk) or image_id (a copy of an image)"}
		}
	}
	if len(s.NICs) > MaxVMNICs {
		return &FieldError{"nics", fmt.Sprintf("%d NICs; at most %d", len(s.NICs), MaxVMNICs)}
	}
	for i, n := range s.NICs {
		f := fmt.Sprintf("nics[%d]", i)
		if n.Network != NetworkManagement {
			return &FieldError{f + ".network", fmt.Sprintf("unknown network %q (known: %s)", n.Network, NetworkManagement)}
		}
		if n.MAC != "" {
			if err := ValidMAC(n.MAC); err != nil {
				return &FieldError{f + ".mac", err.Error()}
			}
		}
	}
	switch s.Firmware {
	case "", FirmwareBIOS, FirmwareUEFI:
	default:
		return &FieldError{"firmware", fmt.Sprintf("%q is neither %s nor %s", s.Firmware, FirmwareBIOS, FirmwareUEFI)}
	}
	seen := map[string]bool{}
	for i, b := range s.BootOrder {
		switch b {
		case BootDisk, BootCDROM, BootNetwork:
		default:
			return &FieldError{fmt.Sprintf("boot_order[%d]", i), fmt.Sprintf("%q is not one of disk, cdrom, network", b)}
		}
		if seen[b] {
			return &FieldError{fmt.Sprintf("boot_order[%d]", i), fmt.Sprintf("%q appears twice", b)}
		}
		seen[b] = true
	}
	if s.StopTimeoutSeconds < 0 || s.StopTimeoutSeconds > 3600 {
		return &FieldError{"stop_timeout_seconds", fmt.Sprintf("%d is not between 0 and 3600", s.StopTimeoutSeconds)}
	}
	return nil
}

// ErrFieldError reports whether err names a field of a spec.
func ErrFieldError(err error) (*FieldError, bool) {
	var fe *FieldError
	ok := errors.As(err, &fe)
	return fe, ok
}

// Image is one image in the vDC's library (GET PathImages).
type Image struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Format    string `json:"format"` // ImageRaw, ImageQCOW2, ImageISO
	SizeBytes int64  `json:"size_bytes"`
	SHA256    string `json:"sha256"` // hex
	CreatedAt string `json:"created_at"`
	UsedBy    int    `json:"used_by"` // VMs whose spec names it
}

// ImageList is the body of GET PathImages.
type ImageList struct {
	Images []Image `json:"images"`
}

// DesiredImage is what a node needs to fetch an image (PathNodeImage) and verify it.
type DesiredImage struct {
	ID        string `json:"id"`
	Format    string `json:"format"`
	SizeBytes int64  `json:"size_bytes"`
	SHA256    string `json:"sha256"`
}

// DesiredVM is one VM its node must converge to.
type DesiredVM struct {
	UUID string `json:"uuid"` // also the libvirt domain UUID
	Spec VMSpec `json:"spec"` // NICs with their MACs filled in
	// Power is WantedRunning or WantedStopped. ForceStop asks for an immediate
	// power-off when Power is stopped (force-off); otherwise stop is ACPI, then
	// force after Spec.StopTimeoutSeconds.
	Power     string `json:"power"`
	ForceStop bool   `json:"force_stop,omitempty"`
	// RebootCount grows with every reboot action; a running VM whose last applied
	// count is lower is rebooted once (the agent keeps the count in the domain's
	// metadata, so an agent restart does not reboot it again).
	RebootCount int64 `json:"reboot_count"`
	// Generation is the VM's own generation (it grows with every change of it).
	Generation int64 `json:"generation"`
}

// DeletedVM is a VM the vDC deleted that its node may still have: the node stops
// and undefines it, and removes its disks unless KeepDisks.
type DeletedVM struct {
	UUID      string `json:"uuid"`
	KeepDisks bool   `json:"keep_disks,omitempty"`
}

// NodeDesired is the body of GET PathDesired: everything the vDC wants on one node at
// Generation. Domains of the node that carry Quantix's metadata but are neither in VMs
// nor in Deleted are left alone (never started) and reported.
type NodeDesired struct {
	Generation int64          `json:"generation"`
	VMs        []DesiredVM    `json:"vms"`
	Deleted    []DeletedVM    `json:"deleted,omitempty"`
	Images     []DesiredImage `json:"images,omitempty"` // every image a VM above uses
	// Upgrade is the release the node is to stage (and, with Activate, boot).
	Upgrade *DesiredUpgrade `json:"upgrade,omitempty"`
}

// VMCreate is the body of POST PathVMs: the spec, the node (its id or hostname;
// empty lets the vDC place the VM) and the wanted power state (WantedRunning when
// empty).
type VMCreate struct {
	VMSpec
	Node  string `json:"node,omitempty"`
	Power string `json:"power,omitempty"`
}

// VMActionRequest is the body of POST PathVMAction.
type VMActionRequest struct {
	Action string `json:"action"` // VMAction*
}

// ManagedVM is a VM the vDC created, its wanted state next to what its node
// observes (GET PathVM, and VMList.Managed).
type ManagedVM struct {
	UUID     string `json:"uuid"`
	Name     string `json:"name"`
	Spec     VMSpec `json:"spec"` // NICs with their MACs filled in
	Wanted   string `json:"wanted"`
	Observed string `json:"observed"` // Observed*
	// Error is the reason of ObservedError, or why the state is unknown or lost.
	Error     string `json:"error,omitempty"`
	ForceStop bool   `json:"force_stop,omitempty"`
	NodeID    string `json:"node_id"`
	Hostname  string `json:"hostname"`
	// Generation is the VM's last change; AppliedGeneration is what its node last
	// converged to. The change reached the node once AppliedGeneration >= Generation.
	Generation        int64     `json:"generation"`
	AppliedGeneration int64     `json:"applied_generation"`
	RebootCount       int64     `json:"reboot_count"`
	CreatedAt         time.Time `json:"created_at"`
	UpdatedAt         time.Time `json:"updated_at"`
}

// Converged says whether the node observes what the vDC wants.
func (v *ManagedVM) Converged() bool {
	return v.AppliedGeneration >= v.Generation && v.Observed == v.Wanted
}

// VMEvent is one entry of a managed VM's history.
type VMEvent struct {
	ID      int64     `json:"id"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// VMEventList is the body of GET PathVMEvents.
type VMEventList struct {
	Events []VMEvent `json:"events"`
}

// PathVMEvents is GET of a managed VM's history.
func PathVMEvents(ref string) string { return PathVMs + "/" + ref + "/events" }

// FormatBytes prints a size in binary units the way the vDC's messages do:
// "512 B", "1.5 KiB", "4 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	i := -1
	for f >= unit || f <= -unit {
		f /= unit
		i++
		if i == 5 {
			break
		}
	}
	s := fmt.Sprintf("%.1f", f)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + [...]string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}[i]
}
