package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/tests/vm"
)

// Node addresses of the scenarios (the hub's DHCP pool is .100-.199).
var (
	nodeAStatic   = netip.MustParsePrefix("10.77.0.21/24")
	nodeBStatic   = netip.MustParsePrefix("10.77.0.22/24")
	nodeAFallback = netip.MustParsePrefix("10.77.0.31/24")
	intruderAddr  = netip.MustParsePrefix("10.77.0.32/24")
)

const (
	hostA = "node-a"
	hostB = "node-b"
	// fallbackTimeout is dhcp.timeout in the fallback scenario.
	fallbackTimeout = 10 * time.Second
	// margin is what the lab allows on top of a product deadline for serial
	// console and API polling latency under TCG.
	margin = 5 * time.Second
)

// suite is the state the scenarios hand on: they run in sequence against one QvDC
// and one node machine, so that the whole suite boots as few VMs as possible.
type suite struct {
	lab *Lab

	aID    string
	aCfg   vm.NodeConfig
	aIface string
	aLease netip.Addr            // node-a's DHCP lease (scenario 6)
	aPool  quantix.InventoryPool // node-a's default pool (scenario 1c)
	rows   int                   // how many nodes the registry must hold now
	// The VM of scenario 1d (docs/design.md §14): its UUID and NIC MAC; ctlURL is
	// qx-ctl's way to the vDC (a proxy over the workstation).
	vmUUID string
	vmMAC  net.HardwareAddr
	ctlURL string

	times []timing
}

type timing struct {
	name string
	d    time.Duration
	ok   bool
}

// TestScenarios runs the lab scenarios (node registration, static and DHCP
// addresses, fallback, re-registration, a QvDC reboot, the identity guard, a
// second node) in order, each a named subtest:
//
//	go test ./tests/e2e -run TestScenarios -v -timeout 40m
//
// A later scenario builds on the state the earlier ones leave (node-a's identity
// and configuration), so run the suite whole.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QvDC and Quantix-OS in QEMU; skipped with -short")
	}
	start := time.Now()
	lab := NewLab(t)
	t.Logf("QvDC first boot (blank data disk) to an answering API: %v (guest uptime at boot-complete: %s s)",
		lab.QvDCFirstBoot.Round(100*time.Millisecond), uptimeAt(lab.QvDC, quantix.MarkerBootComplete))
	s := &suite{lab: lab}
	// qx-ctl reaches the vDC through the workstation, for the whole suite.
	s.ctlURL = "http://" + lab.WS.Proxy(t, fmt.Sprintf("%s:%d", QvDCAddr.Addr(), VDCPort))
	s.aCfg = vm.NodeConfig{Hostname: hostA, Network: vm.StaticNetwork(nodeAStatic)}
	lab.StartNode(t, s.aCfg)

	for _, sc := range []struct {
		name string
		f    func(t *testing.T)
	}{
		{"1-registered", s.registered},
		{"1b-hosts-page", s.hostsPage},
		{"1c-hypervisor", s.hypervisor},
		{"1d-vm", s.vmLifecycle},
		{"2-static-ip", s.staticIP},
		{"5-reregistration", s.reregistration},
		{"7-qvdc-reboot", s.qvdcReboot},
		{"7b-vm-delete", s.vmDelete},
		{"6-static-to-dhcp", s.staticToDHCP},
		{"3-dhcp", s.dhcp},
		{"4-dhcp-fallback", s.dhcpFallback},
		{"8-identity-guard", s.identityGuard},
		{"9-second-node", s.secondNode},
	} {
		t0 := time.Now()
		ok := t.Run(sc.name, sc.f)
		s.times = append(s.times, timing{sc.name, time.Since(t0), ok})
		if !ok && !s.vdcAnswers() {
			t.Errorf("the vDC no longer answers after %s failed: the remaining scenarios cannot run", sc.name)
			break
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "scenario times (%s, TCG unless noted):\n", lab.QvDC.Accel())
	for _, tm := range s.times {
		res := "ok"
		if !tm.ok {
			res = "FAIL"
		}
		fmt.Fprintf(&b, "  %-20s %6.1fs  %s\n", tm.name, tm.d.Seconds(), res)
	}
	fmt.Fprintf(&b, "  %-20s %6.1fs\n", "QvDC first boot", lab.QvDCFirstBoot.Seconds())
	fmt.Fprintf(&b, "  %-20s %6.1fs", "total", time.Since(start).Seconds())
	t.Log(b.String())
}

