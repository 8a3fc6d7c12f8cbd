package network

import (
	"context"
	"encoding/json"
	"github.com/quantix/quantix/tests/netlab"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const labMAC = "52:54:00:77:00:10" // eth0's, see newLab

// bridgeState is what `ip -d -j link show` says about a bridge and its port: read
// with iproute2, not with the service's own netlink code.
type bridgeState struct {
	Index        int
	MAC          string
	Kind         string
	STP          int
	ForwardDelay int
	PortMaster   string // the port's master
	PortUp       bool
}

func (l *lab) bridge(t *testing.T, br, port string) bridgeState {
	t.Helper()
	type link struct {
		Index    int      `json:"ifindex"`
		Address  string   `json:"address"`
		Master   string   `json:"master"`
		Flags    []string `json:"flags"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
			Data struct {
				STP          int `json:"stp_state"`
				ForwardDelay int `json:"forward_delay"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	show := func(name string) link {
		out, err := exec.Command("ip", "-n", l.client, "-d", "-j", "link", "show", "dev", name).Output()
		if err != nil {
			t.Fatalf("ip link show %s: %v", name, err)
		}
		var ls []link
		if err := json.Unmarshal(out, &ls); err != nil || len(ls) != 1 {
			t.Fatalf("ip link show %s: %v: %s", name, err, out)
		}
		return ls[0]
	}
	b, p := show(br), show(port)
	return bridgeState{Index: b.Index, MAC: b.Address, Kind: b.LinkInfo.Kind, STP: b.LinkInfo.Data.STP,
		ForwardDelay: b.LinkInfo.Data.ForwardDelay, PortMaster: p.Master, PortUp: slices.Contains(p.Flags, "UP")}
}

// expectBridge checks the layout docs/design.md §13 asks for: br0 is a bridge with
// eth0's MAC, STP off, forward delay 0, eth0 its port and up, eth0 without address.
func (l *lab) expectBridge(t *testing.T) bridgeState {
	t.Helper()
	b := l.bridge(t, "br0", "eth0")
	if b.Kind != "bridge" || b.MAC != labMAC || b.STP != 0 || b.ForwardDelay != 0 || b.PortMaster != "br0" || !b.PortUp {
		t.Errorf("bridge = %+v, want kind bridge, MAC %s, stp 0, forward delay 0, eth0 up under br0", b, labMAC)
	}
	if got := l.addrs("eth0"); len(got) != 0 {
		t.Errorf("eth0 (the port) holds %q, want no address", got)
	}
	return b
}

func (l *lab) linkExists(name string) bool {
	_, err := l.h.LinkByName(name)
	return err == nil
}

func bridgedConfig(l *lab) Config {
	cfg := l.config()
	cfg.Bridge = "br0" // the Quantix-OS image default
	return cfg
}

// TestBridgeStatic: with the image default bridge br0, a static network.toml puts
// the address and the one default route on br0 over eth0; the status, the marker
// and the gateway check all use br0. Applying the same settings again changes no
// link: the bridge is neither recreated nor flapped.
func TestBridgeStatic(t *testing.T) {
	l := newLab(t)
	// eth0 holds an address and the default route before the service starts, as
	// after a kernel ip= or an older layout: it moves to the bridge.
	netlab.IP(t, "-n", l.client, "link", "set", "eth0", "up")
	netlab.IP(t, "-n", l.client, "addr", "add", "10.77.0.5/24", "dev", "eth0")
	netlab.IP(t, "-n", l.client, "route", "add", "default", "via", labGateway, "dev", "eth0")
	cfg := bridgedConfig(l)
	writeFile(t, cfg.PersistentPath, staticToml)
	r := l.run(cfg)
	m := r.waitMarker(t, SourceStatic, 5*time.Second)
	if m.Get("iface") != "br0" || m.Get("port") != "eth0" || m.Get("addr") != "10.77.0.5/24" {
		t.Errorf("ready marker = %s, want iface=br0 port=eth0 addr=10.77.0.5/24", m)
	}
	if got := l.addrs("br0"); !slices.Equal(got, []string{"10.77.0.5/24"}) {
		t.Errorf("br0 addresses = %q, want 10.77.0.5/24", got)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev br0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	before := l.expectBridge(t)
	st, err := Client{Socket: cfg.Socket}.Status(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st.Interface != "br0" || st.Port != "eth0" || st.MAC != labMAC || !slices.Equal(st.KernelAddresses, []string{"10.77.0.5/24"}) ||
		!slices.Equal(st.DefaultRoutes, []string{"default via 10.77.0.1 dev br0"}) {
		t.Errorf("status = %+v, want br0 over eth0 with 10.77.0.5/24 and the default route", st)
	}
	env, err := openNetEnv(l.clientPath)
	if err != nil {
		t.Fatal(err)
	}
	defer env.close()
	if err := check(context.Background(), env, ifaceOfName(t, l, "br0"), staticTarget(mustPlan(t, mustParse(t, "s", staticToml)), SourceStatic), "", 2*time.Second); err != nil {
		t.Errorf("gateway check from br0: %v", err)
	}

	// The same settings again: no link is created, deleted or changed.
	events := l.linkEvents(t)
	res, err := Client{Socket: cfg.Socket}.Apply(ctxT(t, 20*time.Second), "again.toml", []byte(staticToml), 0, "")
	if err != nil || !res.Committed {
		t.Fatalf("Apply(same) = %+v, %v", res, err)
	}
	if got := events(); len(got) > 0 {
		t.Errorf("link changes during an apply of the same settings: %q", got)
	}
	if after := l.expectBridge(t); after.Index != before.Index {
		t.Errorf("br0 index %d after the second apply, was %d: the bridge was recreated", after.Index, before.Index)
	}
	if got := l.addrs("br0"); !slices.Equal(got, []string{"10.77.0.5/24"}) {
		t.Errorf("br0 addresses after the second apply = %q", got)
	}
}

// linkEvents records link messages about br0 and eth0 from now until the returned
// function is called.
func (l *lab) linkEvents(t *testing.T) func() []string {
	t.Helper()
	ch := make(chan netlink.LinkUpdate, 64)
	return record(t, l, ch, func(done chan struct{}, ns *netns.NsHandle) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: ns})
	}, func(u netlink.LinkUpdate) string {
		if n := u.Attrs().Name; n == "br0" || n == "eth0" {
			return n + " " + u.Attrs().OperState.String() + " " + u.Attrs().Flags.String() + " type " + typeName(u.Header.Type)
		}
		return ""
	})
}

// addrEvents records IPv4 address messages from now until the returned function
// is called, as "add|del ADDR LINK".
func (l *lab) addrEvents(t *testing.T) func() []string {
	t.Helper()
	ch := make(chan netlink.AddrUpdate, 64)
	return record(t, l, ch, func(done chan struct{}, ns *netns.NsHandle) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: ns})
	}, func(u netlink.AddrUpdate) string {
		if u.LinkAddress.IP.To4() == nil {
			return ""
		}
		op, name := "del", "?"
		if u.NewAddr {
			op = "add"
		}
		if k, err := l.h.LinkByIndex(u.LinkIndex); err == nil {
			name = k.Attrs().Name
		}
		return op + " " + u.LinkAddress.String() + " " + name
	})
}

