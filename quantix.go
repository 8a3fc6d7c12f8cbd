// Package quantix holds the contracts every part of Quantix agrees on: partition
// labels, configuration paths, console markers, the agent<->vDC wire types, hostname
// rules, strict TOML decoding and atomic file writes.
//
// It is deliberately small and dependency-light: the agent, the vDC, the network
// service, init, the installer and the test lab all import it, so the two sides of
// every contract cannot drift (gokrazy keeps its process contract in its root package
// for the same reason).
package quantix

// Version is the Quantix release, stamped at build time with
// -ldflags "-X github.com/quantix/quantix.Version=...".
var Version = "dev"

// Partition and filesystem labels (GPT partition names and filesystem labels alike).
const (
	LabelEFI     = "QUANTIX-EFI"
	LabelConfig  = "QUANTIX-CFG"
	LabelData    = "QUANTIX-DATA"
	LabelInstall = "QUANTIX-INSTALL"
)

// Persistent configuration (QUANTIX-CFG, mounted at ConfigDir).
const (
	ConfigDir     = "/quantix"
	HostnameFile  = "/quantix/hostname"
	NetworkConfig = "/quantix/network/network.toml"
	AgentConfig   = "/quantix/node/agent.toml"
	IdentityFile  = "/quantix/node/identity.toml"
	NodeStateDir  = "/quantix/node"
	VDCConfig     = "/quantix/vdc/vdc.toml"
	VDCSecrets    = "/quantix/vdc/secrets.toml"
)

// Session, runtime and data locations.
const (
	DataDir    = "/var/lib/quantix" // QUANTIX-DATA
	SessionDir = "/etc/quantix"     // session copies of the configuration
	RunDir     = "/run/quantix"     // runtime sockets
	LogDir     = "/var/log/quantix" // service logs
	// VMConsoleDir holds the serial console logs of the node's VMs (one
	// <uuid>.log each). libvirtd opens them when it starts a guest, also when it
	// autostarts one at boot before the agent runs, so the libvirtd service makes
	// the folder.
	VMConsoleDir = LogDir + "/vms"
	// NetworkSocket is where the network service answers status and apply requests.
	NetworkSocket = "/run/quantix/network.sock"
)

// Image names, as used in boot markers and image definitions.
const (
	ImageQuantixOS = "quantix-os"
	ImageQvDC      = "qvdc"
)