// vdcAnswers reports whether the vDC's /readyz answers within half a minute.
func (s *suite) vdcAnswers() bool {
	deadline := time.Now().Add(vm.ScaleTimeout(30 * time.Second))
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.lab.VDC.Readyz(ctx)
		cancel()
		if err == nil {
			return true
		}
		time.Sleep(time.Second)
	}
	return false
}

// uptimeAt returns the seconds field of the last marker of kind on m's console.
func uptimeAt(m *vm.Machine, kind string) string {
	ls := m.Find(vm.MatchMarker(kind))
	if len(ls) == 0 {
		return "?"
	}
	mk, _ := quantix.ParseMarker(ls[len(ls)-1])
	return mk.Get("seconds")
}

// bootMarkers waits for the network and agent ready markers of a node boot (in
// either order) and returns them parsed.
func bootMarkers(t *testing.T, m *vm.Machine) (netMk, agentMk quantix.Marker) {
	t.Helper()
	ls := m.ExpectAll(t, NodeBootTimeout,
		vm.MatchMarker(quantix.MarkerReady, "service", "network"),
		vm.MatchMarker(quantix.MarkerReady, "service", "agent"))
	netMk, _ = quantix.ParseMarker(ls[0])
	agentMk, _ = quantix.ParseMarker(ls[1])
	t.Logf("node: %s", netMk)
	t.Logf("node: %s", agentMk)
	return netMk, agentMk
}

// waitNode polls the vDC until the one row of hostname satisfies ok. Two rows for
// a hostname, or more rows in all than the scenario expects, fail at once: there
// is no waiting out a duplicate.
func (s *suite) waitNode(t *testing.T, what, hostname string, timeout time.Duration, ok func(quantix.Node) bool) (quantix.Node, time.Duration) {
	t.Helper()
	var got quantix.Node
	d := poll(t, what, timeout, func(ctx context.Context) (bool, string, error) {
		nodes, err := s.lab.VDC.Nodes(ctx)
		if err != nil {
			return false, "", err
		}
		rows := byHostname(nodes, hostname)
		if len(rows) > 1 || len(nodes) > s.rows {
			t.Fatalf("%s: the registry holds duplicate or extra rows (want %d in all, one per hostname): %s", what, s.rows, describeNodes(nodes))
		}
		if len(rows) == 0 {
			return false, describeNodes(nodes), nil
		}
		got = rows[0]
		return ok(got), describeNodes(nodes), nil
	})
	return got, d
}

func (s *suite) agentStatus(t *testing.T, addr netip.Addr) agent.Status {
	t.Helper()
	port, err := vm.AgentPort()
	if err != nil {
		t.Fatal(err)
	}
	var st agent.Status
	poll(t, "agent status at "+addr.String(), APITimeout, func(ctx context.Context) (bool, string, error) {
		var err error
		st, err = AgentStatus(ctx, s.lab.WS.HTTPClient(5*time.Second), fmt.Sprintf("%s:%d", addr, port))
		return err == nil, "", err
	})
	return st
}

func (s *suite) needNodeA(t *testing.T) {
	t.Helper()
	if s.aID == "" {
		t.Fatal("node-a never registered (scenario 1 failed); the later scenarios build on it")
	}
}

