package vm

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/images/spec"
	"github.com/quantix/quantix/services/network"
)

// The lab segment's usual addresses: a default hub (10.77.0.0/24, gateway .1, DHCP
// pool .100-.199) with the workstation at .2 and the node machine's NIC.
var (
	LabGateway      = netip.MustParseAddr("10.77.0.1")
	WorkstationAddr = netip.MustParsePrefix("10.77.0.2/24")
	WorkstationMAC  = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x02}
	NodeMAC         = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x20}
)

// RepoRoot is the folder holding go.mod, found upwards from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ISO returns the absolute path of out/<image>.iso in the repository (QUANTIX_OUT
// overrides the folder), the way every test finds the product's images; it fails t
// with the command that builds it when it is missing.
func ISO(t testing.TB, image string) string {
	t.Helper()
	out := os.Getenv("QUANTIX_OUT")
	if out == "" {
		root, err := RepoRoot()
		if err != nil {
			t.Fatalf("find the ISOs: %v", err)
		}
		out = filepath.Join(root, "out")
	}
	p, err := filepath.Abs(filepath.Join(out, image+".iso"))
	if err != nil {
		t.Fatalf("find the ISOs: %v", err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("%s: %v: run make iso (or go run ./images/cmd/qx-image build images/%s.toml)", p, err, image)
	}
	t.Logf("image %s: %s (%d MB, built %s)", image, p, fi.Size()>>20, fi.ModTime().UTC().Format(time.RFC3339))
	return p
}

// ConfigDisk writes a config disk labelled label (quantix.LabelConfig, or
// quantix.LabelInstall for the installer) holding files, as `qx-image config-disk`
// does: the way a USB stick carries a machine's configuration.
func ConfigDisk(t testing.TB, path, label string, files map[string][]byte) {
	t.Helper()
	if err := build.ConfigDisk(path, label, 0, files); err != nil {
		t.Fatal(err)
	}
}

// StaticNetwork is network.toml for a static address on the automatic interface,
// via LabGateway.
func StaticNetwork(addr netip.Prefix) string {
	return fmt.Sprintf(`interface = "auto"
mode = "static"

[static]
address = %q
gateway = %q
`, addr, LabGateway)
}

// DHCPNetwork is network.toml for DHCP with a first-lease timeout; fallback, when
// valid, is the static fallback address (via LabGateway).
func DHCPNetwork(timeout time.Duration, fallback netip.Prefix) string {
	s := fmt.Sprintf(`interface = "auto"
mode = "dhcp"

[dhcp]
timeout = %q
`, timeout)
	if fallback.IsValid() {
		s += fmt.Sprintf(`fallback = "static"

[static]
address = %q
gateway = %q
`, fallback, LabGateway)
	}
	return s
}

// NodeConfig is what a Quantix-OS node's config disk says.
type NodeConfig struct {
	Hostname string
	// Network is network.toml (see StaticNetwork, DHCPNetwork).
	Network string
	// VDC and JoinToken go to agent.toml.
	VDC       string
	JoinToken string
	// Identity, when set, is node/identity.toml: the node's existing identity
	// (kept when an operator edits the disk). Without it the agent creates one.
	Identity []byte
	// Files are further files (console/console.toml, ...), by path under /quantix.
	Files map[string][]byte
}

// NodeConfigDisk writes a node's QUANTIX-CFG disk: hostname, network.toml,
// agent.toml and the further files. network.toml and agent.toml are checked with
// the decoders of the services that read them, so a mistake fails here with the
// service's own message instead of a VM that never gets ready.
func NodeConfigDisk(t testing.TB, path string, c NodeConfig) {
	t.Helper()
	if _, err := network.Parse(c.Hostname+" network.toml", []byte(c.Network)); err != nil {
		t.Fatal(err)
	}
	ac := agent.FileConfig{ControlPlane: c.VDC, JoinToken: c.JoinToken}
	if err := ac.Validate(); err != nil {
		t.Fatalf("%s agent.toml: %v", c.Hostname, err)
	}
	var b strings.Builder
	b.WriteString("# Quantix lab node agent.\n")
	if err := toml.NewEncoder(&b).Encode(ac); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"hostname":             []byte(c.Hostname + "\n"),
		"network/network.toml": []byte(c.Network),
		"node/agent.toml":      []byte(b.String()),
	}
	if c.Identity != nil {
		files["node/identity.toml"] = c.Identity
	}
	for name, data := range c.Files {
		if _, ok := files[name]; ok {
			t.Fatalf("%s config disk: %s is made from the NodeConfig fields", c.Hostname, name)
		}
		files[name] = data
	}
	ConfigDisk(t, path, quantix.LabelConfig, files)
}

// ReadIdentity returns node/identity.toml from a (stopped) node's config disk, as
// the agent wrote it, read with debugfs from e2fsprogs.
func ReadIdentity(t testing.TB, disk string) ([]byte, agent.Identity) {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", "cat node/identity.toml", disk)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || len(out) == 0 {
		t.Fatalf("read node/identity.toml from %s: %v %s", disk, err, strings.TrimSpace(stderr.String()))
	}
	var id agent.Identity
	if err := quantix.DecodeTOML(disk+":node/identity.toml", out, &id); err != nil {
		t.Fatal(err)
	}
	if id.MachineID == "" || len(id.NodeSecret) != 64 {
		t.Fatalf("%s:node/identity.toml is incomplete: machine_id %q, node_secret of %d characters", disk, id.MachineID, len(id.NodeSecret))
	}
	return out, id
}

// AgentPort returns the port of the agents' status endpoint as the Quantix-OS image
// definition starts qx-node (--http-listen host:port), so the lab follows the image.
func AgentPort() (int, error) {
	root, err := RepoRoot()
	if err != nil {
		return 0, err
	}
	file := filepath.Join(root, "images", quantix.ImageQuantixOS+".toml")
	img, err := spec.Load(file)
	if err != nil {
		return 0, err
	}
	for _, svc := range img.Services {
		if svc.Name != "agent" {
			continue
		}
		for i, a := range svc.Args {
			var listen string
			switch {
			case a == "--http-listen" && i+1 < len(svc.Args):
				listen = svc.Args[i+1]
			case strings.HasPrefix(a, "--http-listen="):
				listen = strings.TrimPrefix(a, "--http-listen=")
			default:
				continue
			}
			_, port, err := net.SplitHostPort(listen)
			if err != nil {
				return 0, fmt.Errorf("%s: agent --http-listen %q: %w", file, listen, err)
			}
			var p int
			if _, err := fmt.Sscanf(port, "%d", &p); err != nil {
				return 0, fmt.Errorf("%s: agent --http-listen %q: bad port", file, listen)
			}
			return p, nil
		}
		return 0, fmt.Errorf("%s: the agent service has no --http-listen: the lab cannot read its status", file)
	}
	return 0, fmt.Errorf("%s: no service named agent", file)
}
