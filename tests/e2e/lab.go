// Package e2e is the Quantix end-to-end lab (issue 7, DESIGN §11): it boots the real
// QvDC and Quantix-OS ISOs in QEMU on one virtual L2 segment (tests/vm's hub, with
// its DHCP server, link cut and pcap), gives every VM its configuration on a
// QUANTIX-CFG config disk made by images/build (what `qx-image config-disk` writes),
// and checks the scenarios through the product's own APIs: the vDC's HTTP API with
// the admin token from the QvDC config disk, and the agents' status endpoints.
//
// The test process takes part in the segment as an operator's workstation
// (Workstation: a user-space TCP/IP stack on a hub port), so the vDC is reached at
// its real address on the management network.
//
// The lab keeps to two VMs at once (the machine-wide limit of tests/vm): the QvDC
// and one node "machine" whose config disk is swapped or edited between boots,
// as an operator moves USB sticks between servers. Distinct nodes are distinct
// config disks: hostname, network.toml, agent.toml and the identity the agent
// creates there.
package e2e

import (
	"context"
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
	"github.com/quantix/quantix/services/postgres"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/vdc"
)

// The lab network: tests/vm's default hub segment 10.77.0.0/24 with the hub at
// .1 (gateway, DHCP server handing out .100-.199).
var (
	Gateway         = netip.MustParseAddr("10.77.0.1")
	WorkstationAddr = netip.MustParsePrefix("10.77.0.2/24")
	QvDCAddr        = netip.MustParsePrefix("10.77.0.10/24")

	WorkstationMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x02}
	QvDCMAC        = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x10}
	NodeMAC        = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x20}
)

// Lab settings written to the config disks.
const (
	VDCPort = 8080
	UIPort  = 8443 // the vDC's HTTPS web UI (vdc.toml's default ui_listen)
	// HeartbeatInterval is short so that liveness scenarios are quick: ready while
	// the last heartbeat is at most 10 s old, disconnected beyond 15 s.
	HeartbeatInterval = 5 * time.Second
	JoinToken         = "e2e-lab-join-token-7f3c9a1d"
	AdminToken        = "e2e-lab-admin-token-5b8e2c4f0a9d"
)

// Timeouts, written for TCG on the 2-core reference machine (QUANTIX_VM_TIMEOUT_SCALE
// scales them, as every tests/vm wait).
const (
	QvDCBootTimeout = 300 * time.Second // first boot formats the data disk and runs initdb
	NodeBootTimeout = 180 * time.Second
	PowerOffTimeout = 90 * time.Second
	APITimeout      = 60 * time.Second
)

// Lab is one QvDC on a hub with a workstation, and the node machine.
type Lab struct {
	Hub  *vm.Hub
	WS   *Workstation
	VDC  *VDC
	QvDC *vm.Machine
	// Node is the node machine, started by StartNode; NodeDisk is its config disk.
	Node     *vm.Machine
	NodeDisk string
	// QvDCFirstBoot is how long the QvDC took from QEMU start to an answering API.
	QvDCFirstBoot time.Duration

	dir   string
	osISO string
}

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

// ISO returns out/<image>.iso (QUANTIX_OUT overrides the folder), failing t with the
// command that builds it when it is missing.
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
	p := filepath.Join(out, image+".iso")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("%s: %v: run make iso (or go run ./images/cmd/qx-image build images/%s.toml)", p, err, image)
	}
	t.Logf("image %s: %s (%d MB, built %s)", image, p, fi.Size()>>20, fi.ModTime().UTC().Format(time.RFC3339))
	return p
}