// 1. QvDC and one node boot; the node registers (`registered`) and the vDC lists it
// as `ready` with the right management IP.
func (s *suite) registered(t *testing.T) {
	m := s.lab.Node
	netMk, agentMk := bootMarkers(t, m)
	if got := agentMk.Get("registration"); got != quantix.RegistrationRegistered {
		t.Fatalf("agent registration = %q, want %q (a fresh registry and a new node)", got, quantix.RegistrationRegistered)
	}
	s.aID, s.aIface = agentMk.Get("node_id"), netMk.Get("iface")
	s.rows = 1
	if got := netMk.Get("addr"); got != nodeAStatic.String() {
		t.Errorf("network marker addr = %q, want %s", got, nodeAStatic)
	}
	n, d := s.waitNode(t, "node-a ready in the vDC", hostA, APITimeout, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady
	})
	t.Logf("vDC lists node-a ready %v after the agent's marker", d.Round(100*time.Millisecond))
	if n.ID != s.aID {
		t.Errorf("vDC node id = %s, the agent says %s", n.ID, s.aID)
	}
	if n.ManagementIP != nodeAStatic.Addr().String() {
		t.Errorf("vDC management_ip = %q, want %s", n.ManagementIP, nodeAStatic.Addr())
	}
	if n.MachineID == "" || n.AgentVersion == "" || n.RegisteredAt.IsZero() {
		t.Errorf("vDC row lacks machine_id, agent_version or registered_at: %+v", n)
	}
	if n.HeartbeatInterval != int(HeartbeatInterval/time.Second) {
		t.Errorf("vDC heartbeat_interval_seconds = %d, want the lab's %d", n.HeartbeatInterval, int(HeartbeatInterval/time.Second))
	}
	mk := m.WaitMarker(t, quantix.MarkerBootComplete, NodeBootTimeout)
	t.Logf("node-a: boot-complete at %s s guest uptime; hypervisor %s", mk.Get("seconds"), n.Hypervisor.State)
}

// 2. Static IP: the vDC shows exactly the configured address, and the node's
// network state holds one default route via the gateway on the interface.
//
// The node's network status socket is not reachable from outside, so the proof is
// threefold: the network service's "network configured" console line, which it logs
// only after reading the kernel back (exactly the address on the interface, every
// other default route deleted, one default via the gateway on it; a mismatch is an
// error, not this line); the agent's /status (through the workstation), which finds
// its management address on the interface holding the default route; and the vDC's
// management_ip. The hub must not have seen a DHCP request from the node.
func (s *suite) staticIP(t *testing.T) {
	s.needNodeA(t)
	m := s.lab.Node
	want := "static " + nodeAStatic.String() + " via " + vm.LabGateway.String()
	lines := m.Find(vm.Contains("network configured"))
	found := false
	for _, l := range lines {
		if strings.Contains(l, want) && strings.Contains(l, "iface="+s.aIface) {
			found = true
		}
		if !strings.Contains(l, want) {
			t.Errorf("network configured something else than %q: %s", want, l)
		}
	}
	if !found {
		t.Errorf("no console line says the network service verified %q on %s; lines: %q", want, s.aIface, lines)
	}
	st := s.agentStatus(t, nodeAStatic.Addr())
	if st.Management.IP != nodeAStatic.Addr().String() || st.Management.Interface != s.aIface || st.Management.Source != agent.SourceDefaultRoute {
		t.Errorf("agent management = %+v, want ip %s on %s found through the default route (%s)",
			st.Management, nodeAStatic.Addr(), s.aIface, agent.SourceDefaultRoute)
	}
	if st.NodeID != s.aID || st.State != agent.StateRegistered {
		t.Errorf("agent status node_id %s state %s, want %s %s", st.NodeID, st.State, s.aID, agent.StateRegistered)
	}
	n, _ := s.waitNode(t, "node-a in the vDC", hostA, APITimeout, func(quantix.Node) bool { return true })
	if n.ManagementIP != nodeAStatic.Addr().String() {
		t.Errorf("vDC management_ip = %q, want exactly %s", n.ManagementIP, nodeAStatic.Addr())
	}
	if l, ok := s.lab.Hub.Lease(vm.NodeMAC); ok {
		t.Errorf("a static node asked the hub for DHCP: %s", l)
	}
}

