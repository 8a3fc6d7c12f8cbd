package agent

import (
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/quantix/quantix/tests/netlab"
)

func TestDetectManagement(t *testing.T) {
	if testing.Short() {
		t.Skip("creates network namespaces")
	}
	tests := []struct {
		name      string
		setup     func(s *netlab.NS)
		iface     string // configured; "mac:<link>" uses that link's MAC
		wantIP    string
		wantIface string
		wantSrc   string
		wantErr   string
	}{
		{
			name: "configured by name",
			setup: func(s *netlab.NS) {
				s.Addr(s.Veth("mgmt0"), "10.1.0.5/24")
				s.Addr(s.Veth("mgmt1"), "10.2.0.5/24")
				s.DefaultRoute(s.Link("mgmt0"), "10.1.0.1", 0, "")
			},
			iface: "mgmt1", wantIP: "10.2.0.5", wantIface: "mgmt1", wantSrc: SourceConfigured,
		},
		{
			name: "configured by mac",
			setup: func(s *netlab.NS) {
				s.Addr(s.Veth("mgmt0"), "10.1.0.5/24")
				s.Addr(s.Veth("mgmt1"), "10.2.0.5/24")
			},
			iface: "mac:mgmt1", wantIP: "10.2.0.5", wantIface: "mgmt1", wantSrc: SourceConfigured,
		},
		{
			name:    "configured missing",
			setup:   func(s *netlab.NS) { s.Addr(s.Veth("mgmt0"), "10.1.0.5/24") },
			iface:   "eth7",
			wantErr: `management interface "eth7" not found (have lo, mgmt0p, mgmt0)`,
		},
		{
			name: "configured with only link-local",
			setup: func(s *netlab.NS) {
				s.Addr(s.Veth("mgmt0"), "169.254.10.20/16")
				s.Addr(s.Link("mgmt0"), "fe80::1234/64")
			},
			iface:   "mgmt0",
			wantErr: "mgmt0 has no usable address",
		},
		{
			name: "default route wins over lower index",
			setup: func(s *netlab.NS) {
				s.Addr(s.Veth("aaa0"), "10.1.0.5/24")
				v := s.Veth("uplink0")
				s.Addr(v, "10.3.0.2/24")
				s.DefaultRoute(v, "10.3.0.1", 0, "")
			},
			wantIP: "10.3.0.2", wantIface: "uplink0", wantSrc: SourceDefaultRoute,
		},
		{
			name: "lowest metric default route",
			setup: func(s *netlab.NS) {
				a := s.Veth("wan0")
				s.Addr(a, "10.1.0.5/24")
				s.DefaultRoute(a, "10.1.0.1", 200, "")
				b := s.Veth("wan1")
				s.Addr(b, "10.2.0.5/24")
				s.DefaultRoute(b, "10.2.0.1", 100, "")
			},
			wantIP: "10.2.0.5", wantIface: "wan1", wantSrc: SourceDefaultRoute,
		},
		{
			name: "default route source address",
			setup: func(s *netlab.NS) {
				a := s.Veth("br-mgmt")
				s.Addr(a, "10.5.0.5/24")
				s.Addr(a, "10.5.0.77/24")
				s.DefaultRoute(a, "10.5.0.1", 0, "10.5.0.77")
			},
			wantIP: "10.5.0.77", wantIface: "br-mgmt", wantSrc: SourceDefaultRoute,
		},
		{
			name: "bridge holding the default route",
			setup: func(s *netlab.NS) {
				br := s.Bridge("br0")
				s.Addr(br, "10.6.0.5/24")
				s.DefaultRoute(br, "10.6.0.1", 0, "")
			},
			wantIP: "10.6.0.5", wantIface: "br0", wantSrc: SourceDefaultRoute,
		},
		{
			name: "configured port of the management bridge",
			setup: func(s *netlab.NS) {
				br := s.Bridge("br0")
				nic := s.Veth("mgmt0")
				if err := s.Handle.LinkSetMaster(nic, br); err != nil {
					t.Fatal(err)
				}
				s.Addr(br, "10.7.0.5/24")
			},
			iface: "mgmt0", wantIP: "10.7.0.5", wantIface: "br0", wantSrc: SourceConfigured,
		},
		{
			name: "ipv6 only",
			setup: func(s *netlab.NS) {
				a := s.Veth("v6net")
				s.Addr(a, "fe80::5/64")
				s.Addr(a, "2001:db8::5/64")
				s.DefaultRoute(a, "2001:db8::1", 0, "")
			},
			wantIP: "2001:db8::5", wantIface: "v6net", wantSrc: SourceDefaultRoute,
		},
		{
			name: "only virtual interfaces",
			setup: func(s *netlab.NS) {
				s.Addr(s.Bridge("virbr0"), "192.168.122.1/24")
				s.Addr(s.Veth("veth0"), "10.9.0.1/24")
			},
			wantErr: "no management address: no default route and no physical interface with an address; interfaces: virbr0 (bridge), veth0p (veth), veth0 (veth)",
		},
		{
			name: "default route interface with only link-local",
			setup: func(s *netlab.NS) {
				a := s.Veth("ll0")
				s.Addr(a, "169.254.3.3/16")
				s.DefaultRoute(a, "169.254.0.1", 0, "")
			},
			wantErr: "ll0 (default route, no usable address)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := netlab.New(t)
			h := s.Handle
			tt.setup(s)
			iface := tt.iface
			if name, ok := strings.CutPrefix(iface, "mac:"); ok {
				iface = s.Link(name).Attrs().HardwareAddr.String()
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

// TestDetectManagementFollowsChanges checks that nothing is cached: a new address
// and a moved default route are seen by the next call.
func TestDetectManagementFollowsChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("creates network namespaces")
	}
	s := netlab.New(t)
	h := s.Handle
	a := s.Veth("mgmt0")
	s.Addr(a, "10.10.0.5/24")
	s.DefaultRoute(a, "10.10.0.1", 0, "")
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
	s.Readdress(a, "10.10.0.5/24", "10.10.0.1", "10.20.0.9/24", "10.20.0.1")
	want("10.20.0.9", "mgmt0")
	b := s.Veth("mgmt1")
	s.Addr(b, "10.30.0.3/24")
	s.DefaultRoute(b, "10.30.0.1", 10, "")
	s.DelDefaultRoute(a, "10.20.0.1")
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

func TestManagementBridge(t *testing.T) {
	ether := func(name string, index, master int) netlink.LinkAttrs {
		return netlink.LinkAttrs{Name: name, Index: index, MasterIndex: master, EncapType: "ether"}
	}
	br0 := &netlink.Bridge{LinkAttrs: ether("br0", 3, 0)}
	virbr0 := &netlink.Bridge{LinkAttrs: ether("virbr0", 4, 0)}
	links := []netlink.Link{
		&netlink.Device{LinkAttrs: ether("eth0", 2, 3)}, br0,
		virbr0, &netlink.Tuntap{LinkAttrs: ether("vnet0", 5, 4)}, &netlink.Veth{LinkAttrs: ether("veth0", 6, 4)},
		&netlink.Bridge{LinkAttrs: ether("empty0", 7, 0)},
		&netlink.Device{LinkAttrs: ether("eth1", 8, 0)},
	}
	want := map[string]bool{"br0": true}
	for _, l := range links {
		if got := managementBridge(l, links); got != want[l.Attrs().Name] {
			t.Errorf("managementBridge(%s) = %v, want %v", l.Attrs().Name, got, want[l.Attrs().Name])
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
