// Package netnstest makes network namespaces for tests and builds interfaces,
// addresses and routes inside them with real netlink. Nothing in the test's own
// namespace is touched.
package netnstest

import (
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is one namespace. Its methods fail the test on error.
type NS struct {
	t testing.TB
	// Handle is a netlink handle into the namespace.
	Handle *netlink.Handle
}

// New creates a namespace with loopback up; it disappears when the test ends.
func New(t testing.TB) *NS {
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
	n := &NS{t: t, Handle: h}
	if err := h.LinkSetUp(n.Link("lo")); err != nil {
		t.Fatal(err)
	}
	return n
}

// Link returns the interface called name.
func (n *NS) Link(name string) netlink.Link {
	n.t.Helper()
	l, err := n.Handle.LinkByName(name)
	if err != nil {
		n.t.Fatalf("interface %s: %v", name, err)
	}
	return l
}

// Add adds l and sets it up.
func (n *NS) Add(l netlink.Link) netlink.Link {
	n.t.Helper()
	if err := n.Handle.LinkAdd(l); err != nil {
		n.t.Fatalf("add %s %s: %v", l.Type(), l.Attrs().Name, err)
	}
	got := n.Link(l.Attrs().Name)
	if err := n.Handle.LinkSetUp(got); err != nil {
		n.t.Fatalf("set %s up: %v", l.Attrs().Name, err)
	}
	return got
}

// Veth adds a veth pair, name and name+"p", both up, and returns name. (The dummy
// driver is not in every kernel; veth is.)
func (n *NS) Veth(name string) netlink.Link {
	n.t.Helper()
	l := n.Add(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	if err := n.Handle.LinkSetUp(n.Link(name + "p")); err != nil {
		n.t.Fatal(err)
	}
	return l
}

// Bridge adds a bridge, up.
func (n *NS) Bridge(name string) netlink.Link {
	return n.Add(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
}

// Addr adds cidr to l without duplicate address detection (usable at once).
func (n *NS) Addr(l netlink.Link, cidr string) {
	n.t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		n.t.Fatal(err)
	}
	a.Flags = unix.IFA_F_NODAD
	if err := n.Handle.AddrAdd(l, a); err != nil {
		n.t.Fatalf("add %s to %s: %v", cidr, l.Attrs().Name, err)
	}
}

// DelAddr removes cidr from l.
func (n *NS) DelAddr(l netlink.Link, cidr string) {
	n.t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := n.Handle.AddrDel(l, a); err != nil {
		n.t.Fatalf("delete %s from %s: %v", cidr, l.Attrs().Name, err)
	}
}

// DefaultRoute adds a default route via gw on l with metric and optional source.
func (n *NS) DefaultRoute(l netlink.Link, gw string, metric int, src string) {
	n.t.Helper()
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw), Priority: metric}
	if src != "" {
		r.Src = net.ParseIP(src)
	}
	if err := n.Handle.RouteAdd(r); err != nil {
		n.t.Fatalf("add default via %s dev %s: %v", gw, l.Attrs().Name, err)
	}
}

// DelDefaultRoute removes the default route via gw on l.
func (n *NS) DelDefaultRoute(l netlink.Link, gw string) {
	n.t.Helper()
	if err := n.Handle.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
		n.t.Fatalf("delete default via %s dev %s: %v", gw, l.Attrs().Name, err)
	}
}

// Readdress moves l from the address old to new with its default route, as a
// static reconfiguration does: add new, drop the old route and address, route
// via gw.
func (n *NS) Readdress(l netlink.Link, oldCIDR, oldGW, newCIDR, newGW string) {
	n.t.Helper()
	n.Addr(l, newCIDR)
	n.DelDefaultRoute(l, oldGW)
	n.DelAddr(l, oldCIDR)
	n.DefaultRoute(l, newGW, 0, "")
}