// 5. Re-registration: a QMP reset brings node-a back `reregistered` with the same
// node_id and one row; a cut link longer than the disconnect time makes it
// `disconnected`; healed, it is `ready` again with the same node_id.
func (s *suite) reregistration(t *testing.T) {
	s.needNodeA(t)
	m := s.lab.Node
	before, _ := s.waitNode(t, "node-a before the reset", hostA, APITimeout, func(quantix.Node) bool { return true })
	t0 := time.Now()
	m.Reboot(t)
	m.Expect(t, "--- vmtest: starting node again ---", 10*time.Second)
	_, agentMk := bootMarkers(t, m)
	if agentMk.Get("registration") != quantix.RegistrationReregistered || agentMk.Get("node_id") != s.aID {
		t.Fatalf("after the reset: %s, want registration=%s node_id=%s", agentMk, quantix.RegistrationReregistered, s.aID)
	}
	n, _ := s.waitNode(t, "node-a ready after the reset", hostA, APITimeout, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady
	})
	t.Logf("reset to reregistered and ready: %v", time.Since(t0).Round(100*time.Millisecond))
	if n.ID != s.aID || !n.RegisteredAt.Equal(before.RegisteredAt) || n.MachineID != before.MachineID {
		t.Errorf("row changed across the reset: before %+v, after %+v", before, n)
	}
	s.hypervisorAfterReset(t)

	m.CutLink()
	cut := time.Now()
	_, d := s.waitNode(t, "node-a disconnected with its link cut", hostA, 3*HeartbeatInterval+40*time.Second, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseDisconnected
	})
	t.Logf("link cut to disconnected: %v (3 intervals = %v after the last heartbeat)", d.Round(100*time.Millisecond), 3*HeartbeatInterval)
	if d < 2*HeartbeatInterval-margin/2 {
		t.Errorf("disconnected %v after the cut: sooner than the liveness rule allows (3 intervals after the last heartbeat)", d)
	}
	m.HealLink()
	n, d = s.waitNode(t, "node-a ready with its link healed", hostA, 2*HeartbeatInterval+40*time.Second, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady
	})
	t.Logf("link healed to ready: %v (cut for %v)", d.Round(100*time.Millisecond), time.Since(cut).Round(time.Second))
	if n.ID != s.aID {
		t.Errorf("node id after the healed link = %s, want %s", n.ID, s.aID)
	}
	if ev, err := s.lab.VDC.NodeEvents(context.Background(), s.aID); err != nil {
		t.Errorf("node events: %v", err)
	} else {
		t.Logf("node-a events: %s", describeEvents(ev))
	}
}

