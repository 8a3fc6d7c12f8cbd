package network

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/quantix/quantix"
	"github.com/vishvananda/netlink"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name, toml string
		want       plan
	}{
		{"empty file is the default", "", plan{iface: "auto", mode: "dhcp", timeout: 10 * time.Second, fallback: "link-local"}},
		{"design example", `interface = "auto"
mode = "dhcp"
dns = ["10.0.0.1"]
[static]
address = "10.0.0.5/24"
gateway = "10.0.0.1"
[dhcp]
timeout = "10s"
fallback = "static"
`, plan{iface: "auto", mode: "dhcp", dns: []net.IP{net.ParseIP("10.0.0.1")}, timeout: 10 * time.Second, fallback: "static",
			static: &staticPlan{addr: &net.IPNet{IP: net.IPv4(10, 0, 0, 5).To4(), Mask: net.CIDRMask(24, 32)}, gw: net.IPv4(10, 0, 0, 1).To4()}}},
		{"static without gateway", "mode = \"static\"\ninterface = \"52:54:00:AB:CD:EF\"\n[static]\naddress = \"192.168.1.10/16\"\n",
			plan{iface: "52:54:00:ab:cd:ef", mode: "static", timeout: 10 * time.Second, fallback: "static",
				static: &staticPlan{addr: &net.IPNet{IP: net.IPv4(192, 168, 1, 10).To4(), Mask: net.CIDRMask(16, 32)}}}},
		{"/32 point to point", "mode = \"static\"\n[static]\naddress = \"10.1.2.3/32\"\n",
			plan{iface: "auto", mode: "static", timeout: 10 * time.Second, fallback: "static",
				static: &staticPlan{addr: &net.IPNet{IP: net.IPv4(10, 1, 2, 3).To4(), Mask: net.CIDRMask(32, 32)}}}},
		{"dhcp none", "[dhcp]\ntimeout = \"1m30s\"\nfallback = \"none\"\n", plan{iface: "auto", mode: "dhcp", timeout: 90 * time.Second, fallback: "none"}},
		{"bridge", "interface = \"eth0\"\nbridge = \"br0\"\n", plan{iface: "eth0", bridge: "br0", mode: "dhcp", timeout: 10 * time.Second, fallback: "link-local"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("network.toml", []byte(tc.toml))
			if err != nil {
				t.Fatalf("Parse = %v", err)
			}
			got, err := s.compile("")
			if err != nil {
				t.Fatal(err)
			}
			got.source, got.raw = "", nil
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(plan{}, staticPlan{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tc.toml, diff)
			}
		})
	}
}

