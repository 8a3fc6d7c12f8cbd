package agent

import (
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNetns creates a network namespace for the test and returns a netlink handle
// into it. The namespace disappears when the handle and descriptor are closed.
func newNetns(t *testing.T) *netlink.Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("network namespace tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run them as root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("return to the original network namespace: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in namespace: %v", err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return h
}

// nsSetup builds interfaces and routes inside a test namespace.
type nsSetup struct {
	t *testing.T
	h *netlink.Handle
}

func (s nsSetup) link(l netlink.Link) netlink.Link {
	s.t.Helper()
	if err := s.h.LinkAdd(l); err != nil {
		s.t.Fatalf("add %s %s: %v", l.Type(), l.Attrs().Name, err)
	}
	got, err := s.h.LinkByName(l.Attrs().Name)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.h.LinkSetUp(got); err != nil {
		s.t.Fatalf("set %s up: %v", l.Attrs().Name, err)
	}
	return got
}

// veth adds a veth pair, name and name+"p", both up, and returns name. (The dummy
// driver is not in every kernel; veth is.)
func (s nsSetup) veth(name string) netlink.Link {
	s.t.Helper()
	l := s.link(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	if err := s.h.LinkSetUp(mustLink(s, name+"p")); err != nil {
		s.t.Fatal(err)
	}
	return l
}

func (s nsSetup) addr(l netlink.Link, cidr string) {
	s.t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		s.t.Fatal(err)
	}
	a.Flags = unix.IFA_F_NODAD // no duplicate address detection: usable at once
	if err := s.h.AddrAdd(l, a); err != nil {
		s.t.Fatalf("add %s to %s: %v", cidr, l.Attrs().Name, err)
	}
}

func (s nsSetup) delAddr(l netlink.Link, cidr string) {
	s.t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.h.AddrDel(l, a); err != nil {
		s.t.Fatalf("delete %s from %s: %v", cidr, l.Attrs().Name, err)
	}
}

func (s nsSetup) defaultRoute(l netlink.Link, gw string, metric int, src string) {
	s.t.Helper()
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw), Priority: metric}
	if src != "" {
		r.Src = net.ParseIP(src)
	}
	if err := s.h.RouteAdd(r); err != nil {
		s.t.Fatalf("add default via %s dev %s: %v", gw, l.Attrs().Name, err)
	}
}

func TestDetectManagement(t *testing.T) {
	if testing.Short() {
		t.Skip("creates network namespaces")
	}
	tests := []struct {
		name      string
		setup     func(s nsSetup)
		iface     string // configured; "mac:<link>" uses that link's MAC
		wantIP    string
		wantIface string
		wantSrc   string
		wantErr   string
	}{
		{
			name: "configured by name",
			setup: func(s nsSetup) {
				s.addr(s.veth("mgmt0"), "10.1.0.5/24")
				s.addr(s.veth("mgmt1"), "10.2.0.5/24")
				s.defaultRoute(mustLink(s, "mgmt0"), "10.1.0.1", 0, "")
			},
			iface: "mgmt1", wantIP: "10.2.0.5", wantIface: "mgmt1", wantSrc: SourceConfigured,
		},
		{
			name: "configured by mac",
			setup: func(s nsSetup) {
				s.addr(s.veth("mgmt0"), "10.1.0.5/24")
				s.addr(s.veth("mgmt1"), "10.2.0.5/24")
			},
			iface: "mac:mgmt1", wantIP: "10.2.0.5", wantIface: "mgmt1", wantSrc: SourceConfigured,
		},
		{
			name:    "configured missing",
			setup:   func(s nsSetup) { s.addr(s.veth("mgmt0"), "10.1.0.5/24") },
			iface:   "eth7",
			wantErr: `management interface "eth7" not found (have lo, mgmt0p, mgmt0)`,
		},
		{
			name: "configured with only link-local",
			setup: func(s nsSetup) {
				s.addr(s.veth("mgmt0"), "169.254.10.20/16")
				s.addr(mustLink(s, "mgmt0"), "fe80::1234/64")
			},
			iface:   "mgmt0",
			wantErr: "mgmt0 has no usable address",
		},
		{
			name: "default route wins over lower index",
			setup: func(s nsSetup) {
				s.addr(s.veth("aaa0"), "10.1.0.5/24")
				v := s.veth("uplink0")
				s.addr(v, "10.3.0.2/24")
				s.defaultRoute(v, "10.3.0.1", 0, "")
			},
			wantIP: "10.3.0.2", wantIface: "uplink0", wantSrc: SourceDefaultRoute,
		},
		{
			name: "lowest metric default route",
			setup: func(s nsSetup) {
				a := s.veth("wan0")
				s.addr(a, "10.1.0.5/24")
				s.defaultRoute(a, "10.1.0.1", 200, "")
				b := s.veth("wan1")
				s.addr(b, "10.2.0.5/24")
				s.defaultRoute(b, "10.2.0.1", 100, "")
			},
			wantIP: "10.2.0.5", wantIface: "wan1", wantSrc: SourceDefaultRoute,
		},
		{
			name: "default route source address",
			setup: func(s nsSetup) {
				a := s.veth("br-mgmt")
				s.addr(a, "10.5.0.5/24")
				s.addr(a, "10.5.0.77/24")
				s.defaultRoute(a, "10.5.0.1", 0, "10.5.0.77")
			},
			wantIP: "10.5.0.77", wantIface: "br-mgmt", wantSrc: SourceDefaultRoute,
		},
		{
			name: "bridge holding the default route",
			setup: func(s nsSetup) {
				br := s.link(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}})
				s.addr(br, "10.6.0.5/24")
				s.defaultRoute(br, "10.6.0.1", 0, "")
			},
			wantIP: "10.6.0.5", wantIface: "br0", wantSrc: SourceDefaultRoute,
		},
		{
			name: "ipv6 only",
			setup: func(s nsSetup) {
				a := s.veth("v6net")
				s.addr(a, "fe80::5/64")
				s.addr(a, "2001:db8::5/64")
				s.defaultRoute(a, "2001:db8::1", 0, "")
			},
			wantIP: "2001:db8::5", wantIface: "v6net", wantSrc: SourceDefaultRoute,
		},
		{
			name: "only virtual interfaces",
			setup: func(s nsSetup) {
				s.addr(s.link(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "virbr0"}}), "192.168.122.1/24")
				s.addr(s.veth("veth0"), "10.9.0.1/24")
			},
			wantErr: "no management address: no default route and no physical interface with an address; interfaces: virbr0 (bridge), veth0p (veth), veth0 (veth)",
		},
		{
			name: "default route interface with only link-local",
			setup: func(s nsSetup) {
				a := s.veth("ll0")
				s.addr(a, "169.254.3.3/16")
				s.defaultRoute(a, "169.254.0.1", 0, "")
			},
			wantErr: "ll0 (default route, no usable address)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newNetns(t)
			s := nsSetup{t, h}
			tt.setup(s)
			iface := tt.iface
			if name, ok := strings.CutPrefix(iface, "mac:"); ok {
				iface = mustLink(s, name).Attrs().HardwareAddr.String()
			}
			got, err := DetectManagement(h, iface)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DetectManagement() = %+v, %v, want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DetectManagement() error: %v", err)
			}
			if got.IP.String() != tt.wantIP || got.Interface != tt.wantIface || got.Source != tt.wantSrc {
				t.Errorf("DetectManagement() = %s on %s (%s), want %s on %s (%s)", got.IP, got.Interface, got.Source, tt.wantIP, tt.wantIface, tt.wantSrc)
			}
		})
	}
}