// 7. QvDC reboot: the registry survives on the data disk, node-a keeps its node_id,
// its heartbeats resume, and there are no duplicate rows.
func (s *suite) qvdcReboot(t *testing.T) {
	s.needNodeA(t)
	q, node := s.lab.QvDC, s.lab.Node
	before, _ := s.waitNode(t, "node-a before the QvDC reboot", hostA, APITimeout, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady
	})
	nodeLines := len(node.Lines())
	t0 := time.Now()
	q.PowerDown(t)
	if err := q.WaitExit(t, PowerOffTimeout); err != nil {
		t.Errorf("QvDC power-off: QEMU exit %v", err)
	}
	t.Logf("QvDC clean power-off: %v", time.Since(t0).Round(100*time.Millisecond))
	s.vmAfterNodeReboot(t) // node-a resets while the vDC is off; its VM comes back by itself
	q.Restart(t)
	q.Expect(t, "--- vmtest: starting qvdc again ---", 10*time.Second)
	t1 := time.Now()
	s.lab.WaitVDC(t, QvDCBootTimeout)
	t.Logf("QvDC second boot to vDC ready: %v (guest uptime at boot-complete: %s s)", time.Since(t1).Round(100*time.Millisecond), uptimeAt(q, quantix.MarkerBootComplete))
	for _, l := range q.Find(vm.Contains("not properly shut down")) {
		t.Errorf("PostgreSQL needed crash recovery after a clean power-off: %s", l)
	}

	first, _ := s.waitNode(t, "node-a in the registry after the QvDC reboot", hostA, APITimeout, func(quantix.Node) bool { return true })
	if first.ID != before.ID || !first.RegisteredAt.Equal(before.RegisteredAt) || first.MachineID != before.MachineID {
		t.Fatalf("the registry did not survive the reboot: before %+v, after %+v", before, first)
	}
	var since time.Time
	if first.LastHeartbeat != nil {
		since = *first.LastHeartbeat
	}
	// node-a was reset while the QvDC was off, so it registers again: its retries
	// back off up to the agent's 60 s cap (plus jitter) while the QvDC is away.
	n, d := s.waitNode(t, "a new heartbeat from node-a", hostA, 3*HeartbeatInterval+90*time.Second, func(n quantix.Node) bool {
		return n.LastHeartbeat != nil && n.LastHeartbeat.After(since) && n.Phase == quantix.PhaseReady
	})
	t.Logf("vDC ready to node-a's next heartbeat: %v", d.Round(100*time.Millisecond))
	if n.ID != s.aID {
		t.Errorf("node id = %s, want %s", n.ID, s.aID)
	}
	for _, l := range node.Lines()[nodeLines:] {
		if mk, ok := quantix.ParseMarker(l); ok && mk.Kind == quantix.MarkerReady && mk.Get("service") == "agent" &&
			(mk.Get("registration") == quantix.RegistrationRegistered || mk.Get("node_id") != s.aID) {
			t.Errorf("the agent registered anew during the QvDC reboot: %s", l)
		}
	}
	s.vmAfterQvDCReboot(t)
}

// 6. The static -> DHCP switch of the original bug report: the operator changes
// node-a's network.toml to DHCP (keeping everything else on the disk) and reboots;
// the vDC shows the leased address, not the old static one.
func (s *suite) staticToDHCP(t *testing.T) {
	s.needNodeA(t)
	lab := s.lab
	lab.Hub.SetDHCP(true)
	lab.StopNode(t)
	raw, id := vm.ReadIdentity(t, lab.NodeDisk)
	row, _ := s.waitNode(t, "node-a", hostA, APITimeout, func(quantix.Node) bool { return true })
	if id.MachineID != row.MachineID {
		t.Errorf("identity on QUANTIX-CFG has machine_id %s, the vDC %s", id.MachineID, row.MachineID)
	}
	s.aCfg.Identity = raw
	s.aCfg.Network = vm.DHCPNetwork(60*time.Second, netip.Prefix{})
	lab.WriteNodeDisk(t, s.aCfg)
	lab.BootNode(t)
	netMk, agentMk := bootMarkers(t, lab.Node)
	lease := lab.Hub.WaitLease(t, vm.NodeMAC, 30*time.Second)
	s.aLease = lease.IP
	if netMk.Get("source") != "dhcp" || netMk.Get("addr") != netip.PrefixFrom(lease.IP, 24).String() {
		t.Errorf("network marker %s, want source=dhcp addr=%s/24", netMk, lease.IP)
	}
	if agentMk.Get("registration") != quantix.RegistrationReregistered || agentMk.Get("node_id") != s.aID {
		t.Errorf("agent %s, want registration=%s node_id=%s", agentMk, quantix.RegistrationReregistered, s.aID)
	}
	n, d := s.waitNode(t, "node-a with its leased address", hostA, APITimeout, func(n quantix.Node) bool {
		return n.ManagementIP == lease.IP.String() && n.Phase == quantix.PhaseReady
	})
	t.Logf("vDC shows the lease %s %v after the agent's marker", lease.IP, d.Round(100*time.Millisecond))
	if n.ID != s.aID || n.ManagementIP == nodeAStatic.Addr().String() {
		t.Errorf("vDC row %+v, want id %s and not the old static address", n, s.aID)
	}
}

