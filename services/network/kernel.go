package network

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netEnv is the network namespace the service manages: the process's own, or one
// named by path (tests and the lab run the service against a namespace they made).
// Netlink goes through a handle bound to it; sockets are created on a thread that
// has entered it.
type netEnv struct {
	path string
	ns   netns.NsHandle
	h    *netlink.Handle
	mu   sync.Mutex // serialises netlink requests on h
}

func openNetEnv(path string) (*netEnv, error) {
	e := &netEnv{path: path, ns: netns.None()}
	var err error
	// Only NETLINK_ROUTE: a handle with no families also opens XFRM and NETFILTER
	// sockets, which fail with "protocol not supported" on kernels where xfrm_user
	// and nfnetlink are modules (Debian's, in our images).
	if path == "" {
		e.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		e.ns, err = netns.GetFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		e.h, err = netlink.NewHandleAt(e.ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		e.close()
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return e, nil
}

func (e *netEnv) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.h != nil {
		e.h.Close()
		e.h = nil
	}
	if e.path != "" && e.ns.IsOpen() {
		e.ns.Close()
	}
}

// do runs f on an OS thread inside the namespace: sockets f creates belong to it.
func (e *netEnv) do(f func() error) error {
	if e.path == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(e.ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", e.path, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", e.path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// iface converts a netlink link to the net.Interface socket libraries want, without
// net.InterfaceByName (which would look in the wrong namespace).
func ifaceOf(l netlink.Link) *net.Interface {
	a := l.Attrs()
	return &net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}

// Route protocols we mark our default routes with, so `ip route` shows who made them.
const (
	protoStatic = netlink.RouteProtocol(unix.RTPROT_STATIC)
	protoDHCP   = netlink.RouteProtocol(unix.RTPROT_DHCP)
)

// target is the kernel state the service wants on its interface.
type target struct {
	source   string     // SourceStatic, SourceDHCP, ...
	addr     *net.IPNet // nil: no IPv4 address
	gw       net.IP     // nil: no default route
	dns      []net.IP
	search   []string
	lifetime time.Duration // 0: forever; else the address expires in the kernel too
}

func (t target) String() string {
	if t.addr == nil {
		return t.source + " (no address)"
	}
	s := t.source + " " + t.addr.String()
	if t.gw != nil {
		s += " via " + t.gw.String()
	}
	return s
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// defaultRoutes lists every IPv4 default route in the main table, all interfaces.
func (e *netEnv) defaultRoutes() ([]netlink.Route, error) {
	var rs []netlink.Route
	err := e.nl(func(h *netlink.Handle) (err error) {
		rs, err = h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netlink.Route
	for _, r := range rs {
		if isDefault(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

func (e *netEnv) addrs(l netlink.Link) ([]netlink.Addr, error) {
	var as []netlink.Addr
	err := e.nl(func(h *netlink.Handle) (err error) {
		as, err = h.AddrList(l, netlink.FAMILY_V4)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	return as, nil
}

// program puts t on link in the exact order docs/design.md §7 gives for static addresses
// (the caller has stopped DHCP and link-local on the link): link up, flush its IPv4
// addresses, add the address, delete every default route on every interface, add
// `default via gw dev link`. port, when set, is the NIC under the bridge link: its
// addresses go once the bridge holds the new one (a NIC turned into a port keeps
// working until then). It then reads the kernel back. resolv.conf is the caller's.
func (e *netEnv) program(l, port netlink.Link, t target) error {
	name := l.Attrs().Name
	if err := e.nl(func(h *netlink.Handle) error { return h.LinkSetUp(l) }); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if err := e.flushAddrs(l); err != nil {
		return err
	}
	if t.addr != nil {
		a := &netlink.Addr{IPNet: t.addr, Broadcast: broadcastOf(t.addr)}
		setLifetime(a, t.lifetime)
		if t.source == SourceLinkLocal {
			a.Scope = unix.RT_SCOPE_LINK
		}
		if err := e.nl(func(h *netlink.Handle) error { return h.AddrAdd(l, a) }); err != nil {
			return fmt.Errorf("add %s to %s: %w", t.addr, name, err)
		}
	}
	if err := e.deleteDefaultRoutes(); err != nil {
		return err
	}
	if t.gw != nil {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: t.gw, Table: unix.RT_TABLE_MAIN, Protocol: protoStatic}
		if t.source == SourceDHCP {
			r.Protocol = protoDHCP
		}
		if t.addr != nil && !t.addr.Contains(t.gw) {
			r.Flags = int(netlink.FLAG_ONLINK) // a DHCP router outside the subnet (RFC 3442 style)
		}
		if err := e.nl(func(h *netlink.Handle) error { return h.RouteAdd(r) }); err != nil {
			return fmt.Errorf("add default via %s dev %s: %w", t.gw, name, err)
		}
	}
	if port != nil {
		if err := e.flushAddrs(port); err != nil {
			return err
		}
	}
	return e.verify(l, port, t)
}

// refresh extends the lifetime of an address already in place (a DHCP renewal)
// without flushing anything, then verifies.
func (e *netEnv) refresh(l, port netlink.Link, t target) error {
	a := &netlink.Addr{IPNet: t.addr, Broadcast: broadcastOf(t.addr)}
	setLifetime(a, t.lifetime)
	if err := e.nl(func(h *netlink.Handle) error { return h.AddrReplace(l, a) }); err != nil {
		return fmt.Errorf("renew %s on %s: %w", t.addr, l.Attrs().Name, err)
	}
	return e.verify(l, port, t)
}

func (e *netEnv) deleteDefaultRoutes() error {
	rs, err := e.defaultRoutes()
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := e.nl(func(h *netlink.Handle) error { return h.RouteDel(&r) }); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete default route %s: %w", describeRoute(r, nil), err)
		}
	}
	return nil
}

// errClosed is returned once the service let go of its namespace.
var errClosed = errors.New("network namespace closed")

// nl runs f with the netlink handle, one request at a time; after close it fails
// instead of letting a closed handle fall back to the process's own namespace.
func (e *netEnv) nl(f func(h *netlink.Handle) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.h == nil {
		return errClosed
	}
	return f(e.h)
}

// verify reads the kernel back and reports every difference from t, and from the
// bridge layout when port is set.
func (e *netEnv) verify(l, port netlink.Link, t target) error {
	name := l.Attrs().Name
	var bad []string
	var cur netlink.Link
	err := e.nl(func(h *netlink.Handle) (err error) {
		cur, err = h.LinkByIndex(l.Attrs().Index)
		return err
	})
	if err != nil {
		return fmt.Errorf("verify %s: %w", name, err)
	}
	if cur.Attrs().Flags&net.FlagUp == 0 {
		bad = append(bad, name+" is down")
	}
	as, err := e.addrs(l)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var have []string
	for _, a := range as {
		have = append(have, a.IPNet.String())
	}
	var want []string
	if t.addr != nil {
		want = []string{t.addr.String()}
	}
	if !slices.Equal(have, want) {
		bad = append(bad, fmt.Sprintf("addresses on %s are [%s], want [%s]", name, strings.Join(have, " "), strings.Join(want, " ")))
	}
	rs, err := e.defaultRoutes()
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var routes []string
	ok := t.gw == nil && len(rs) == 0
	for _, r := range rs {
		routes = append(routes, describeRoute(r, e))
	}
	if t.gw != nil && len(rs) == 1 && rs[0].Gw.Equal(t.gw) && rs[0].LinkIndex == l.Attrs().Index {
		ok = true
	}
	if !ok {
		w := "none"
		if t.gw != nil {
			w = fmt.Sprintf("exactly default via %s dev %s", t.gw, name)
		}
		bad = append(bad, fmt.Sprintf("default routes are [%s], want %s", strings.Join(routes, "; "), w))
	}
	if port != nil {
		bad = append(bad, e.verifyBridge(l, port)...)
	}
	if len(bad) > 0 {
		return fmt.Errorf("kernel state after applying %s differs: %s", t, strings.Join(bad, "; "))
	}
	return nil
}

// describeRoute formats a default route like `ip route` does.
func describeRoute(r netlink.Route, e *netEnv) string {
	s := "default"
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	dev := fmt.Sprintf("if%d", r.LinkIndex)
	if e != nil {
		e.nl(func(h *netlink.Handle) error {
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			return nil
		})
	}
	return s + " dev " + dev
}

func broadcastOf(n *net.IPNet) net.IP {
	if ones, _ := n.Mask.Size(); ones >= 31 {
		return nil
	}
	return broadcast(&net.IPNet{IP: n.IP.Mask(n.Mask), Mask: n.Mask})
}

func setLifetime(a *netlink.Addr, d time.Duration) {
	if d <= 0 {
		return
	}
	secs := int((d + time.Second - 1) / time.Second)
	a.ValidLft, a.PreferedLft = secs, secs
}