// TestBridgeDefault: an absent bridge key means the image's default, a present one
// (even "") overrides it; the default is checked against the interface too.
func TestBridgeDefault(t *testing.T) {
	tests := []struct {
		toml, image, want, wantErr string
	}{
		{"interface = \"eth0\"\n", "br0", "br0", ""},
		{"interface = \"eth0\"\n", "", "", ""},
		{"interface = \"eth0\"\nbridge = \"\"\n", "br0", "", ""},
		{"interface = \"eth0\"\nbridge = \"mgmt0\"\n", "br0", "mgmt0", ""},
		{"interface = \"br0\"\n", "br0", "", `n.toml: bridge: "br0" (the image default) is the interface itself`},
	}
	for _, tc := range tests {
		s, err := Parse("n.toml", []byte(tc.toml))
		if err != nil {
			t.Fatalf("Parse(%q) = %v", tc.toml, err)
		}
		p, err := s.compile(tc.image)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("compile(%q, image %q) = %v, want error %q", tc.toml, tc.image, err, tc.wantErr)
			}
		case err != nil || p.bridge != tc.want:
			t.Errorf("compile(%q, image %q) = bridge %q, %v; want %q", tc.toml, tc.image, p.bridge, err, tc.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name, toml string
		want       string // the whole message after "invalid network settings: "
	}{
		{"bad cidr", "mode = \"static\"\n[static]\naddress = \"10.0.0.300/24\"\n", `n.toml:3: static.address: "10.0.0.300/24" is not an address with prefix length like 10.0.0.5/24`},
		{"no prefix", "[static]\naddress = \"10.0.0.5\"\n", `n.toml:2: static.address: "10.0.0.5" is not an address with prefix length like 10.0.0.5/24`},
		{"ipv6", "[static]\naddress = \"fd00::5/64\"\n", `n.toml:2: static.address: "fd00::5/64" is not IPv4`},
		{"network address", "[static]\naddress = \"10.0.0.0/24\"\n", `n.toml:2: static.address: 10.0.0.0/24 is the network address of 10.0.0.0/24`},
		{"broadcast address", "[static]\naddress = \"10.0.0.255/24\"\n", `n.toml:2: static.address: 10.0.0.255/24 is the broadcast address of 10.0.0.0/24`},
		{"gateway outside", "[static]\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.1.1\"\n", `n.toml:3: static.gateway: 10.0.1.1 is not inside 10.0.0.0/24`},
		{"gateway is self", "[static]\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.0.5\"\n", `n.toml:3: static.gateway: 10.0.0.5 is the address itself`},
		{"gateway not ip", "[static]\naddress = \"10.0.0.5/24\"\ngateway = \"router\"\n", `n.toml:3: static.gateway: "router" is not an IPv4 address`},
		{"static without table", "mode = \"static\"\n", `n.toml:1: static: mode = "static" needs a [static] table with address and gateway`},
		{"missing address", "mode = \"static\"\n[static]\ngateway = \"10.0.0.1\"\n", `n.toml:2: static.address: missing (e.g. "10.0.0.5/24")`},
		{"bad mode", "mode = \"manual\"\n", `n.toml:1: mode: "manual" is not a mode (use "dhcp" or "static")`},
		{"bad timeout", "[dhcp]\ntimeout = \"10\"\n", `n.toml:2: dhcp.timeout: "10" is not a duration (use e.g. "10s")`},
		{"zero timeout", "[dhcp]\ntimeout = \"0s\"\n", `n.toml:2: dhcp.timeout: 0s is out of range (more than 0s, at most 10m0s)`},
		{"fallback static without static", "[dhcp]\nfallback = \"static\"\n", `n.toml:2: dhcp.fallback: "static" needs a [static] table with address and gateway`},
		{"bad fallback", "[dhcp]\nfallback = \"zeroconf\"\n", `n.toml:2: dhcp.fallback: "zeroconf" is not a fallback (use "static", "link-local" or "none")`},
		{"bad dns", "dns = [\"10.0.0.1\", \"ns1\"]\n", `n.toml:1: dns: entry 2: "ns1" is not an IP address`},
		{"bad mac", "interface = \"52:54:00:zz:00:01\"\n", `n.toml:1: interface: "52:54:00:zz:00:01" is not a MAC address like 52:54:00:12:34:56`},
		{"long name", "interface = \"averyveryverylongname\"\n", `n.toml:1: interface: "averyveryverylongname" is longer than 15 characters (use a name like eth0, a MAC address or "auto")`},
		{"unknown key", "mode = \"dhcp\"\n[dhcp]\nretries = 3\n", `n.toml:3: unknown key "dhcp.retries"`},
		{"bad bridge", "interface = \"eth0\"\nbridge = \"br 0\"\n", `n.toml:2: bridge: "br 0" holds a character interface names cannot hold (use a name like br0, or "" to keep the address on the interface)`},
		{"long bridge", "bridge = \"management-bridge\"\n", `n.toml:1: bridge: "management-bridge" is longer than 15 characters (use a name like br0, or "" to keep the address on the interface)`},
		{"bridge is the interface", "interface = \"eth0\"\nbridge = \"eth0\"\n", `n.toml:2: bridge: "eth0" is the interface itself: the bridge needs a name of its own (e.g. br0), or set bridge = "" to keep the address on eth0`},
		{"wrong type", "dns = \"10.0.0.1\"\n", ""},
		{"syntax", "mode = dhcp\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("n.toml", []byte(tc.toml))
			if err == nil {
				t.Fatalf("Parse(%q) = nil error", tc.toml)
			}
			if !errors.Is(err, ErrInvalidSettings) {
				t.Errorf("Parse(%q) = %v, does not wrap ErrInvalidSettings", tc.toml, err)
			}
			got := strings.TrimPrefix(err.Error(), ErrInvalidSettings.Error()+": ")
			if tc.want == "" {
				if !strings.HasPrefix(got, "n.toml") {
					t.Errorf("Parse(%q) = %q, want it to name the file", tc.toml, got)
				}
				return
			}
			if got != tc.want {
				t.Errorf("Parse(%q) =\n %q\nwant\n %q", tc.toml, got, tc.want)
			}
		})
	}
}