// 3. DHCP: with the hub's DHCP on, node-a (configured for DHCP by scenario 6) holds
// a lease; the vDC and the agent show the leased address, found through the
// default route the lease brought.
func (s *suite) dhcp(t *testing.T) {
	s.needNodeA(t)
	if !s.aLease.IsValid() {
		t.Fatal("node-a has no lease: scenario 6 failed")
	}
	l, ok := s.lab.Hub.Lease(vm.NodeMAC)
	cfg := s.lab.Hub.Config()
	if !ok || l.State != "bound" || l.IP != s.aLease || l.IP.Less(cfg.PoolStart) || cfg.PoolEnd.Less(l.IP) {
		t.Errorf("hub lease of node-a = %v (ok %v), want %s bound inside %s-%s", l, ok, s.aLease, cfg.PoolStart, cfg.PoolEnd)
	}
	st := s.agentStatus(t, s.aLease)
	if st.Management.IP != s.aLease.String() || st.Management.Source != agent.SourceDefaultRoute {
		t.Errorf("agent management = %+v, want %s through the default route", st.Management, s.aLease)
	}
	want := "dhcp " + netip.PrefixFrom(s.aLease, 24).String() + " via " + vm.LabGateway.String()
	if len(s.lab.Node.Find(vm.Contains(want))) == 0 {
		t.Errorf("no console line says the network service verified %q", want)
	}
	n, _ := s.waitNode(t, "node-a ready with its lease", hostA, APITimeout, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady
	})
	if n.ManagementIP != s.aLease.String() {
		t.Errorf("vDC management_ip = %q, want the lease %s", n.ManagementIP, s.aLease)
	}
}

