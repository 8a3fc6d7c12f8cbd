package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/services/initd"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/vdc/vdctest"
)

// The serial console VM test boots the real Quantix-OS ISO (out/quantix-os.iso, as
// `make iso` builds it) with the console on a second serial port, enabled the
// product's way: console.toml on the QUANTIX-CFG config disk. A real vDC (in this
// process, on a real PostgreSQL) answers on the lab segment at the workstation's
// address. An operator at the serial terminal unlocks the console, switches the
// management network from DHCP to static, keeps it, and the vDC sees the node's
// new address; then the operator reboots through the power screen, and the static
// address is back: on the console, in the network marker, and at the vDC under
// the same node_id.

// Lab settings.
const (
	vmHostname        = "console-vm"
	vmPassword        = "s3cret-console"
	vmVDCPort         = 8080
	vmHeartbeat       = 2 * time.Second
	vmBootTimeout     = 3 * time.Minute
	vmLatencyPresses  = 30
	vmSerialPort      = "ttyS1"
	vmSerialBaud      = 115200
	vmSerialService   = "console-serial"
	vmStaticHostIndex = 50 // the static address: .50, outside the hub's DHCP pool
)

// nodeConfigDisk writes the node's QUANTIX-CFG disk: hostname, network.toml
// (DHCP), agent.toml (the lab vDC and its join token), the console password as
// the installer stores it, and console.toml (the console on the second serial
// port), checked with qx-init's own reader.
func nodeConfigDisk(t *testing.T, path, vdcURL, joinToken string) {
	t.Helper()
	hash, err := console.HashPassword(vmPassword)
	if err != nil {
		t.Fatal(err)
	}
	vm.NodeConfigDisk(t, path, vm.NodeConfig{
		Hostname:  vmHostname,
		Network:   vm.DHCPNetwork(10*time.Second, netip.Prefix{}),
		VDC:       vdcURL,
		JoinToken: joinToken,
		Files: map[string][]byte{
			"console/password":     []byte(hash + "\n"),
			"console/console.toml": []byte(serialConsoleToml(t)),
		},
	})
}