func TestParseKernelIP(t *testing.T) {
	tests := []struct {
		value  string
		ok     bool
		want   Settings // Source is not compared
		errSub string
	}{
		{value: "dhcp", ok: true, want: Settings{Interface: "auto", Mode: "dhcp"}},
		{value: "on", ok: true, want: Settings{Interface: "auto", Mode: "dhcp"}},
		{value: "off"},
		{value: "none"},
		{value: "10.0.0.5::10.0.0.1:255.255.255.0:node1:eth0:off", ok: true,
			want: Settings{Interface: "eth0", Mode: "static", Static: &StaticSettings{Address: "10.0.0.5/24", Gateway: "10.0.0.1"}}},
		{value: "10.0.0.5:10.0.0.9:10.0.0.1:255.255.0.0::eth1:none:10.0.0.53:10.0.0.54:10.0.0.123", ok: true,
			want: Settings{Interface: "eth1", Mode: "static", DNS: []string{"10.0.0.53", "10.0.0.54"}, Static: &StaticSettings{Address: "10.0.0.5/16", Gateway: "10.0.0.1"}}},
		{value: "192.168.1.7::192.168.1.1:24::eth0", ok: true,
			want: Settings{Interface: "eth0", Mode: "static", Static: &StaticSettings{Address: "192.168.1.7/24", Gateway: "192.168.1.1"}}},
		{value: "10.1.2.3", ok: true, want: Settings{Interface: "auto", Mode: "static", Static: &StaticSettings{Address: "10.1.2.3/8"}}},
		{value: "172.16.1.3:::::", ok: true, want: Settings{Interface: "auto", Mode: "static", Static: &StaticSettings{Address: "172.16.1.3/16"}}},
		{value: ":::::eth0:dhcp", ok: true, want: Settings{Interface: "eth0", Mode: "dhcp"}},
		{value: ":::::eth0:any", ok: true, want: Settings{Interface: "eth0", Mode: "dhcp"}},
		{value: ":::::eth0:off"},
		{value: "::::::", ok: true, want: Settings{Interface: "auto", Mode: "dhcp"}},
		{value: "10.0.0.5::10.0.0.1:255.255.255.0::eth0:dhcp", ok: true,
			want: Settings{Interface: "eth0", Mode: "static", Static: &StaticSettings{Address: "10.0.0.5/24", Gateway: "10.0.0.1"}}},
		{value: "10.0.0.5::10.1.0.1:255.255.255.0::eth0:off", errSub: "static.gateway: 10.1.0.1 is not inside 10.0.0.0/24"},
		{value: "10.0.0.500::10.0.0.1:255.255.255.0::eth0:off", errSub: `client-ip "10.0.0.500"`},
		{value: "10.0.0.5::10.0.0.1:255.0.255.0::eth0:off", errSub: `netmask "255.0.255.0" is not contiguous`},
		{value: "10.0.0.5::10.0.0.1:33::eth0:off", errSub: `netmask "33"`},
		{value: "10.0.0.5::10.0.0.1:255.255.255.0::eth0:static", errSub: `autoconf "static"`},
		{value: "::10.0.0.1:255.255.255.0::eth0:off", errSub: "without client-ip"},
		{value: "bogus", errSub: `"bogus" is neither`},
		{value: "1:2:3:4:5:6:7:8:9:10:11", errSub: "11 fields"},
		{value: "10.0.0.5:::::::x.y", errSub: `dns "x.y"`},
	}
	for _, tc := range tests {
		got, ok, err := ParseKernelIP(tc.value)
		if tc.errSub != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errSub) || !strings.Contains(err.Error(), "ip="+tc.value) {
				t.Errorf("ParseKernelIP(%q) = %v, want an error naming ip=%s and %q", tc.value, err, tc.value, tc.errSub)
			}
			continue
		}
		if err != nil || ok != tc.ok {
			t.Errorf("ParseKernelIP(%q) = ok %v, %v; want ok %v", tc.value, ok, err, tc.ok)
			continue
		}
		got.Source = ""
		if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreUnexported(Settings{}), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ParseKernelIP(%q) (-want +got):\n%s", tc.value, diff)
		}
	}
}