// 4. DHCP fallback: with the hub's DHCP off, node-a falls back to its [static]
// address within the first-lease timeout plus a small margin and registers with it;
// with DHCP switched on it moves to a lease, and the vDC's management_ip follows
// within one heartbeat interval.
func (s *suite) dhcpFallback(t *testing.T) {
	s.needNodeA(t)
	lab := s.lab
	lab.StopNode(t)
	lab.Hub.SetDHCP(false)
	s.aCfg.Network = vm.DHCPNetwork(fallbackTimeout, nodeAFallback)
	lab.WriteNodeDisk(t, s.aCfg)
	boot := time.Now()
	lab.BootNode(t)

	netMk := lab.Node.WaitMarker(t, quantix.MarkerReady, NodeBootTimeout, "service", "network")
	fellBack := time.Now()
	if netMk.Get("source") != "fallback" || netMk.Get("addr") != nodeAFallback.String() {
		t.Fatalf("with DHCP off: %s, want source=fallback addr=%s", netMk, nodeAFallback)
	}
	discover, err := firstDHCP(lab.Hub.PcapPath(), vm.NodeMAC, boot)
	if err != nil {
		t.Fatal(err)
	}
	took := fellBack.Sub(discover)
	t.Logf("first DHCP request to fallback address on the console: %v (timeout %v)", took.Round(100*time.Millisecond), fallbackTimeout)
	if took > fallbackTimeout+margin {
		t.Errorf("fell back %v after the first DHCP request, want within the %v timeout + %v", took, fallbackTimeout, margin)
	}
	if took < fallbackTimeout-2*time.Second {
		t.Errorf("fell back %v after the first DHCP request: before the %v first-lease timeout", took, fallbackTimeout)
	}
	agentMk := lab.Node.WaitMarker(t, quantix.MarkerReady, NodeBootTimeout, "service", "agent")
	if agentMk.Get("node_id") != s.aID {
		t.Errorf("agent %s, want node_id=%s", agentMk, s.aID)
	}
	s.waitNode(t, "node-a with its fallback address", hostA, APITimeout, func(n quantix.Node) bool {
		return n.ManagementIP == nodeAFallback.Addr().String() && n.Phase == quantix.PhaseReady
	})

	lab.Hub.SetDHCP(true)
	on := time.Now()
	lease := lab.Hub.WaitLease(t, vm.NodeMAC, 90*time.Second)
	moved := lab.Node.WaitMarker(t, quantix.MarkerReady, 30*time.Second, "service", "network")
	changed := time.Now()
	if moved.Get("source") != "dhcp" || moved.Get("addr") != netip.PrefixFrom(lease.IP, 24).String() {
		t.Fatalf("after DHCP came on: %s, want source=dhcp addr=%s/24", moved, lease.IP)
	}
	t.Logf("DHCP on to lease on the console: %v", changed.Sub(on).Round(100*time.Millisecond))
	s.waitNode(t, "vDC management_ip follows the lease", hostA, HeartbeatInterval+30*time.Second, func(n quantix.Node) bool {
		return n.ManagementIP == lease.IP.String()
	})
	d := time.Since(changed) // from the address change on the console, polling included
	t.Logf("address change to vDC management_ip %s: %v (heartbeat interval %v)", lease.IP, d.Round(100*time.Millisecond), HeartbeatInterval)
	if d > HeartbeatInterval+margin {
		t.Errorf("the vDC followed the new address after %v, want within one heartbeat interval (%v) + %v", d, HeartbeatInterval, margin)
	}
	s.aLease = lease.IP
}

// firstDHCP returns when the hub first saw a DHCP client message (DISCOVER, or a
// REQUEST for an earlier address) from mac after since, from the segment's pcap:
// the moment the node's DHCP client started, as seen from outside.
func firstDHCP(pcap string, mac []byte, since time.Time) (time.Time, error) {
	frames, err := vm.ReadPcap(pcap)
	if err != nil {
		return time.Time{}, err
	}
	for _, f := range frames {
		if f.Time.Before(since) || string(vm.FrameSource(f.Data)) != string(mac) {
			continue
		}
		if d, ok := vm.ParseDHCP(f.Data); ok && d.OpCode == dhcpv4.OpcodeBootRequest {
			return f.Time, nil
		}
	}
	return time.Time{}, fmt.Errorf("no DHCP request from %x in %s after %s", mac, pcap, since.Format(time.TimeOnly))
}

