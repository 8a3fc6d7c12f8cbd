package network

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quantix/quantix/tests/netlab"
	"github.com/vishvananda/netlink"
)

const staticToml = `interface = "eth0"
mode = "static"
dns = ["10.77.0.53"]

[static]
address = "10.77.0.5/24"
gateway = "10.77.0.1"
`

const dhcpToml = `interface = "eth0"
mode = "dhcp"

[dhcp]
timeout = "3s"
fallback = "none"
`

func mustParse(t testing.TB, name, text string) *Settings {
	t.Helper()
	s, err := Parse(name, []byte(text))
	if err != nil {
		t.Fatalf("Parse(%s): %v", name, err)
	}
	return &s
}

// TestStaticApply applies a static address over a messy start: a stale address on
// eth0 and default routes on two interfaces. Exactly one default route must remain,
// via the gateway and dev eth0.
func TestStaticApply(t *testing.T) {
	l := newLab(t)
	// A second interface with its own default route (e.g. left by an old DHCP
	// client): it must go too. (The kernel here has no dummy module: a veth pair.)
	netlab.IP(t, "-n", l.client, "link", "add", "side0", "type", "veth", "peer", "name", "side1")
	netlab.IP(t, "-n", l.client, "link", "set", "side0", "up")
	netlab.IP(t, "-n", l.client, "link", "set", "side1", "up")
	netlab.IP(t, "-n", l.client, "addr", "add", "192.168.99.2/24", "dev", "side0")
	netlab.IP(t, "-n", l.client, "route", "add", "default", "via", "192.168.99.1", "dev", "side0", "metric", "50")
	netlab.IP(t, "-n", l.client, "link", "set", "eth0", "up")
	netlab.IP(t, "-n", l.client, "addr", "add", "10.77.0.200/24", "dev", "eth0")
	netlab.IP(t, "-n", l.client, "route", "add", "default", "via", "10.77.0.1", "dev", "eth0", "metric", "10")

	cfg := l.config()
	cfg.Settings = mustParse(t, "static.toml", staticToml)
	cfg.Once = true
	r := l.run(cfg)
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("Run(once): %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run(once) did not return")
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	if got, want := l.addrs("eth0"), []string{"10.77.0.5/24"}; !slices.Equal(got, want) {
		t.Errorf("eth0 addresses = %q, want %q", got, want)
	}
	resolv, err := os.ReadFile(cfg.ResolvConf)
	if err != nil || !strings.Contains(string(resolv), "nameserver 10.77.0.53\n") {
		t.Errorf("resolv.conf = %q, %v; want nameserver 10.77.0.53", resolv, err)
	}
	st := r.s.Status()
	if st.Source != SourceStatic || st.Address != "10.77.0.5/24" || st.Gateway != "10.77.0.1" || st.Interface != "eth0" {
		t.Errorf("status = %+v", st)
	}
	m := <-r.markers.ch
	if m.Get("service") != "network" || m.Get("iface") != "eth0" || m.Get("addr") != "10.77.0.5/24" || m.Get("source") != "static" {
		t.Errorf("ready marker = %s", m)
	}
	// The gateway answers ARP from the new address: the kernel really uses it.
	env, err := openNetEnv(l.clientPath)
	if err != nil {
		t.Fatal(err)
	}
	defer env.close()
	if err := check(context.Background(), env, ifaceOfName(t, l, "eth0"), staticTarget(mustPlan(t, cfg.Settings), SourceStatic), "", 2*time.Second); err != nil {
		t.Errorf("gateway check after static apply: %v", err)
	}
}

func ifaceOfName(t testing.TB, l *lab, name string) *net.Interface {
	t.Helper()
	k, err := l.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return ifaceOf(k)
}