func TestResolvePrecedence(t *testing.T) {
	file := []byte("interface = \"eth1\"\nmode = \"static\"\n[static]\naddress = \"10.9.0.2/24\"\ngateway = \"10.9.0.1\"\n")
	tests := []struct {
		name       string
		cmdline    string
		file       []byte
		wantOrigin Origin
		wantMode   string
		wantIface  string
		wantSource string
	}{
		{"nothing: image default", "console=ttyS0 quiet", nil, OriginDefault, "dhcp", "auto", "image default"},
		{"ip=off: image default", "ip=off", nil, OriginDefault, "dhcp", "auto", "image default"},
		{"kernel ip= over default", "console=ttyS0 ip=10.0.0.5::10.0.0.1:255.255.255.0:n1:eth0:off quiet", nil, OriginCmdline, "static", "eth0", "kernel command line ip=10.0.0.5::10.0.0.1:255.255.255.0:n1:eth0:off"},
		{"kernel ip=dhcp", "ip=dhcp", nil, OriginCmdline, "dhcp", "auto", "kernel command line ip=dhcp"},
		{"file over kernel", "ip=dhcp", file, OriginFile, "static", "eth1", "/quantix/network/network.toml"},
		{"file over default", "", file, OriginFile, "static", "eth1", "/quantix/network/network.toml"},
		{"empty file is a file", "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:off", []byte{}, OriginFile, "", "", "/quantix/network/network.toml"},
		{"after --: not the kernel's", "quiet -- ip=dhcp", nil, OriginDefault, "dhcp", "auto", "image default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, origin, err := Resolve(tc.cmdline, quantix.NetworkConfig, tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if origin != tc.wantOrigin || s.Mode != tc.wantMode || s.Interface != tc.wantIface || s.Source != tc.wantSource {
				t.Errorf("Resolve = origin %q mode %q iface %q source %q; want %q %q %q %q",
					origin, s.Mode, s.Interface, s.Source, tc.wantOrigin, tc.wantMode, tc.wantIface, tc.wantSource)
			}
		})
	}
	if _, _, err := Resolve("ip=10.0.0.5::10.1.0.1:255.255.255.0::eth0:off", "", nil); err == nil {
		t.Errorf("Resolve with a bad ip= succeeded")
	}
	if _, _, err := Resolve("ip=dhcp", "/q/network.toml", []byte("mode = 1\n")); err == nil || !strings.Contains(err.Error(), "/q/network.toml") {
		t.Errorf("Resolve with a bad file = %v, want the file named", err)
	}
}

