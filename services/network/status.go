package network

import "time"

// Status is what the service reports on its socket, in its state file and through
// `qx-net status`; the console and the test lab read it.
type Status struct {
	// Interface holds the management address: the bridge (br0 on Quantix-OS) or
	// the NIC itself. MAC is its MAC, the NIC's in both cases.
	Interface string `json:"interface"`
	MAC       string `json:"mac,omitempty"`
	// Port is the NIC under the bridge; empty when the address is on the NIC.
	Port string `json:"port,omitempty"`
	// Mode is the configured mode ("dhcp" or "static").
	Mode string `json:"mode"`
	// ConfigOrigin is the layer the settings came from (image default, kernel command
	// line, config file, runtime apply); ConfigSource names it (a path, the ip= value).
	ConfigOrigin string `json:"config_origin"`
	ConfigSource string `json:"config_source"`
	// Source of the address in place: static, dhcp, fallback, link-local or none.
	Source  string   `json:"source"`
	Address string   `json:"address,omitempty"` // with prefix length
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// Since is when the address in place was configured.
	Since time.Time `json:"since,omitzero"`
	// KernelAddresses and DefaultRoutes are read from the kernel when the status is
	// asked for, so they show the truth even if something else changed it.
	KernelAddresses []string `json:"kernel_addresses"`
	DefaultRoutes   []string `json:"default_routes"`

	DHCP         *DHCPStatus     `json:"dhcp,omitempty"`
	Pending      *PendingStatus  `json:"pending,omitempty"`
	LastRollback *RollbackStatus `json:"last_rollback,omitempty"`
	LastError    string          `json:"last_error,omitempty"`
	LastErrorAt  time.Time       `json:"last_error_at,omitzero"`
}

// DHCPStatus is the DHCP client's state and lease.
type DHCPStatus struct {
	State    string    `json:"state"` // init, selecting, requesting, bound, renewing, rebinding
	Timeout  string    `json:"first_lease_timeout"`
	Fallback string    `json:"fallback"`
	Server   string    `json:"server,omitempty"`
	Address  string    `json:"address,omitempty"`
	Router   string    `json:"router,omitempty"`
	Obtained time.Time `json:"obtained,omitzero"`
	T1       time.Time `json:"t1,omitzero"`
	T2       time.Time `json:"t2,omitzero"`
	Expiry   time.Time `json:"expiry,omitzero"`
	Renewals int       `json:"renewals"`
}

// PendingStatus is an applied configuration waiting for `qx-net confirm`.
type PendingStatus struct {
	Config   string    `json:"config"`
	Deadline time.Time `json:"deadline"`
	// Checked is true once the address is in place and reachability was checked.
	Checked          bool   `json:"checked"`
	GatewayReachable bool   `json:"gateway_reachable"`
	CheckError       string `json:"check_error,omitempty"`
}

// RollbackStatus describes the last rollback to the last good configuration.
type RollbackStatus struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
	To     string    `json:"to"`
	// Done is true once the restored configuration was verified (or failed to be).
	Done     bool   `json:"done"`
	Verified bool   `json:"verified"`
	Error    string `json:"error,omitempty"`
}