func mustLink(s nsSetup, name string) netlink.Link {
	s.t.Helper()
	l, err := s.h.LinkByName(name)
	if err != nil {
		s.t.Fatal(err)
	}
	return l
}

// TestDetectManagementFollowsChanges checks that nothing is cached: a new address
// and a moved default route are seen by the next call.
func TestDetectManagementFollowsChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("creates network namespaces")
	}
	h := newNetns(t)
	s := nsSetup{t, h}
	a := s.veth("mgmt0")
	s.addr(a, "10.10.0.5/24")
	s.defaultRoute(a, "10.10.0.1", 0, "")
	want := func(ip, iface string) {
		t.Helper()
		m, err := DetectManagement(h, "")
		if err != nil {
			t.Fatal(err)
		}
		if m.IP.String() != ip || m.Interface != iface {
			t.Fatalf("DetectManagement() = %s on %s, want %s on %s", m.IP, m.Interface, ip, iface)
		}
	}
	want("10.10.0.5", "mgmt0")
	// Static readdressing as the network service does it: new address, old
	// address and route gone, new default route.
	s.addr(a, "10.20.0.9/24")
	if err := h.RouteDel(&netlink.Route{LinkIndex: a.Attrs().Index, Gw: net.ParseIP("10.10.0.1")}); err != nil {
		t.Fatal(err)
	}
	s.delAddr(a, "10.10.0.5/24")
	s.defaultRoute(a, "10.20.0.1", 0, "")
	want("10.20.0.9", "mgmt0")
	b := s.veth("mgmt1")
	s.addr(b, "10.30.0.3/24")
	s.defaultRoute(b, "10.30.0.1", 10, "")
	if err := h.RouteDel(&netlink.Route{LinkIndex: a.Attrs().Index, Gw: net.ParseIP("10.20.0.1")}); err != nil {
		t.Fatal(err)
	}
	want("10.30.0.3", "mgmt1")
}

func TestPhysical(t *testing.T) {
	ether := netlink.LinkAttrs{Name: "x", EncapType: "ether"}
	loop := netlink.LinkAttrs{Name: "lo", EncapType: "loopback", Flags: net.FlagLoopback}
	tests := []struct {
		link netlink.Link
		want bool
	}{
		{&netlink.Device{LinkAttrs: ether}, true},
		{&netlink.Device{LinkAttrs: loop}, false},
		{&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "wwan0", EncapType: "none"}}, false},
		{&netlink.Dummy{LinkAttrs: ether}, false},
		{&netlink.Veth{LinkAttrs: ether}, false},
		{&netlink.Bridge{LinkAttrs: ether}, false},
		{&netlink.Tuntap{LinkAttrs: ether}, false},
		{&netlink.Vlan{LinkAttrs: ether}, false},
		{&netlink.Macvlan{LinkAttrs: ether}, false},
	}
	for _, tt := range tests {
		if got := physical(tt.link); got != tt.want {
			t.Errorf("physical(%s %s) = %v, want %v", tt.link.Type(), tt.link.Attrs().EncapType, got, tt.want)
		}
	}
}

// TestDetectManagementOwnNamespace uses the agent's own namespace (nil handle):
// loopback exists everywhere and never counts as a management address.
func TestDetectManagementOwnNamespace(t *testing.T) {
	_, err := DetectManagement(nil, "lo")
	if err == nil || !strings.Contains(err.Error(), "lo has no usable address") {
		t.Errorf("DetectManagement(nil, lo) error = %v, want no usable address", err)
	}
}
