// Package netlab builds network labs for tests out of real Linux network
// namespaces and real netlink: a namespace of its own, or a pair of named
// namespaces joined by a veth (a client end "eth0" and a far end "gw0" holding the
// gateway), and a DHCP server on the far end that a test switches on and off,
// slows down or makes refuse. Nothing in the test's own namespace is touched.
//
// It is for tests only: no program imports it (TestOnlyTestsImport checks).
package netlab

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The pair's addresses: the far end holds the gateway of Subnet on "gw0"; the
// client end "eth0" has ClientMAC.
const (
	Subnet    = "10.77.0.0/24"
	Gateway   = "10.77.0.1"
	ClientMAC = "52:54:00:77:00:10"
)

// NS is one network namespace. Its methods fail the test on error.
type NS struct {
	t testing.TB
	// Name is the namespace's name under /var/run/netns ("" for an anonymous one).
	Name string
	// Handle is a netlink handle into the namespace.
	Handle *netlink.Handle
	ns     netns.NsHandle
}

// requireRoot fails t unless it runs as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("network namespace tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run them as root, or go test -short")
	}
}

// New creates an anonymous namespace with loopback up; it disappears when the
// test ends.
func New(t testing.TB) *NS {
	t.Helper()
	requireRoot(t)
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
	n := open(t, "", ns)
	if err := n.Handle.LinkSetUp(n.Link("lo")); err != nil {
		t.Fatal(err)
	}
	return n
}

// open wraps ns, closed when the test ends.
func open(t testing.TB, name string, ns netns.NsHandle) *NS {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle in namespace %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	return &NS{t: t, Name: name, Handle: h, ns: ns}
}

var seq atomic.Int32

// newNamed creates a namespace called name with `ip netns add`, so that other
// processes and services can enter it by its Path (ip netns exec, setns), and sets
// its loopback up. It is deleted when the test ends.
func newNamed(t testing.TB, name string) *NS {
	t.Helper()
	IP(t, "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	IP(t, "-n", name, "link", "set", "lo", "up")
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", name, err)
	}
	return open(t, name, ns)
}

// IP runs the ip command (iproute2) with args, failing t with its output.
func IP(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Path is the namespace's file for setns(2) (named namespaces only).
func (n *NS) Path() string { return "/var/run/netns/" + n.Name }

// Do runs f on an OS thread inside the namespace, for sockets made there (they stay
// in the namespace after f returns).
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(n.ns); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- err // the thread stays locked and is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
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

// Addrs returns the IPv4 addresses of interface dev as prefixes ("10.77.0.5/24"),
// never nil.
func (n *NS) Addrs(dev string) []string {
	n.t.Helper()
	as, err := n.Handle.AddrList(n.Link(dev), netlink.FAMILY_V4)
	if err != nil {
		n.t.Fatalf("addresses of %s: %v", dev, err)
	}
	out := []string{}
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
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

// Pair is two named namespaces joined by a veth: Client's "eth0" (ClientMAC, down
// and without an address: the code under test configures it) and Far's "gw0" (up,
// holding Gateway/24).
type Pair struct {
	Client, Far *NS
}

// NewPair makes the two namespaces, <prefix><pid>-<n>c and ...f, named so that
// other processes and services can enter them by their Path (ip netns exec,
// setns); they are removed when the test ends. NewPair skips the test with -short
// and fails it without root or without ip.
func NewPair(t testing.TB, prefix string) *Pair {
	t.Helper()
	if testing.Short() {
		t.Skip("network namespace test: skipped with -short")
	}
	requireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("ip not found: run make deps (apt-get install iproute2)")
	}
	base := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), seq.Add(1))
	p := &Pair{Client: newNamed(t, base+"c"), Far: newNamed(t, base+"f")}
	IP(t, "-n", p.Client.Name, "link", "add", "eth0", "address", ClientMAC, "type", "veth", "peer", "name", "gw0", "netns", p.Far.Name)
	IP(t, "-n", p.Far.Name, "addr", "add", Gateway+"/24", "dev", "gw0")
	IP(t, "-n", p.Far.Name, "link", "set", "gw0", "up")
	return p
}
