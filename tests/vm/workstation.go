package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Workstation is the operator's computer on the lab segment: a user-space TCP/IP
// stack (gVisor's netstack) inside the test process, plugged into a hub port like
// any VM. The test reaches the vDC API and the agents' status endpoints through it,
// over the same L2 segment (and into the same pcap) as the nodes.
//
// Why not QEMU user networking on a second NIC (docs/design.md §11): the network
// service configures exactly one interface (docs/design.md §7), so a second NIC
// has no address and QEMU's port forward cannot reach the guest.
type Workstation struct {
	Addr netip.Prefix
	MAC  net.HardwareAddr

	stack  *stack.Stack
	ep     *channel.Endpoint
	conn   *net.UnixConn
	hub    *net.UnixAddr
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// nicID is the workstation's only NIC.
const nicID tcpip.NICID = 1

// NewWorkstation plugs a workstation with address addr into hub; it is unplugged
// when t ends.
func NewWorkstation(t testing.TB, hub *Hub, mac net.HardwareAddr, addr netip.Prefix) *Workstation {
	t.Helper()
	w, err := newWorkstation(hub, mac, addr)
	if err != nil {
		t.Fatalf("workstation %s: %v", addr, err)
	}
	t.Cleanup(w.Close)
	return w
}

func newWorkstation(hub *Hub, mac net.HardwareAddr, addr netip.Prefix) (*Workstation, error) {
	port, err := hub.AddPort("workstation-" + addr.Addr().String())
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: port.PeerPath, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", port.PeerPath, err)
	}
	w := &Workstation{
		Addr: addr,
		MAC:  mac,
		conn: conn,
		hub:  &net.UnixAddr{Name: port.HubPath, Net: "unixgram"},
		ep:   channel.New(256, 1500, tcpip.LinkAddress(mac)),
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
		}),
	}
	if e := w.stack.CreateNIC(nicID, ethernet.New(w.ep)); e != nil {
		w.Close()
		return nil, fmt.Errorf("create NIC: %s", e)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(addr.Addr().As4()), PrefixLen: addr.Bits()},
	}
	if e := w.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); e != nil {
		w.Close()
		return nil, fmt.Errorf("add address %s: %s", addr, e)
	}
	w.stack.SetRouteTable([]tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: nicID}})

	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.wg.Add(2)
	go w.transmit(ctx)
	go w.receive()
	return w, nil
}

// transmit sends the stack's outgoing frames to the hub.
func (w *Workstation) transmit(ctx context.Context) {
	defer w.wg.Done()
	for {
		pkt := w.ep.ReadContext(ctx)
		if pkt == nil {
			return // ctx done
		}
		v := pkt.ToView()
		frame := append([]byte(nil), v.AsSlice()...)
		v.Release()
		pkt.DecRef()
		// The hub may be gone at the end of a test; a lost frame is TCP's business.
		w.conn.WriteToUnix(frame, w.hub)
	}
}

// receive hands the frames from the hub to the stack.
func (w *Workstation) receive() {
	defer w.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := w.conn.ReadFromUnix(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n < header.EthernetMinimumSize {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), buf[:n]...))})
		w.ep.InjectInbound(0, pkt) // the ethernet endpoint reads the protocol from the frame
		pkt.DecRef()
	}
}

// DialContext opens a TCP connection from the workstation; address is "ip:port".
func (w *Workstation) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("workstation dial %s %s: only tcp", network, address)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("workstation dial %s: %w", address, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Is4() {
		return nil, fmt.Errorf("workstation dial %s: want an IPv4 address, not a name", address)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("workstation dial %s: port: %w", address, err)
	}
	c, err := gonet.DialContextTCP(ctx, w.stack, tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(ip.As4()), Port: uint16(p)}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("workstation dial %s: %w", address, err)
	}
	return c, nil
}

// Listen accepts TCP connections on the workstation's address (lab self-tests).
func (w *Workstation) Listen(port uint16) (net.Listener, error) {
	l, err := gonet.ListenTCP(w.stack, tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(w.Addr.Addr().As4()), Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("workstation listen %s:%d: %w", w.Addr.Addr(), port, err)
	}
	return l, nil
}

// Forward serves port on the workstation's address by relaying every connection
// to target, a TCP address on the host (e.g. an in-process vDC on 127.0.0.1): VMs
// on the segment reach a host service as if it ran on the workstation. When t
// ends it stops listening and cuts the connections still open (a VM that was
// switched off never closes its own).
func (w *Workstation) Forward(t testing.TB, port uint16, target string) {
	t.Helper()
	l, err := w.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	w.serveRelay(t, l, func() (net.Conn, error) {
		return net.DialTimeout("tcp", target, 5*time.Second)
	})
}

// serveRelay accepts on l and relays each connection to one that dial opens,
// until t ends: then it stops listening and cuts the connections still open.
func (w *Workstation) serveRelay(t testing.TB, l net.Listener, dial func() (net.Conn, error)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		open  = map[net.Conn]struct{}{}
		ended bool
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			c.Close()
			return false
		}
		open[c] = struct{}{}
		return true
	}
	untrack := func(c net.Conn) {
		mu.Lock()
		delete(open, c)
		mu.Unlock()
		c.Close()
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		ended = true
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !track(c) {
					return
				}
				defer untrack(c)
				u, err := dial()
				if err != nil {
					return // the client sees the connection reset, as with a stopped server
				}
				if !track(u) {
					return
				}
				defer untrack(u)
				relay(c, u)
			}()
		}
	}()
}

// Proxy is Forward the other way round: it listens on a free 127.0.0.1 port of
// the host and relays every connection through the workstation to target
// ("ip:port" on the segment), so host programs that know nothing of the lab (a
// browser) reach a VM. It returns the host address and stops when t ends.
func (w *Workstation) Proxy(t testing.TB, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy to %s: %v", target, err)
	}
	w.serveRelay(t, l, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return w.DialContext(ctx, "tcp", target)
	})
	return l.Addr().String()
}

// relay copies a to b and back until both directions end.
func relay(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// HTTPClient returns an HTTP client that connects through the workstation. Each
// request gets a fresh connection: a VM that rebooted must not leave the test
// waiting on a connection that died with it.
func (w *Workstation) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       w.DialContext,
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
}

// Close unplugs the workstation.
func (w *Workstation) Close() {
	if w.cancel != nil {
		w.cancel()
	}
	w.conn.Close()
	w.wg.Wait()
	w.stack.Close()
	w.stack.Wait()
}
