package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
	"github.com/quantix/quantix/services/postgres"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/client"
)

// The QvDC on tests/vm's default hub segment (10.77.0.0/24, gateway .1, DHCP pool
// .100-.199), beside the workstation and the node machine of vm.
var (
	QvDCAddr = netip.MustParsePrefix("10.77.0.10/24")
	QvDCMAC  = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x10}
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
	// NodeDataSize is the node's QUANTIX-DATA disk: VM disks and libvirt's state.
	NodeDataSize    = 2 << 30
	PowerOffTimeout = 90 * time.Second
	APITimeout      = 60 * time.Second
)

// Lab is one QvDC on a hub with a workstation, and the node machine.
type Lab struct {
	Hub  *vm.Hub
	WS   *vm.Workstation
	VDC  *client.Client
	QvDC *vm.Machine
	// Node is the node machine, started by StartNode; NodeDisk is its config disk,
	// NodeData its data disk (an empty QUANTIX-DATA, as the installer leaves it).
	NodeData string
	Node     *vm.Machine
	NodeDisk string
	// QvDCFirstBoot is how long the QvDC took from QEMU start to an answering API.
	QvDCFirstBoot time.Duration
	// AgentCAPin is the pin of the QvDC's agent CA, from its ready marker: nodes join
	// with qx1.<AgentCAPin>.<JoinToken> over TLS.
	AgentCAPin string

	dir   string
	osISO string
}

// NewLab takes both VM slots, starts the hub and the workstation, boots the QvDC
// from a blank data disk and waits until its API answers.
func NewLab(t *testing.T) *Lab {
	t.Helper()
	vdcISO := vm.ISO(t, quantix.ImageQvDC)
	l := &Lab{osISO: vm.ISO(t, quantix.ImageQuantixOS), dir: t.TempDir()}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Fatalf("debugfs not found (reads the node identity off a config disk): run make deps (apt-get install e2fsprogs)")
	}
	vm.Reserve(t, 2)
	l.Hub = vm.NewHub(t, vm.HubConfig{})
	l.WS = vm.NewWorkstation(t, l.Hub, vm.WorkstationMAC, vm.WorkstationAddr)
	var err error
	l.VDC, err = client.New(client.Config{
		URL:        fmt.Sprintf("http://%s:%d", QvDCAddr.Addr(), VDCPort),
		Token:      AdminToken,
		HTTPClient: l.WS.HTTPClient(10 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}

	cfg := filepath.Join(l.dir, "qvdc-cfg.img")
	vm.ConfigDisk(t, cfg, quantix.LabelConfig, qvdcFiles(t))
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
	pin := mk.Get("agent_ca_pin")
	if !quantix.ValidPin(pin) {
		t.Fatalf("the vDC ready marker %v has no agent_ca_pin", mk)
	}
	if l.AgentCAPin != "" && l.AgentCAPin != pin {
		t.Errorf("the vDC's agent CA pin changed across a restart: %s, then %s (the CA lives in its database)", l.AgentCAPin, pin)
	}
	l.AgentCAPin = pin
	poll(t, "vDC /readyz through the workstation", APITimeout, func(ctx context.Context) (bool, string, error) {
		err := l.VDC.Readyz(ctx)
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
`, QvDCMAC, QvDCAddr, vm.LabGateway)
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

// nodeConfig completes c with the lab vDC's URL (TLS) and the join token with the
// vDC's agent CA pin.
func (l *Lab) nodeConfig(c vm.NodeConfig) vm.NodeConfig {
	c.VDC = fmt.Sprintf("https://%s:%d", QvDCAddr.Addr(), VDCPort)
	c.JoinToken = quantix.FormatJoinToken(l.AgentCAPin, JoinToken)
	return c
}

// WriteNodeDisk writes the node machine's config disk for c.
func (l *Lab) WriteNodeDisk(t testing.TB, c vm.NodeConfig) {
	t.Helper()
	vm.NodeConfigDisk(t, l.NodeDisk, l.nodeConfig(c))
}

// StartNode writes the node's config disk and boots the node machine the first
// time; t must be the test that owns the lab (the machine lives as long as it).
func (l *Lab) StartNode(t *testing.T, c vm.NodeConfig) {
	t.Helper()
	l.NodeDisk = filepath.Join(l.dir, "node-cfg.img")
	l.WriteNodeDisk(t, c)
	l.NodeData = filepath.Join(l.dir, "node-data.img")
	dataDisk(t, l.NodeData, NodeDataSize)
	var devs []vm.Device
	if vm.Accel(t) == vm.AccelTCG {
		devs = append(devs, vm.NoNestedVirt) // its guests are emulated too: tcg
	}
	l.Node = vm.Start(t, vm.Config{
		Name:    "node",
		ISO:     l.osISO,
		Devices: devs,
		Disks:   []vm.Disk{{Path: l.NodeDisk}, {Path: l.NodeData}}, // vda: QUANTIX-CFG, vdb: QUANTIX-DATA
		NICs:    []vm.NIC{{Hub: l.Hub, MAC: vm.NodeMAC}},
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
func (l *Lab) RebootNodeWith(t testing.TB, c vm.NodeConfig) {
	t.Helper()
	l.StopNode(t)
	l.WriteNodeDisk(t, c)
	l.BootNode(t)
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

// dataDisk makes a sparse disk image of size bytes holding an empty ext4 filesystem
// labelled QUANTIX-DATA, as the installer formats it on a real disk (a live
// Quantix-OS never formats a disk by itself).
func dataDisk(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", quantix.LabelData, path).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s (Debian package e2fsprogs: make deps)", path, err, out)
	}
}