// serialConsoleToml is /quantix/console/console.toml asking for the console on the
// second serial port, checked by qx-init's own reader (with an empty kernel
// command line: the ISO's boot entry sets no quantix.console).
func serialConsoleToml(t *testing.T) string {
	t.Helper()
	data := fmt.Sprintf("# The console UI on the second serial port too.\nserial = %q\nbaud = %d\n", vmSerialPort, vmSerialBaud)
	path := filepath.Join(t.TempDir(), "console.toml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := initd.ChooseSerialConsole(path, quantix.ParseCmdline(""))
	if err != nil || sc.TTY != vmSerialPort || sc.Baud != vmSerialBaud {
		t.Fatalf("console.toml: init reads %+v, %v; want %s at %d baud", sc, err, vmSerialPort, vmSerialBaud)
	}
	return data
}

// vdcNode polls the vDC until node id has the management address want, and
// returns the row. Exactly one node may carry the lab hostname.
func vdcNode(t *testing.T, v *vdctest.VDC, id, want string, timeout time.Duration) quantix.Node {
	t.Helper()
	deadline := time.Now().Add(vm.ScaleTimeout(timeout))
	for {
		var mine []quantix.Node
		for _, n := range v.Nodes(t) {
			if n.Hostname == vmHostname {
				mine = append(mine, n)
			}
		}
		if len(mine) > 1 {
			t.Fatalf("the vDC lists %d nodes named %s, want one: %+v", len(mine), vmHostname, mine)
		}
		if len(mine) == 1 && mine[0].ID != id {
			t.Fatalf("the vDC lists %s as node_id %s, want %s (the node must keep its identity)", vmHostname, mine[0].ID, id)
		}
		if len(mine) == 1 && mine[0].ManagementIP == want {
			return mine[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the vDC does not see node %s at %s after %v; it lists %+v", id, want, vm.ScaleTimeout(timeout), mine)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// statusRow is a row of the status and confirm screens, as the console draws it.
func statusRow(label, value string) string { return fmt.Sprintf("%-13s %s", label, value) }

// waitBoot waits for init to take the serial console from console.toml and for
// the ready markers of the network, the agent and the serial console, in any
// order, and returns the network's and the agent's. A warning marker of the serial
// console (init refused console.toml) fails at once.
func waitBoot(t *testing.T, m *vm.Machine) (netMk, agentMk quantix.Marker) {
	t.Helper()
	lines := m.ExpectAll(t, vmBootTimeout,
		vm.Contains(fmt.Sprintf("init: serial console on /dev/%s at %d baud (from %s)", vmSerialPort, vmSerialBaud, initd.ConsoleConfig)),
		vm.MatchMarker(quantix.MarkerReady, "service", "network"),
		vm.MatchMarker(quantix.MarkerReady, "service", "agent"),
		vm.MatchRegexp(`QUANTIX: (ready|warning) service=`+vmSerialService+` `))
	if mk, _ := quantix.ParseMarker(lines[3]); mk.Kind != quantix.MarkerReady || mk.Get("tty") != "/dev/"+vmSerialPort {
		t.Fatalf("no console on %s: %s", vmSerialPort, lines[3])
	}
	netMk, _ = quantix.ParseMarker(lines[1])
	agentMk, _ = quantix.ParseMarker(lines[2])
	return netMk, agentMk
}

func TestVMSerialConsoleStaticAtVDC(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
	start := time.Now()
	iso := vm.ISO(t, quantix.ImageQuantixOS)
	arts := vm.ArtifactDir(t)

	// The vDC: real PostgreSQL, the service qx-vdc runs, its log an artifact.
	vdcLog, err := os.Create(filepath.Join(arts, "vdc.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vdcLog.Close() })
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: vmHeartbeat, Log: vdcLog})

	// The lab segment: the hub (gateway, DHCP) and the workstation carrying the vDC.
	hub := vm.NewHub(t, vm.HubConfig{})
	ws := vm.NewWorkstation(t, hub, vm.WorkstationMAC, vm.WorkstationAddr)
	vdcURL := serveOnWorkstation(t, ws, vmVDCPort, v.AgentURL) // the agent port, TLS with the pin

	subnet, gw := hub.Config().Subnet, hub.Gateway()
	staticIP := subnet.Addr()
	for range vmStaticHostIndex {
		staticIP = staticIP.Next()
	}
	static := netip.PrefixFrom(staticIP, subnet.Bits())

	dir := t.TempDir()
	cfgDisk := filepath.Join(dir, "cfg.img")
	nodeConfigDisk(t, cfgDisk, vdcURL, v.JoinToken)

	serial := filepath.Join(shortDir(t), "ttyS1.sock")
	// One VM: Start takes one of the machine-wide slots (no Reserve needed) and,
	// as the VM never powers off, keeps it until the test ends.
	m := vm.Start(t, vm.Config{
		Name:  "node",
		ISO:   iso,
		Disks: []vm.Disk{{Path: cfgDisk}},
		NICs:  []vm.NIC{{Hub: hub, MAC: vm.NodeMAC}},
		// The reboot through the power screen restarts the guest inside the same
		// QEMU: the serial socket stays connected and the VM keeps its slot.
		AllowReboot: true,
		Devices:     []vm.Device{vm.SerialSocket{ID: "ttyS1", Path: serial}},
	})
	st := dialSerial(t, m, serial, filepath.Join(arts, "node.ttyS1.log"))

	// First boot: DHCP, registered at the vDC with the lease's address.
	netMk, agentMk := waitBoot(t, m)
	booted := time.Since(start)
	lease, err := netip.ParsePrefix(netMk.Get("addr"))
	if netMk.Get("source") != "dhcp" || err != nil || !subnet.Contains(lease.Addr()) {
		t.Fatalf("network ready with %s, want a DHCP lease in %s", netMk, subnet)
	}
	nodeID := agentMk.Get("node_id")
	if agentMk.Get("registration") != quantix.RegistrationRegistered || nodeID == "" {
		t.Fatalf("agent ready with %s, want a new registration", agentMk)
	}
	n := vdcNode(t, v, nodeID, lease.Addr().String(), time.Minute)
	t.Logf("booted and registered as %s at %s (DHCP) after %s", n.ID, n.ManagementIP, booted.Round(time.Second))

	st.redraw(t, time.Minute,
		statusRow("Address", lease.String()+"  source dhcp  (mode dhcp)"),
		statusRow("Node ID", nodeID), "[locked]")

	// Unlock with the console password; the network screen opens.
	st.send(t, "n")
	st.waitFor(t, 30*time.Second, "This needs the console password.")
	st.send(t, vmPassword, keyEnter)
	st.waitFor(t, time.Minute, "[unlocked]", "Management network on interface", "> Mode            (*) DHCP")

	// Key press to screen update over the serial line: Tab moves the focus through
	// the five fields of the form and changes nothing.
	focus := []string{"> Mode            ", "> Address/prefix  ", "> Gateway         ", "> DNS servers     ", "> < Apply >"}
	var lat []time.Duration
	for i := 1; i <= vmLatencyPresses; i++ {
		lat = append(lat, st.timedKey(t, "\t", focus[i%len(focus)], 30*time.Second))
	}
	t.Logf("key press to screen update over %s at %d baud under %s: %s", vmSerialPort, vmSerialBaud, m.Accel(), latencySummary(lat))
	if vmLatencyPresses%len(focus) != 0 {
		t.Fatal("the latency loop must end on the mode field")
	}

	// DHCP -> static. Arrow keys are escape sequences a slow serial line may split
	// across reads; the console must still see them as keys.
	st.send(t, " ")
	st.waitFor(t, 10*time.Second, "> Mode            ( ) DHCP   (*) Static")
	st.send(t, keyDown, keyClear, static.String(), keyDown, keyClear, gw.String(), keyDown, keyClear, keyDown)
	st.waitFor(t, 10*time.Second, "> < Apply >", "Address/prefix  ["+static.String()+"]", "Gateway         ["+gw.String()+"]")
	applied := time.Now()
	st.send(t, keyEnter)
	st.waitFor(t, 2*time.Minute, "The new settings are active.",
		statusRow("Address", static.String()+"  source static"), statusRow("Reachable", "yes"))
	st.send(t, "y")
	st.waitFor(t, time.Minute, "Network settings kept and saved to network.toml.",
		statusRow("Address", static.String()+"  source static  (mode static)"))

	// The vDC sees the node at its new address: same node, one row.
	n = vdcNode(t, v, nodeID, staticIP.String(), time.Minute)
	t.Logf("the vDC listed %s at %s %s after the apply key (the confirmation included)", n.ID, n.ManagementIP, time.Since(applied).Round(100*time.Millisecond))
	wantMove := fmt.Sprintf("management_ip %s -> %s", lease.Addr(), staticIP)
	if !hasEvent(v.NodeEvents(t, nodeID), "management_ip", wantMove, time.Time{}) {
		t.Errorf("the vDC recorded no event %q for %s: %+v", wantMove, nodeID, v.NodeEvents(t, nodeID))
	}

	restartLibvirtd(t, st, v, nodeID)

	// Reboot through the power screen (still unlocked): init stops the services and
	// reboots; QUANTIX-CFG brings the static address back.
	st.send(t, "p")
	st.waitFor(t, 30*time.Second, "r  Reboot: stop every service cleanly")
	st.send(t, "r")
	st.waitFor(t, 30*time.Second, "Really reboot this machine now?")
	rebooted := time.Now()
	st.send(t, "y")
	// init's own log lines: the services stop, QUANTIX-CFG is unmounted, then the
	// reboot; a crash or a reset would not say this.
	m.ExpectAll(t, time.Minute,
		vm.MatchRegexp(`msg="stopping services" .*then=reboot`),
		vm.MatchRegexp(`msg=unmounted .*dir=`+quantix.ConfigDir+`( |$)`),
		vm.MatchRegexp(`msg=halting .*action=reboot`))
	m.WaitMarker(t, quantix.MarkerBoot, 2*time.Minute, "image", quantix.ImageQuantixOS)
	netMk, agentMk = waitBoot(t, m)
	if netMk.Get("addr") != static.String() || netMk.Get("source") != "static" {
		t.Fatalf("after the reboot the network is %s, want %s source=static", netMk, static)
	}
	if agentMk.Get("node_id") != nodeID || agentMk.Get("registration") != quantix.RegistrationReregistered {
		t.Fatalf("after the reboot the agent is %s, want node_id=%s registration=%s", agentMk, nodeID, quantix.RegistrationReregistered)
	}
	st.redraw(t, time.Minute,
		statusRow("Address", static.String()+"  source static  (mode static)"),
		statusRow("Node ID", nodeID), "[locked]")

	// At the vDC: the same node, at the static address, re-registered from it after
	// the reboot and heartbeating again.
	n = vdcNode(t, v, nodeID, staticIP.String(), time.Minute)
	if !hasEvent(v.NodeEvents(t, nodeID), quantix.RegistrationReregistered, "from "+staticIP.String(), rebooted) {
		t.Errorf("the vDC recorded no re-registration from %s after the reboot: %+v", staticIP, v.NodeEvents(t, nodeID))
	}
	// Two heartbeats after the reboot, both from the static address.
	var beats []time.Time
	hbDeadline := time.Now().Add(vm.ScaleTimeout(6 * vmHeartbeat))
	for len(beats) < 2 {
		n = v.Node(t, nodeID)
		if n.ManagementIP != staticIP.String() {
			t.Fatalf("after the reboot the vDC lists %s at %s, want %s", nodeID, n.ManagementIP, staticIP)
		}
		if hb := n.LastHeartbeat; hb != nil && hb.After(rebooted) && (len(beats) == 0 || hb.After(beats[len(beats)-1])) {
			beats = append(beats, *hb)
		}
		if time.Now().After(hbDeadline) {
			t.Fatalf("the vDC got %d heartbeats from %s after the reboot, want 2 within %v: %+v", len(beats), nodeID, vm.ScaleTimeout(6*vmHeartbeat), n)
		}
		time.Sleep(vmHeartbeat / 4)
	}
	if n.Phase != quantix.PhaseReady {
		t.Errorf("after the reboot node %s is %s at the vDC, want ready", nodeID, n.Phase)
	}
	t.Logf("rebooted and back at the vDC as %s at %s (%s), %s after the reboot key; whole test %s",
		n.ID, n.ManagementIP, n.Phase, time.Since(rebooted).Round(time.Second), time.Since(start).Round(time.Second))
}

// restartLibvirtd restarts libvirtd from the services screen, as an operator
// would: init stops it (SIGTERM, then SIGKILL after the grace) and starts it again.
// The agent loses libvirt and reports it at once, so the vDC records the hypervisor
// unavailable with the reason, then available again once the new libvirtd answers.
// (libvirtd killed outright, and a guest surviving it, is services/libvirtd's
// TestServiceKeepsGuestsAcrossRestarts on the host.)
func restartLibvirtd(t *testing.T, st *serialTerm, v *vdctest.VDC, nodeID string) {
	t.Helper()
	// The restart must find the hypervisor up: libvirtd starts after
	// boot-complete and is ready only once libvirt runs QEMU (its first
	// capabilities probe takes a while under nested emulation).
	for deadline := time.Now().Add(vm.ScaleTimeout(3 * time.Minute)); v.Node(t, nodeID).Hypervisor.State != quantix.HypervisorAvailable; {
		if time.Now().After(deadline) {
			t.Fatalf("the vDC never showed the hypervisor available before the restart: %+v", v.Node(t, nodeID).Hypervisor)
		}
		time.Sleep(500 * time.Millisecond)
	}
	st.send(t, "s")
	st.waitFor(t, 30*time.Second, "Up/Down select  r Restart")
	for i := 0; ; i++ {
		if _, err := st.await(vm.ScaleTimeout(5*time.Second), "> libvirtd "); err == nil {
			break
		} else if i == 8 {
			t.Fatalf("the services screen never selected libvirtd: %v", err)
		}
		st.send(t, keyDown)
	}
	st.send(t, "r")
	st.waitFor(t, 10*time.Second, "Restart libvirtd? y = yes")
	restarted := time.Now()
	st.send(t, "y")
	st.waitFor(t, 2*time.Minute, "Restart libvirtd: done.")
	t.Logf("libvirtd restarted from the console in %s", time.Since(restarted).Round(100*time.Millisecond))

	down, up := "hypervisor available -> unavailable: ", "hypervisor unavailable -> available"
	deadline := time.Now().Add(vm.ScaleTimeout(time.Minute))
	for {
		evs := v.NodeEvents(t, nodeID)
		if hasEvent(evs, "hypervisor", down, restarted) && hasEvent(evs, "hypervisor", up, restarted) {
			for _, e := range evs {
				if e.Kind == "hypervisor" && !e.At.Before(restarted) {
					t.Logf("vDC event %s: %s", e.At.Sub(restarted).Round(100*time.Millisecond), e.Message)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the libvirtd restart the vDC recorded no %q with a reason and %q: %+v", down, up, evs)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if h := v.Node(t, nodeID).Hypervisor; h.State != quantix.HypervisorAvailable {
		t.Errorf("after the libvirtd restart the hypervisor is %+v, want available", h)
	}
	st.send(t, keyEsc)
	st.waitFor(t, 30*time.Second, "u Upgrade  p Power")
}

// hasEvent reports whether events hold one of kind whose message contains msg, at
// or after since.
func hasEvent(events []quantix.NodeEvent, kind, msg string, since time.Time) bool {
	for _, e := range events {
		if e.Kind == kind && strings.Contains(e.Message, msg) && !e.At.Before(since) {
			return true
		}
	}
	return false
}