// TestServicePrecedence starts the service on the lab with each layer present.
func TestServicePrecedence(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	// Kernel command line only: its static address is used.
	writeFile(t, cfg.CmdlinePath, "console=ttyS0 ip=10.77.0.31::10.77.0.1:255.255.255.0:n1:eth0:off\n")
	r := l.run(cfg)
	m := r.waitMarker(t, SourceStatic, 5*time.Second)
	if m.Get("addr") != "10.77.0.31/24" {
		t.Errorf("from ip=: addr %s, want 10.77.0.31/24", m.Get("addr"))
	}
	if st := r.s.Status(); st.ConfigOrigin != string(OriginCmdline) {
		t.Errorf("origin %q, want kernel command line", st.ConfigOrigin)
	}
	r.cancel()
	<-r.done
	r.done <- nil

	// The persistent file beats the command line, and is copied to the session path.
	writeFile(t, cfg.PersistentPath, strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.32/24", 1))
	r = l.run(cfg)
	m = r.waitMarker(t, SourceStatic, 5*time.Second)
	if m.Get("addr") != "10.77.0.32/24" {
		t.Errorf("from the file: addr %s, want 10.77.0.32/24", m.Get("addr"))
	}
	if b, err := os.ReadFile(cfg.SessionPath); err != nil || !strings.Contains(string(b), "10.77.0.32/24") {
		t.Errorf("session copy = %q, %v", b, err)
	}
	if got := l.addrs("eth0"); len(got) != 1 || got[0] != "10.77.0.32/24" {
		t.Errorf("eth0 = %q, want only the file's address", got)
	}
	r.cancel()
	<-r.done
	r.done <- nil

	// Neither: the image default, DHCP on the automatic interface; a veth is never
	// chosen automatically, and the status says so.
	os.Remove(cfg.PersistentPath)
	os.Remove(cfg.CmdlinePath)
	r = l.run(cfg)
	st := waitStatus(t, r.s, 5*time.Second, "default with no candidate", func(st Status) bool { return st.LastError != "" })
	if st.ConfigOrigin != string(OriginDefault) || st.Mode != ModeDHCP || !strings.Contains(st.LastError, "eth0: veth") {
		t.Errorf("status = %+v, want the image default and eth0 skipped as veth", st)
	}
}

// TestAutoInterface ranks interfaces by what sysfs says about them (the hardware is
// faked with a sysfs tree; links are netlink values).
func TestAutoInterface(t *testing.T) {
	sys := t.TempDir()
	mk := func(name string, files ...string) {
		dir := filepath.Join(sys, "class/net", name)
		os.MkdirAll(dir, 0o755)
		for _, f := range files {
			if strings.Contains(f, "=") {
				k, v, _ := strings.Cut(f, "=")
				os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o644)
			} else {
				os.MkdirAll(filepath.Join(dir, f), 0o755)
			}
		}
	}
	mk("enp1s0", "device", "type=1")
	mk("enp2s0", "device", "type=1")
	mk("wlan0", "device", "type=1", "wireless")
	mk("wlp3s0", "device", "type=1", "uevent=DEVTYPE=wlan")
	mk("ib0", "device", "type=32")
	mk("br0", "bridge", "type=1")
	mk("veth1", "type=1")
	mk("tap0", "type=1", "tun_flags=0x1002")
	mk("eno1", "device", "type=1")
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	dev := func(name string, idx int, f func(a *netlink.LinkAttrs)) netlink.Link {
		a := netlink.LinkAttrs{Name: name, Index: idx, HardwareAddr: mac}
		if f != nil {
			f(&a)
		}
		return &netlink.Device{LinkAttrs: a}
	}
	tests := []struct {
		link     netlink.Link
		wantRank int
	}{
		{dev("enp1s0", 2, nil), 0},
		{dev("wlan0", 3, nil), 1},
		{dev("wlp3s0", 4, nil), 1},
		{dev("lo", 1, func(a *netlink.LinkAttrs) { a.Flags = net.FlagLoopback }), -1},
		{dev("ib0", 5, nil), -1},
		{&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", Index: 6, HardwareAddr: mac}}, -1},
		{&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth1", Index: 7, HardwareAddr: mac}}, -1},
		{&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0", Index: 8, HardwareAddr: mac}}, -1},
		{dev("eno1", 9, func(a *netlink.LinkAttrs) { a.MasterIndex = 6 }), -1}, // bridge or bond port
		{dev("enx0", 10, nil), -1}, // no sysfs device: virtual
	}
	var e netEnv
	for _, tc := range tests {
		if got, why := e.linkRank(tc.link, nil, sys); got != tc.wantRank {
			t.Errorf("linkRank(%s) = %d (%s), want %d", tc.link.Attrs().Name, got, why, tc.wantRank)
		}
	}
}

// TestAutoInterfaceInNamespace: with only virtual interfaces, the automatic choice
// fails and names what it skipped; by name and by MAC the veth is found.
func TestAutoInterfaceInNamespace(t *testing.T) {
	l := newLab(t)
	env, err := openNetEnv(l.clientPath)
	if err != nil {
		t.Fatal(err)
	}
	defer env.close()
	if _, err := env.findLink("auto", nil, l.config().SysfsRoot); !errors.Is(err, ErrNoInterface) || !strings.Contains(err.Error(), "lo: loopback") || !strings.Contains(err.Error(), "eth0: veth") {
		t.Errorf("findLink(auto) = %v, want ErrNoInterface naming lo and eth0", err)
	}
	for _, sel := range []string{"eth0", "52:54:00:77:00:10"} {
		k, err := env.findLink(sel, nil, "/nonexistent")
		if err != nil || k.Attrs().Name != "eth0" {
			t.Errorf("findLink(%s) = %v, %v; want eth0", sel, k, err)
		}
	}
	if _, err := env.findLink("eth9", nil, "/sys"); !errors.Is(err, ErrNoInterface) {
		t.Errorf("findLink(eth9) = %v, want ErrNoInterface", err)
	}
}

func TestLinkLocalCandidates(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:77:00:10")
	seen := map[string]bool{}
	for n := 0; n < 1000; n++ {
		ip := linkLocalCandidate(mac, n)
		if ip[0] != 169 || ip[1] != 254 || ip[2] < 1 || ip[2] > 254 {
			t.Fatalf("candidate %d = %s, outside 169.254.1.0-169.254.254.255", n, ip)
		}
		seen[ip.String()] = true
	}
	if len(seen) < 990 {
		t.Errorf("1000 candidates gave only %d distinct addresses", len(seen))
	}
	if !linkLocalCandidate(mac, 0).Equal(linkLocalCandidate(mac, 0)) {
		t.Errorf("candidate 0 not stable for one MAC")
	}
	other, _ := net.ParseMAC("52:54:00:77:00:11")
	if linkLocalCandidate(mac, 0).Equal(linkLocalCandidate(other, 0)) {
		t.Errorf("two MACs start with the same candidate")
	}
}