// 8. Identity guard: another machine with node-a's hostname and its own identity is
// refused (409); node-a's row stays untouched, and node-a itself still gets in.
//
// The lab runs at most two VMs, so node-a is powered off while the intruder boots
// on the node machine with a fresh config disk (a new identity). The 409 is seen
// through the intruder agent's /status (state refused, naming node-a's node_id, as
// the vDC's error does) and the vDC's events for node-a (the refused takeover).
// "Untouched": node-a's row keeps id, machine_id, registered_at and address, and
// node-a, booted again from its own disk, is `reregistered` (its secret was not
// replaced) and `ready`.
func (s *suite) identityGuard(t *testing.T) {
	s.needNodeA(t)
	lab := s.lab
	lab.StopNode(t)
	saved := filepath.Join(t.TempDir(), "node-a-cfg.img")
	copyFile(t, lab.NodeDisk, saved)
	before, _ := s.waitNode(t, "node-a", hostA, APITimeout, func(quantix.Node) bool { return true })

	lab.WriteNodeDisk(t, vm.NodeConfig{Hostname: hostA, Network: vm.StaticNetwork(intruderAddr)})
	lab.BootNode(t)
	lab.Node.WaitMarker(t, quantix.MarkerReady, NodeBootTimeout, "service", "network", "addr", intruderAddr.String())
	refused := lab.Node.Expect(t, "registration refused", NodeBootTimeout)
	t.Logf("intruder: %s", refused)
	st := s.agentStatus(t, intruderAddr.Addr())
	if st.State != agent.StateRefused || !strings.Contains(st.Error, before.ID) {
		t.Errorf("intruder agent status: state %q error %q, want %q naming node %s", st.State, st.Error, agent.StateRefused, before.ID)
	}
	if st.MachineID == "" || st.MachineID == before.MachineID {
		t.Errorf("intruder machine_id %q: want its own, not node-a's %s", st.MachineID, before.MachineID)
	}
	after, _ := s.waitNode(t, "node-a", hostA, APITimeout, func(quantix.Node) bool { return true })
	if after.ID != before.ID || after.MachineID != before.MachineID || !after.RegisteredAt.Equal(before.RegisteredAt) || after.ManagementIP != before.ManagementIP {
		t.Errorf("node-a's row changed: before %+v, after %+v", before, after)
	}
	ev, err := lab.VDC.NodeEvents(context.Background(), before.ID)
	if err != nil {
		t.Fatal(err)
	}
	refusedEv := false
	for _, e := range ev {
		if strings.Contains(strings.ToLower(e.Kind+" "+e.Message), "refused") {
			refusedEv = true
		}
	}
	if !refusedEv {
		t.Errorf("no refused-takeover event for node-a: %s", describeEvents(ev))
	}

	// The refused intruder never reaches boot-complete, so init never loads the power
	// button driver: pull its plug (its disk is thrown away anyway).
	lab.Node.Kill(t)
	copyFile(t, saved, lab.NodeDisk)
	lab.BootNode(t)
	_, agentMk := bootMarkers(t, lab.Node)
	if agentMk.Get("registration") != quantix.RegistrationReregistered || agentMk.Get("node_id") != s.aID {
		t.Errorf("node-a back: %s, want registration=%s node_id=%s", agentMk, quantix.RegistrationReregistered, s.aID)
	}
	s.waitNode(t, "node-a ready again", hostA, APITimeout, func(n quantix.Node) bool { return n.Phase == quantix.PhaseReady })
}

// 9. A second node with another hostname joins; both are listed. node-b boots on
// the node machine (node-a powered off: two VMs at most), registers as new with
// its own node_id, and the registry lists node-a and node-b, two rows.
func (s *suite) secondNode(t *testing.T) {
	s.needNodeA(t)
	lab := s.lab
	s.rows = 2
	lab.RebootNodeWith(t, vm.NodeConfig{Hostname: hostB, Network: vm.StaticNetwork(nodeBStatic)})
	_, agentMk := bootMarkers(t, lab.Node)
	if agentMk.Get("registration") != quantix.RegistrationRegistered || agentMk.Get("node_id") == s.aID {
		t.Errorf("node-b: %s, want registration=%s with a node_id of its own", agentMk, quantix.RegistrationRegistered)
	}
	b, _ := s.waitNode(t, "node-b ready", hostB, APITimeout, func(n quantix.Node) bool {
		return n.Phase == quantix.PhaseReady && n.ManagementIP == nodeBStatic.Addr().String()
	})
	nodes, err := lab.VDC.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a := byHostname(nodes, hostA)
	if len(nodes) != 2 || len(a) != 1 || a[0].ID != s.aID || b.ID == s.aID {
		t.Errorf("registry = %s, want node-a (%s) and node-b", describeNodes(nodes), s.aID)
	}
	t.Logf("registry: %s", describeNodes(nodes))
}

func describeEvents(ev []quantix.NodeEvent) string {
	var parts []string
	for _, e := range ev {
		parts = append(parts, e.Kind+": "+e.Message)
	}
	return strings.Join(parts, " | ")
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
