package agent

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// How the management interface was chosen (docs/design.md §4).
const (
	SourceConfigured    = "configured"
	SourceDefaultRoute  = "default-route"
	SourceFirstPhysical = "first-physical"
)

// Management is the host's management address as found now.
type Management struct {
	IP        netip.Addr
	Interface string
	Source    string
}

// DetectManagement finds the management address with netlink, fresh on every call:
// the configured interface (a name or MAC address; a bridge port stands for its
// bridge) when iface is set, else the
// interface holding the default route (lowest metric, IPv4 before IPv6), else the
// first physical Ethernet or Wi-Fi interface with an address. Loopback and
// link-local addresses (169.254/16, fe80::/10) never count; bridges, taps, veths
// and other virtual interfaces are skipped by the last rule only, except a bridge
// over a physical NIC: that is the management bridge (br0 on Quantix-OS,
// docs/design.md §4 and §13), which holds the address its port does not. h nil
// means the agent's own network namespace.
func DetectManagement(h *netlink.Handle, iface string) (Management, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	links, err := h.LinkList()
	if err != nil {
		return Management{}, fmt.Errorf("list interfaces: %w", err)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })

	if iface != "" {
		l := findLink(links, iface)
		if l == nil {
			return Management{}, fmt.Errorf("management interface %q not found (have %s)", iface, linkNames(links))
		}
		if m := linkByIndex(links, l.Attrs().MasterIndex); m != nil && m.Type() == "bridge" {
			l = m // the NIC under the management bridge: the address is on the bridge
		}
		ip, err := usableAddr(h, l)
		if err != nil {
			return Management{}, err
		}
		if !ip.IsValid() {
			return Management{}, fmt.Errorf("management interface %s has no usable address (none, or only link-local)", l.Attrs().Name)
		}
		return Management{IP: ip, Interface: l.Attrs().Name, Source: SourceConfigured}, nil
	}

	var skipped []string
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		r, ok, err := defaultRoute(h, family)
		if err != nil {
			return Management{}, err
		}
		if !ok {
			continue
		}
		l := linkByIndex(links, r.LinkIndex)
		if l == nil {
			continue
		}
		if src, ok := netip.AddrFromSlice(r.Src); ok && usable(src.Unmap()) {
			return Management{IP: src.Unmap(), Interface: l.Attrs().Name, Source: SourceDefaultRoute}, nil
		}
		ip, err := usableAddr(h, l)
		if err != nil {
			return Management{}, err
		}
		if ip.IsValid() {
			return Management{IP: ip, Interface: l.Attrs().Name, Source: SourceDefaultRoute}, nil
		}
		skipped = append(skipped, l.Attrs().Name+" (default route, no usable address)")
	}
	for _, l := range links {
		if !physical(l) && !managementBridge(l, links) {
			if l.Attrs().Flags&net.FlagLoopback == 0 {
				skipped = append(skipped, fmt.Sprintf("%s (%s)", l.Attrs().Name, l.Type()))
			}
			continue
		}
		ip, err := usableAddr(h, l)
		if err != nil {
			return Management{}, err
		}
		if ip.IsValid() {
			return Management{IP: ip, Interface: l.Attrs().Name, Source: SourceFirstPhysical}, nil
		}
		skipped = append(skipped, l.Attrs().Name+" (no usable address)")
	}
	if len(skipped) == 0 {
		skipped = []string{"none besides loopback"}
	}
	return Management{}, fmt.Errorf("no management address: no default route and no physical interface with an address; interfaces: %s; set --interface or interface in agent.toml", strings.Join(skipped, ", "))
}

// physical reports whether l is a real Ethernet or Wi-Fi device: no link kind
// (bridge, veth, tun, dummy, bond, vlan... all have one) and Ethernet framing.
func physical(l netlink.Link) bool {
	a := l.Attrs()
	return l.Type() == "device" && a.EncapType == "ether" && a.Flags&net.FlagLoopback == 0
}

// managementBridge reports whether l is a bridge with a physical NIC as a port: the
// network service's management bridge. A bridge of virtual ports only (libvirt's
// virbr0, a container bridge) is not.
func managementBridge(l netlink.Link, links []netlink.Link) bool {
	if l.Type() != "bridge" {
		return false
	}
	for _, p := range links {
		if p.Attrs().MasterIndex == l.Attrs().Index && physical(p) {
			return true
		}
	}
	return false
}

func findLink(links []netlink.Link, want string) netlink.Link {
	for _, l := range links {
		if l.Attrs().Name == want {
			return l
		}
	}
	if mac, err := net.ParseMAC(want); err == nil {
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac.String() {
				return l
			}
		}
	}
	return nil
}

func linkByIndex(links []netlink.Link, idx int) netlink.Link {
	for _, l := range links {
		if l.Attrs().Index == idx {
			return l
		}
	}
	return nil
}

func linkNames(links []netlink.Link) string {
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return strings.Join(names, ", ")
}

// defaultRoute returns the main table's default route of family with the lowest
// metric.
func defaultRoute(h *netlink.Handle, family int) (netlink.Route, bool, error) {
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return netlink.Route{}, false, fmt.Errorf("list routes: %w", err)
	}
	var best netlink.Route
	found := false
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.LinkIndex == 0 && len(r.MultiPath) > 0 {
			r.LinkIndex = r.MultiPath[0].LinkIndex
		}
		if r.LinkIndex == 0 {
			continue
		}
		if !found || r.Priority < best.Priority {
			best, found = r, true
		}
	}
	return best, found, nil
}

// usableAddr returns l's first global address, IPv4 before IPv6, or the zero Addr.
func usableAddr(h *netlink.Handle, l netlink.Link) (netip.Addr, error) {
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !usable(ip) {
			continue
		}
		if ip.Is4() {
			return ip, nil
		}
		if !v6.IsValid() {
			v6 = ip
		}
	}
	return v6, nil
}

func usable(ip netip.Addr) bool {
	return ip.IsValid() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsUnspecified() && !ip.IsMulticast()
}