// record subscribes to netlink messages in the client namespace and returns a
// function that stops and returns them as describe puts them ("" skips one).
func record[T any](t *testing.T, l *lab, ch chan T, subscribe func(done chan struct{}, ns *netns.NsHandle) error, describe func(T) string) func() []string {
	t.Helper()
	ns, err := netns.GetFromName(l.client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	done := make(chan struct{})
	if err := subscribe(done, &ns); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		time.Sleep(200 * time.Millisecond) // let late messages arrive
		close(done)
		var out []string
		for {
			select {
			case u, ok := <-ch:
				if !ok {
					return out
				}
				if d := describe(u); d != "" {
					out = append(out, d)
				}
			default:
				return out
			}
		}
	}
}

func typeName(t uint16) string {
	switch t {
	case 16:
		return "NEWLINK"
	case 17:
		return "DELLINK"
	}
	return "?"
}

// TestBridgeDHCP: DHCP runs on br0 and the lease is the NIC's: the server sees
// eth0's MAC as chaddr, so a reservation for the machine keeps working.
func TestBridgeDHCP(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(time.Minute)
	cfg := bridgedConfig(l)
	cfg.Settings = mustParse(t, "dhcp.toml", dhcpToml)
	r := l.run(cfg)
	m := r.waitMarker(t, SourceDHCP, 5*time.Second)
	lease := m.Get("addr")
	if m.Get("iface") != "br0" {
		t.Errorf("marker = %s, want iface=br0", m)
	}
	var leased []string
	for mac, ip := range srv.Leases() {
		leased = append(leased, mac+"="+ip.String())
	}
	if want := labMAC + "=" + strings.TrimSuffix(lease, "/24"); !slices.Equal(leased, []string{want}) {
		t.Errorf("server leases = %q, want only %s (the NIC's MAC)", leased, want)
	}
	if got := l.addrs("br0"); !slices.Equal(got, []string{lease}) {
		t.Errorf("br0 addresses = %q, want %s", got, lease)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev br0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	l.expectBridge(t)
	if st := r.s.Status(); st.Interface != "br0" || st.Port != "eth0" || st.DHCP == nil || st.DHCP.State != DHCPBound {
		t.Errorf("status = %+v", st)
	}
}

// TestBridgeDHCPCarrierLate: the service starts while the wire has no carrier (the
// switch port still down, or a bridge port not yet forwarding at boot), so its
// first DISCOVER is lost. The carrier's arrival starts the client over at once:
// the lease comes long before the first retransmission would.
func TestBridgeDHCPCarrierLate(t *testing.T) {
	l := newLab(t)
	l.startDHCP(time.Minute)
	netlab.IP(t, "-n", l.far, "link", "set", "gw0", "down")
	cfg := bridgedConfig(l)
	cfg.Settings = mustParse(t, "dhcp.toml", dhcpToml)
	cfg.DHCPRetryInitial, cfg.DHCPRetryMax = 20*time.Second, 20*time.Second
	r := l.run(cfg)
	waitStatus(t, r.s, 5*time.Second, "dhcp selecting on br0", func(st Status) bool {
		return st.Interface == "br0" && st.DHCP != nil && st.DHCP.State == DHCPSelecting
	})
	time.Sleep(300 * time.Millisecond) // the first DISCOVER went out without carrier
	netlab.IP(t, "-n", l.far, "link", "set", "gw0", "up")
	up := time.Now()
	r.waitMarker(t, SourceDHCP, 8*time.Second)
	t.Logf("lease %.2fs after carrier up (first retransmission due 20s after the start)", time.Since(up).Seconds())
}

// TestBridgeFallback: no DHCP server -> the [static] fallback lands on br0; a later
// lease replaces it there.
func TestBridgeFallback(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(30 * time.Second)
	srv.Set(func(d *netlab.DHCPSettings) { d.Off = true })
	cfg := bridgedConfig(l)
	cfg.Settings = mustParse(t, "fallback.toml", "interface = \"eth0\"\n[static]\naddress = \"10.77.0.9/24\"\ngateway = \"10.77.0.1\"\n[dhcp]\ntimeout = \"2s\"\nfallback = \"static\"\n")
	r := l.run(cfg)
	m := r.waitMarker(t, SourceFallback, 4*time.Second)
	if m.Get("iface") != "br0" || m.Get("addr") != "10.77.0.9/24" {
		t.Errorf("fallback marker = %s, want 10.77.0.9/24 on br0", m)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev br0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	l.expectBridge(t)
	srv.Set(func(d *netlab.DHCPSettings) { d.Off = false })
	m = r.waitMarker(t, SourceDHCP, 5*time.Second)
	if got := l.addrs("br0"); !slices.Equal(got, []string{m.Get("addr")}) {
		t.Errorf("br0 addresses = %q, want only the lease %s", got, m.Get("addr"))
	}
}

// TestBridgeRollback: a change that breaks the gateway is rolled back on the
// bridge: the same br0, its port and the kernel state as before.
func TestBridgeRollback(t *testing.T) {
	l := newLab(t)
	r, _, c := serveLab(t, l, withBridge("br0"))
	r.waitMarker(t, SourceStatic, 5*time.Second)
	before, bridgeBefore := l.kernelState(), l.expectBridge(t)
	broken := strings.Replace(withBridge("br0"), `gateway = "10.77.0.1"`, `gateway = "10.77.0.254"`, 1)
	res, err := c.Apply(ctxT(t, 20*time.Second), "broken.toml", []byte(broken), 0, "")
	if err == nil || !res.RolledBack || !strings.Contains(err.Error(), "10.77.0.254 unreachable") {
		t.Fatalf("Apply(broken) = %+v, %v; want rolled back naming the gateway", res, err)
	}
	waitStatus(t, r.s, 5*time.Second, "rollback verified", func(st Status) bool {
		return st.LastRollback != nil && st.LastRollback.Done && st.LastRollback.Verified
	})
	if after := l.kernelState(); after != before {
		t.Errorf("kernel state after rollback:\n%s\nwant:\n%s", after, before)
	}
	if b := l.expectBridge(t); b.Index != bridgeBefore.Index {
		t.Errorf("br0 recreated by the rollback (index %d, was %d)", b.Index, bridgeBefore.Index)
	}
}

// TestBridgeSwitch moves the address between the NIC and the bridge through safe
// apply, both ways, and rolls each direction back: the rollback restores the
// previous layout (a bridge an unconfirmed change stopped using comes back, the
// same link; one it created goes).
func TestBridgeSwitch(t *testing.T) {
	l := newLab(t)
	r, cfg, c := serveLab(t, l, staticToml) // image default: no bridge
	r.waitMarker(t, SourceStatic, 5*time.Second)
	onNIC := l.kernelState()
	bridgeToml := withBridge("br0")

	// NIC -> bridge, broken gateway: rolled back, no bridge left.
	broken := strings.Replace(bridgeToml, `gateway = "10.77.0.1"`, `gateway = "10.77.0.254"`, 1)
	if res, err := c.Apply(ctxT(t, 20*time.Second), "broken.toml", []byte(broken), 0, ""); err == nil || !res.RolledBack {
		t.Fatalf("Apply(bridge, broken gateway) = %+v, %v; want rolled back", res, err)
	}
	waitStatus(t, r.s, 5*time.Second, "rollback verified", func(st Status) bool {
		return st.LastRollback != nil && st.LastRollback.Done && st.LastRollback.Verified
	})
	if l.linkExists("br0") {
		t.Errorf("br0 still exists after rolling back to no bridge")
	}
	if after := l.kernelState(); after != onNIC {
		t.Errorf("kernel state after rolling back NIC->bridge:\n%s\nwant:\n%s", after, onNIC)
	}

	// NIC -> bridge, committed.
	res, err := c.Apply(ctxT(t, 20*time.Second), "bridge.toml", []byte(bridgeToml), 0, "")
	if err != nil || !res.Committed || res.Status.Interface != "br0" || res.Status.Port != "eth0" {
		t.Fatalf("Apply(bridge) = %+v, %v; want committed on br0 over eth0", res, err)
	}
	if got := l.addrs("br0"); !slices.Equal(got, []string{"10.77.0.5/24"}) {
		t.Errorf("br0 addresses = %q", got)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev br0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	bridged := l.expectBridge(t)
	onBridge := l.kernelState()

	// bridge -> NIC, rejected while pending: the same br0 comes back.
	noBridge := withBridge("")
	res, err = c.Apply(ctxT(t, 20*time.Second), "nobridge.toml", []byte(noBridge), time.Minute, "")
	if err != nil || !res.Applied || res.Status.Interface != "eth0" || res.Status.Port != "" {
		t.Fatalf("Apply(no bridge, pending) = %+v, %v", res, err)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{"10.77.0.5/24"}) {
		t.Errorf("while pending: eth0 = %q, want the address", got)
	}
	if got := l.addrs("br0"); len(got) != 0 {
		t.Errorf("while pending: br0 (kept for a rollback) holds %q, want nothing", got)
	}
	if _, err := c.Rollback(ctxT(t, 20*time.Second), "the test"); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if b := l.expectBridge(t); b.Index != bridged.Index {
		t.Errorf("rollback made a new br0 (index %d, was %d)", b.Index, bridged.Index)
	}
	if after := l.kernelState(); after != onBridge {
		t.Errorf("kernel state after rolling back bridge->NIC:\n%s\nwant:\n%s", after, onBridge)
	}

	// bridge -> NIC, confirmed: the bridge goes.
	if res, err := c.Apply(ctxT(t, 20*time.Second), "nobridge.toml", []byte(noBridge), time.Minute, ""); err != nil || !res.Applied {
		t.Fatalf("Apply(no bridge) = %+v, %v", res, err)
	}
	if _, err := c.Confirm(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Confirm: %v", err)
	}
	if l.linkExists("br0") {
		t.Errorf("br0 still exists after the no-bridge settings were confirmed")
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{"10.77.0.5/24"}) {
		t.Errorf("eth0 = %q", got)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	if b, _ := os.ReadFile(cfg.PersistentPath); string(b) != noBridge {
		t.Errorf("persistent file = %q, want the confirmed no-bridge settings", b)
	}

	// And back onto a bridge: a DHCP configuration this time.
	srv := l.startDHCP(time.Minute)
	dhcpBridge := strings.Replace(dhcpToml, "mode =", "bridge = \"br0\"\nmode =", 1)
	res, err = c.Apply(ctxT(t, 20*time.Second), "dhcp-bridge.toml", []byte(dhcpBridge), 0, "")
	if err != nil || !res.Committed || res.Status.Interface != "br0" || res.Status.Source != SourceDHCP {
		t.Fatalf("Apply(dhcp on bridge) = %+v, %v", res, err)
	}
	l.expectBridge(t)
	if leases := srv.Leases(); leases[labMAC] == nil {
		t.Errorf("DHCP server leases %v, want one for the NIC's MAC %s", leases, labMAC)
	}
}

// withBridge is staticToml with a bridge key (on line 2).
func withBridge(name string) string {
	return strings.Replace(staticToml, "mode =", "bridge = \""+name+"\"\nmode =", 1)
}

// TestBridgeMovesLease: switching a DHCP host between NIC and bridge keeps its
// lease in place (the bridge has the NIC's MAC): the address is added on the new
// link before it leaves the old one, even with the DHCP server gone for the
// moment, and the client renews it from the new link once the server is back.
func TestBridgeMovesLease(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(time.Minute)
	r, _, c := serveLab(t, l, dhcpToml)
	lease := r.waitMarker(t, SourceDHCP, 5*time.Second).Get("addr")
	for _, to := range []struct{ bridge, link string }{{"br0", "br0"}, {"", "eth0"}} {
		srv.Set(func(d *netlab.DHCPSettings) { d.Off = true })
		events := l.addrEvents(t)
		settings := strings.Replace(dhcpToml, "mode =", "bridge = \""+to.bridge+"\"\nmode =", 1)
		res, err := c.Apply(ctxT(t, 20*time.Second), "switch.toml", []byte(settings), 0, "")
		if err != nil || !res.Committed || res.Status.Interface != to.link || res.Status.Address != lease || res.Status.Source != SourceDHCP {
			t.Fatalf("Apply(bridge %q) = %+v, %v; want the lease %s committed on %s", to.bridge, res, err, lease, to.link)
		}
		if got := l.addrs(to.link); !slices.Equal(got, []string{lease}) {
			t.Errorf("%s addresses = %q, want the lease %s", to.link, got, lease)
		}
		if got := events(); len(got) == 0 || !strings.HasPrefix(got[0], "add "+lease+" "+to.link) {
			t.Errorf("address events %q, want the lease added on %s first (never without it)", got, to.link)
		}
		srv.Set(func(d *netlab.DHCPSettings) { d.Off = false })
		st := waitStatus(t, r.s, 10*time.Second, "lease renewed on "+to.link, func(st Status) bool {
			return st.DHCP != nil && st.DHCP.State == DHCPBound && st.DHCP.Server == labGateway
		})
		if st.Address != lease || st.Interface != to.link {
			t.Errorf("after renewal: %s on %s, want %s on %s", st.Address, st.Interface, lease, to.link)
		}
	}
	if l.linkExists("br0") {
		t.Errorf("br0 left behind after switching back to no bridge")
	}
}

// TestBridgeUnavailableAtStart: when the bridge cannot be made at start (here a
// non-bridge link already has its name), the host still gets on the network: the
// address goes on the NIC, with a warning on the console and in the status.
func TestBridgeUnavailableAtStart(t *testing.T) {
	l := newLab(t)
	netlab.IP(t, "-n", l.client, "link", "add", "br0", "type", "veth", "peer", "name", "br0p")
	cfg := bridgedConfig(l)
	writeFile(t, cfg.PersistentPath, staticToml)
	r := l.run(cfg)
	deadline := time.After(5 * time.Second)
	var warning string
	for warning == "" {
		select {
		case m := <-r.markers.ch:
			if m.Kind == quantix.MarkerWarning {
				warning = m.Get("msg")
			}
		case <-deadline:
			t.Fatal("no warning marker within 5s")
		}
	}
	if !strings.Contains(warning, "br0 exists and is a veth") || !strings.Contains(warning, "the address is on eth0 instead") {
		t.Errorf("warning = %q, want the bridge problem and where the address is", warning)
	}
	m := r.waitMarker(t, SourceStatic, 5*time.Second)
	if m.Get("iface") != "eth0" {
		t.Errorf("marker = %s, want iface=eth0", m)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{"10.77.0.5/24"}) {
		t.Errorf("eth0 addresses = %q", got)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	if st := r.s.Status(); st.Interface != "eth0" || st.Port != "" || !strings.Contains(st.LastError, "br0 exists and is a veth") {
		t.Errorf("status = %+v, want eth0 and the bridge problem as last error", st)
	}
}