// NewLab takes both VM slots, starts the hub and the workstation, boots the QvDC
// from a blank data disk and waits until its API answers.
func NewLab(t *testing.T) *Lab {
	t.Helper()
	vdcISO := ISO(t, quantix.ImageQvDC)
	l := &Lab{osISO: ISO(t, quantix.ImageQuantixOS), dir: t.TempDir()}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Fatalf("debugfs not found (reads the node identity off a config disk): run make deps (apt-get install e2fsprogs)")
	}
	vm.Reserve(t, 2)
	l.Hub = vm.NewHub(t, vm.HubConfig{})
	l.WS = NewWorkstation(t, l.Hub, WorkstationMAC, WorkstationAddr)
	l.VDC = &VDC{
		Base:  fmt.Sprintf("http://%s:%d", QvDCAddr.Addr(), VDCPort),
		Token: AdminToken,
		HTTP:  l.WS.HTTPClient(10 * time.Second),
	}

	cfg := filepath.Join(l.dir, "qvdc-cfg.img")
	writeConfigDisk(t, cfg, qvdcFiles(t))
	data := filepath.Join(l.dir, "qvdc-data.img")
	if err := os.WriteFile(data, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, 2<<30); err != nil { // blank: the postgres service formats it
		t.Fatal(err)
	}
	l.QvDC = vm.Start(t, vm.Config{
		Name:     "qvdc",
		ISO:      vdcISO,
		Disks:    []vm.Disk{{Path: cfg}, {Path: data}}, // vda: QUANTIX-CFG, vdb: data
		NICs:     []vm.NIC{{Hub: l.Hub, MAC: QvDCMAC}},
		MemoryMB: 1536,
	})
	start := time.Now()
	l.WaitVDC(t, QvDCBootTimeout)
	l.QvDCFirstBoot = time.Since(start)
	return l
}

// WaitVDC waits for the vDC's ready marker and then for /readyz through the
// workstation; it returns the marker.
func (l *Lab) WaitVDC(t testing.TB, timeout time.Duration) quantix.Marker {
	t.Helper()
	mk := l.QvDC.WaitMarker(t, quantix.MarkerReady, timeout, "service", "vdc")
	poll(t, "vDC /readyz through the workstation", APITimeout, func(ctx context.Context) (bool, string, error) {
		err := l.VDC.Ready(ctx)
		return err == nil, "", err
	})
	return mk
}

// qvdcFiles is the QvDC config disk: static address on the hub, a blank data disk
// it may format, the lab's tokens and heartbeat interval.
func qvdcFiles(t testing.TB) map[string][]byte {
	t.Helper()
	net := fmt.Sprintf(`# QvDC lab network: static on the hub NIC.
interface = %q
mode = "static"

[static]
address = %q
gateway = %q
`, QvDCMAC, QvDCAddr, Gateway)
	vdcToml := fmt.Sprintf(`# QvDC lab vDC: preset tokens and a short heartbeat interval.
listen = ":%d"
heartbeat_interval = %q
join_tokens = [%q]
admin_token = %q
`, VDCPort, HeartbeatInterval, JoinToken, AdminToken)
	pg := `# QvDC lab PostgreSQL: the second virtio disk is blank at first boot.
data_device = "/dev/vdb"
format_blank_data = true
`
	// Check each file with the decoder of the service that reads it, so a mistake
	// here fails with the service's own message instead of a VM that never gets ready.
	if _, err := network.Parse("qvdc network.toml", []byte(net)); err != nil {
		t.Fatal(err)
	}
	vc := vdc.DefaultConfig()
	if err := quantix.DecodeTOML("qvdc vdc.toml", []byte(vdcToml), &vc); err != nil {
		t.Fatal(err)
	}
	if err := vc.Validate(); err != nil {
		t.Fatalf("qvdc vdc.toml: %v", err)
	}
	pc := postgres.DefaultConfig()
	if err := quantix.DecodeTOML("qvdc postgres.toml", []byte(pg), &pc); err != nil {
		t.Fatal(err)
	}
	if err := pc.Validate(); err != nil {
		t.Fatalf("qvdc postgres.toml: %v", err)
	}
	return map[string][]byte{
		"hostname":             []byte("qvdc-lab\n"),
		"network/network.toml": []byte(net),
		"vdc/vdc.toml":         []byte(vdcToml),
		"vdc/postgres.toml":    []byte(pg),
	}
}