func mustPlan(t testing.TB, s *Settings) plan {
	t.Helper()
	p, err := s.compile("")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDHCPLeaseAndRenew gets a short lease and sees it renewed at T1 by unicast to
// the server, keeping the address, its lifetime extended in the kernel.
func TestDHCPLeaseAndRenew(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(6 * time.Second)
	cfg := l.config()
	cfg.Settings = mustParse(t, "dhcp.toml", dhcpToml)
	r := l.run(cfg)
	m := r.waitMarker(t, SourceDHCP, 5*time.Second)
	addr := m.Get("addr")
	if !strings.HasPrefix(addr, "10.77.0.") || !strings.HasSuffix(addr, "/24") {
		t.Fatalf("lease address %q, want 10.77.0.x/24", addr)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	st := waitStatus(t, r.s, 12*time.Second, "two renewals", func(st Status) bool { return st.DHCP != nil && st.DHCP.Renewals >= 2 })
	if st.Address != addr || st.Source != SourceDHCP {
		t.Errorf("after renewals: address %s source %s, want %s dhcp", st.Address, st.Source, addr)
	}
	if d := st.DHCP; d.Server != labGateway || !d.T1.Before(d.T2) || !d.T2.Before(d.Expiry) || d.Expiry.Sub(d.Obtained) != 6*time.Second {
		t.Errorf("lease status = %+v, want server %s, T1 < T2 < expiry, 6s lease", d, labGateway)
	}
	// Renewals are unicast from the leased address (RENEWING), not broadcast.
	ip := strings.TrimSuffix(addr, "/24")
	unicast := 0
	for _, line := range srv.Requests() {
		if strings.HasPrefix(line, "REQUEST from "+ip+" ciaddr="+ip) {
			unicast++
		}
	}
	if unicast < 2 {
		t.Errorf("unicast renewals seen by the server = %d, want >= 2; log %q", unicast, srv.Requests())
	}
	// The kernel's copy of the lease lifetime is finite and was refreshed.
	k, _ := l.h.LinkByName("eth0")
	as, _ := l.h.AddrList(k, netlink.FAMILY_V4)
	if len(as) != 1 || as[0].ValidLft <= 0 || as[0].ValidLft > 6 {
		t.Errorf("kernel address = %+v, want one with valid_lft in (0, 6]", as)
	}
	resolv, _ := os.ReadFile(cfg.ResolvConf)
	if !strings.Contains(string(resolv), "nameserver 10.77.0.53") {
		t.Errorf("resolv.conf = %q, want the DHCP name server", resolv)
	}
}

// TestDHCPLeaseExpires stops the server after the lease: renewal and rebinding fail
// and the address and default route are dropped at expiry, then DHCP re-discovers.
func TestDHCPLeaseExpires(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(4 * time.Second)
	cfg := l.config()
	cfg.Settings = mustParse(t, "dhcp.toml", dhcpToml)
	r := l.run(cfg)
	r.waitMarker(t, SourceDHCP, 5*time.Second)
	bound := r.s.Status().DHCP
	srv.Set(func(s *netlab.DHCPSettings) { s.Off = true })
	st := waitStatus(t, r.s, 6*time.Second, "lease dropped", func(st Status) bool { return st.Source == SourceNone })
	if late := time.Since(bound.Expiry); late > time.Second || late < -100*time.Millisecond {
		t.Errorf("address dropped %s after the lease expiry, want within 1s after", late)
	}
	if got := l.addrs("eth0"); len(got) != 0 {
		t.Errorf("eth0 addresses after expiry = %q, want none", got)
	}
	if got := l.defaults(); len(got) != 0 {
		t.Errorf("default routes after expiry = %q, want none", got)
	}
	if !strings.Contains(st.LastError, "lost") {
		t.Errorf("last error = %q, want the lost lease named", st.LastError)
	}
	// RENEWING (unicast) then REBINDING (broadcast, from 0.0.0.0) were tried.
	ip := strings.Split(bound.Address, "/")[0]
	var renew, rebind bool
	for _, line := range srv.Requests() {
		renew = renew || strings.HasPrefix(line, "REQUEST from "+ip)
		rebind = rebind || strings.HasPrefix(line, "REQUEST from 255.255.255.255 ciaddr="+ip) // server4 shows 0.0.0.0 as broadcast
	}
	if !renew || !rebind {
		t.Errorf("server saw renew=%v rebind=%v, want both; log %q", renew, rebind, srv.Requests())
	}
	// Back in INIT: the client asks for its previous address in DISCOVER, and a
	// server that answers again gives it back.
	srv.Set(func(s *netlab.DHCPSettings) { s.Off = false })
	m := r.waitMarker(t, SourceDHCP, 5*time.Second)
	if m.Get("addr") != bound.Address {
		t.Errorf("re-discovered %s, want the previous %s", m.Get("addr"), bound.Address)
	}
	if !slices.ContainsFunc(srv.Requests(), func(s string) bool {
		return strings.HasPrefix(s, "DISCOVER") && strings.HasSuffix(s, "req="+ip)
	}) {
		t.Errorf("no DISCOVER asked for the previous address %s; log %q", ip, srv.Requests())
	}

	// A restarted service asks for the address it had (from its state file).
	r.cancel()
	<-r.done
	r.done <- nil
	srv.Forget(150)
	r = l.run(cfg)
	m = r.waitMarker(t, SourceDHCP, 5*time.Second)
	if m.Get("addr") != bound.Address {
		t.Errorf("after restart got %s, want the previous %s (requested from the state file)", m.Get("addr"), bound.Address)
	}
}

// TestDHCPNak: a server that refuses the renewal (NAK) takes the address away at
// once, not at expiry; the client starts over.
func TestDHCPNak(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(20 * time.Second)
	srv.Set(func(s *netlab.DHCPSettings) { s.T1, s.T2 = time.Second, 2*time.Second })
	cfg := l.config()
	cfg.Settings = mustParse(t, "dhcp.toml", dhcpToml)
	r := l.run(cfg)
	r.waitMarker(t, SourceDHCP, 5*time.Second)
	srv.Set(func(s *netlab.DHCPSettings) { s.NAKAll = true })
	st := waitStatus(t, r.s, 4*time.Second, "address dropped on NAK", func(st Status) bool { return st.Source == SourceNone })
	if !strings.Contains(st.LastError, "NAK") {
		t.Errorf("last error = %q, want the NAK named", st.LastError)
	}
	if got := l.addrs("eth0"); len(got) != 0 {
		t.Errorf("eth0 after NAK = %q, want no address", got)
	}
	srv.Set(func(s *netlab.DHCPSettings) { s.NAKAll = false })
	r.waitMarker(t, SourceDHCP, 5*time.Second)
}

// TestFallbackStaticThenLease: no server -> the [static] fallback within the
// timeout + 1s, DHCP keeps trying, and a later lease replaces the fallback.
func TestFallbackStaticThenLease(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(30 * time.Second)
	srv.Set(func(s *netlab.DHCPSettings) { s.Off = true })
	cfg := l.config()
	cfg.Settings = mustParse(t, "fallback.toml", `interface = "eth0"
[static]
address = "10.77.0.9/24"
gateway = "10.77.0.1"
[dhcp]
timeout = "2s"
fallback = "static"
`)
	r := l.run(cfg)
	m := r.waitMarker(t, SourceFallback, 4*time.Second)
	if took := time.Since(r.start); took > 3*time.Second || took < 2*time.Second {
		t.Errorf("fallback after %s, want between the 2s timeout and timeout + 1s", took)
	}
	if m.Get("addr") != "10.77.0.9/24" {
		t.Errorf("fallback address %s, want 10.77.0.9/24", m.Get("addr"))
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	n := len(srv.Requests())
	srv.Set(func(s *netlab.DHCPSettings) { s.Off = false })
	m = r.waitMarker(t, SourceDHCP, 5*time.Second)
	if n == 0 {
		t.Errorf("DHCP did not keep trying while on fallback")
	}
	lease := m.Get("addr")
	if got := l.addrs("eth0"); !slices.Equal(got, []string{lease}) {
		t.Errorf("eth0 addresses = %q, want only the lease %s (fallback removed)", got, lease)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
}

// TestFallbackLinkLocalConflict: another host on the segment holds the first
// link-local address this MAC would pick; the service must notice (ARP probe) and
// take another, and a later lease replaces it.
func TestFallbackLinkLocalConflict(t *testing.T) {
	l := newLab(t)
	mac, _ := net.ParseMAC("52:54:00:77:00:10")
	first := linkLocalCandidate(mac, 0)
	netlab.IP(t, "-n", l.far, "addr", "add", first.String()+"/16", "dev", "gw0")
	srv := l.startDHCP(30 * time.Second)
	srv.Set(func(s *netlab.DHCPSettings) { s.Off = true })
	cfg := l.config()
	cfg.Settings = mustParse(t, "ll.toml", "interface = \"eth0\"\n[dhcp]\ntimeout = \"2s\"\nfallback = \"link-local\"\n")
	r := l.run(cfg)
	m := r.waitMarker(t, SourceLinkLocal, 4*time.Second)
	if took := time.Since(r.start); took > 3*time.Second {
		t.Errorf("link-local fallback after %s, want within timeout + 1s", took)
	}
	ip, n, err := net.ParseCIDR(m.Get("addr"))
	if err != nil || !n.IP.Equal(net.IPv4(169, 254, 0, 0)) || n.Mask.String() != "ffff0000" {
		t.Fatalf("link-local address %q, want 169.254.x.y/16", m.Get("addr"))
	}
	if ip.Equal(first) {
		t.Fatalf("took %s although another host holds it", ip)
	}
	if got := l.defaults(); len(got) != 0 {
		t.Errorf("default routes on link-local = %q, want none", got)
	}
	srv.Set(func(s *netlab.DHCPSettings) { s.Off = false })
	m = r.waitMarker(t, SourceDHCP, 5*time.Second)
	if got := l.addrs("eth0"); !slices.Equal(got, []string{m.Get("addr")}) {
		t.Errorf("eth0 addresses = %q, want only the lease (link-local removed)", got)
	}
}

// TestNoServerNoFallback: with fallback none the interface stays without address
// and the status says why.
func TestNoServerNoFallback(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	cfg.Settings = mustParse(t, "dhcp.toml", strings.Replace(dhcpToml, `"3s"`, `"1s"`, 1))
	r := l.run(cfg)
	st := waitStatus(t, r.s, 3*time.Second, "error reported", func(st Status) bool { return st.LastError != "" })
	if !strings.Contains(st.LastError, "no DHCP lease on eth0 within 1s") || st.Source != SourceNone {
		t.Errorf("status = %+v, want no address and the missing lease named", st)
	}
	if got := l.addrs("eth0"); len(got) != 0 {
		t.Errorf("eth0 addresses = %q, want none", got)
	}
}

func TestStatusKernelView(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	cfg.Settings = mustParse(t, "static.toml", staticToml)
	r := l.run(cfg)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	st, err := Client{Socket: cfg.Socket}.Status(context.Background())
	if err != nil {
		t.Fatalf("Client.Status: %v", err)
	}
	want := Status{Interface: "eth0", MAC: "52:54:00:77:00:10", Mode: ModeStatic, Source: SourceStatic,
		Address: "10.77.0.5/24", Gateway: "10.77.0.1", DNS: []string{"10.77.0.53"},
		KernelAddresses: []string{"10.77.0.5/24"}, DefaultRoutes: []string{"default via 10.77.0.1 dev eth0"},
		ConfigOrigin: string(OriginApply), ConfigSource: "static.toml"}
	st.Since = time.Time{}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

// TestForeignDefaultRoute: a default route added behind the service's back (an old
// DHCP client, an operator's `ip route add`) is removed: never two default routes.
func TestForeignDefaultRoute(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	cfg.Settings = mustParse(t, "static.toml", staticToml)
	r := l.run(cfg)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	netlab.IP(t, "-n", l.client, "route", "add", "default", "via", "10.77.0.2", "dev", "eth0", "metric", "5")
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := l.defaults()
		if slices.Equal(got, []string{"via 10.77.0.1 dev eth0"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("default routes = %q 2s after a foreign one was added, want only via 10.77.0.1 dev eth0", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCarrierBlip: when the carrier comes back (cable moved, switch rebooted) DHCP
// asks again at once instead of waiting for T1, and the same lease is extended in
// place (no flush).
func TestCarrierBlip(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(time.Minute)
	cfg := l.config()
	cfg.Settings = mustParse(t, "dhcp.toml", dhcpToml)
	r := l.run(cfg)
	m := r.waitMarker(t, SourceDHCP, 5*time.Second)
	since := r.s.Status().Since
	time.Sleep(1100 * time.Millisecond) // the client must be older than 1s to be restarted
	n := len(srv.Requests())
	netlab.IP(t, "-n", l.far, "link", "set", "gw0", "down")
	// The kernel reports carrier changes through linkwatch, which folds a blip
	// shorter than about a second into one event: unplug for longer.
	time.Sleep(1500 * time.Millisecond)
	netlab.IP(t, "-n", l.far, "link", "set", "gw0", "up")
	deadline := time.Now().Add(4 * time.Second)
	for {
		reqs := srv.Requests()
		if slices.ContainsFunc(reqs[n:], func(s string) bool { return strings.HasPrefix(s, "REQUEST") }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new DHCP exchange within 4s of carrier up (T1 is 30s away); log %q", reqs[n:])
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := waitStatus(t, r.s, 3*time.Second, "lease extended", func(st Status) bool {
		return st.DHCP != nil && st.DHCP.State == DHCPBound && st.DHCP.Obtained.After(since)
	})
	if st.Address != m.Get("addr") || !st.Since.Equal(since) {
		t.Errorf("after the blip: address %s since %v, want %s kept in place since %v", st.Address, st.Since, m.Get("addr"), since)
	}
}