// NodeConfig is what a node's config disk says.
type NodeConfig struct {
	Hostname string
	// Network is network.toml (see StaticNetwork, DHCPNetwork).
	Network string
	// Identity, when set, is node/identity.toml: the node's existing identity
	// (kept when an operator edits the disk). Without it the agent creates one.
	Identity []byte
}

// StaticNetwork is network.toml for a static address on the automatic interface.
func StaticNetwork(addr netip.Prefix) string {
	return fmt.Sprintf(`interface = "auto"
mode = "static"

[static]
address = %q
gateway = %q
`, addr, Gateway)
}

// DHCPNetwork is network.toml for DHCP with a first-lease timeout; fallback, when
// valid, is the static fallback address.
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
`, fallback, Gateway)
	}
	return s
}

// nodeFiles is a node's config disk: hostname, network.toml and agent.toml (vDC
// URL and join token).
func nodeFiles(t testing.TB, c NodeConfig) map[string][]byte {
	t.Helper()
	if _, err := network.Parse(c.Hostname+" network.toml", []byte(c.Network)); err != nil {
		t.Fatal(err)
	}
	ac := agent.FileConfig{
		ControlPlane: fmt.Sprintf("http://%s:%d", QvDCAddr.Addr(), VDCPort),
		JoinToken:    JoinToken,
	}
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
	return files
}

func writeConfigDisk(t testing.TB, path string, files map[string][]byte) {
	t.Helper()
	if err := build.ConfigDisk(path, quantix.LabelConfig, 0, files); err != nil {
		t.Fatal(err)
	}
}

// StartNode writes the node's config disk and boots the node machine the first
// time; t must be the test that owns the lab (the machine lives as long as it).
func (l *Lab) StartNode(t *testing.T, c NodeConfig) {
	t.Helper()
	l.NodeDisk = filepath.Join(l.dir, "node-cfg.img")
	writeConfigDisk(t, l.NodeDisk, nodeFiles(t, c))
	l.Node = vm.Start(t, vm.Config{
		Name:  "node",
		ISO:   l.osISO,
		Disks: []vm.Disk{{Path: l.NodeDisk}},
		NICs:  []vm.NIC{{Hub: l.Hub, MAC: NodeMAC}},
	})
}

// StopNode powers the node machine off cleanly (ACPI power button: init stops the
// agent and unmounts QUANTIX-CFG, pressed again until QEMU exits, see
// vm.Machine.PowerOff). A node that does not power off is an error; it is then
// killed so the lab can go on.
func (l *Lab) StopNode(t testing.TB) {
	t.Helper()
	if err := l.Node.AwaitPowerOff(t, PowerOffTimeout); err != nil {
		t.Error(err)
		l.Node.Kill(t)
	}
}

// BootNode boots the (stopped) node machine again with the config disk as it is.
// Console waits afterwards see only the new boot.
func (l *Lab) BootNode(t testing.TB) {
	t.Helper()
	l.Node.Restart(t)
	l.Node.Expect(t, "--- vmtest: starting node again ---", 10*time.Second)
}

// RebootNodeWith powers the node off, replaces its config disk and boots it.
func (l *Lab) RebootNodeWith(t testing.TB, c NodeConfig) {
	t.Helper()
	l.StopNode(t)
	writeConfigDisk(t, l.NodeDisk, nodeFiles(t, c))
	l.BootNode(t)
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

// poll calls f until it reports done, at most timeout (scaled like every lab wait),
// and returns how long it took. Each call gets a context bounded by a few seconds.
// On timeout it fails t with the last state and error f reported.
func poll(t testing.TB, what string, timeout time.Duration, f func(ctx context.Context) (done bool, state string, err error)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(vm.ScaleTimeout(timeout))
	var state string
	var err error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var done bool
		done, state, err = f(ctx)
		cancel()
		if done {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last state: %s; last error: %v", what, vm.ScaleTimeout(timeout), state, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
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
