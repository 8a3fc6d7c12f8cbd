package netlab

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// DHCPSettings is how the DHCP server answers; tests change them while it runs
// (DHCPServer.Set).
type DHCPSettings struct {
	// Off: the server records requests but answers none.
	Off bool
	// NAKAll refuses every REQUEST.
	NAKAll bool
	// Delay holds every answer back (a slow server).
	Delay time.Duration
	// Lease is the lease time; T1 and T2, when T1 is set, the renewal and
	// rebinding times.
	Lease, T1, T2 time.Duration
	// DNS is the name server handed out.
	DNS net.IP
}

// DHCPServer serves Subnet from Gateway on the far end of a Pair: each client MAC
// gets an address from .100 on (or the one it asks for, when that is in the pool
// and free), with router Gateway; a REQUEST for another address is refused.
type DHCPServer struct {
	t        testing.TB
	srv      *server4.Server
	serverIP net.IP

	mu     sync.Mutex
	set    DHCPSettings
	next   byte
	leases map[string]net.IP
	log    []string // "DISCOVER from 0.0.0.0 ciaddr=0.0.0.0 req=<nil>", ...
}

// StartDHCP starts a DHCP server on the far end's gw0 with settings s; it stops
// when the test ends.
func (p *Pair) StartDHCP(t testing.TB, s DHCPSettings) *DHCPServer {
	t.Helper()
	d := &DHCPServer{t: t, serverIP: net.ParseIP(Gateway).To4(), set: s, next: 100, leases: map[string]net.IP{}}
	err := p.Far.Do(func() error {
		var err error
		d.srv, err = server4.NewServer("gw0", &net.UDPAddr{Port: dhcpv4.ServerPort}, d.handle)
		return err
	})
	if err != nil {
		t.Fatalf("start DHCP server in %s: %v", p.Far.Name, err)
	}
	go d.srv.Serve()
	t.Cleanup(func() { d.srv.Close() })
	return d
}

// Set changes the settings while the server runs.
func (d *DHCPServer) Set(f func(s *DHCPSettings)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.set)
}

// Forget drops every lease and the request log; new clients get addresses from
// .next on.
func (d *DHCPServer) Forget(next byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log, d.leases, d.next = nil, map[string]net.IP{}, next
}

// Requests returns the log of the client messages seen so far, one line each:
// "<type> from <source ip> ciaddr=<ip> req=<requested ip>".
func (d *DHCPServer) Requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

func (d *DHCPServer) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	if m.OpCode != dhcpv4.OpcodeBootRequest {
		return
	}
	d.mu.Lock()
	mac := m.ClientHWAddr.String()
	d.log = append(d.log, fmt.Sprintf("%s from %s ciaddr=%s req=%v", m.MessageType(), peer.(*net.UDPAddr).IP, m.ClientIPAddr, m.RequestedIPAddress()))
	s := d.set
	ip := d.leases[mac]
	if ip == nil {
		if req := m.RequestedIPAddress(); req != nil && req.To4() != nil && net.IP(req).Mask(net.CIDRMask(24, 32)).Equal(net.IPv4(10, 77, 0, 0)) && req.To4()[3] >= 100 {
			ip = req.To4()
		} else {
			ip = net.IPv4(10, 77, 0, d.next).To4()
			d.next++
		}
		d.leases[mac] = ip
	}
	d.mu.Unlock()
	if s.Off {
		return
	}
	if s.Delay > 0 {
		time.Sleep(s.Delay)
	}
	var typ dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		want := m.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = m.ClientIPAddr
		}
		typ = dhcpv4.MessageTypeAck
		if !want.Equal(ip) || s.NAKAll {
			typ = dhcpv4.MessageTypeNak
		}
	default:
		return
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(d.serverIP)),
	}
	if typ != dhcpv4.MessageTypeNak {
		mods = append(mods,
			dhcpv4.WithYourIP(ip),
			dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(24, 32))),
			dhcpv4.WithOption(dhcpv4.OptRouter(d.serverIP)),
			dhcpv4.WithOption(dhcpv4.OptDNS(s.DNS)),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(s.Lease)))
		if s.T1 > 0 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(s.T1)), dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(s.T2)))
		}
	}
	resp, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		d.t.Errorf("dhcp server: %v", err)
		return
	}
	conn.WriteTo(resp.ToBytes(), peer)
}

// Leases returns the addresses handed out, by client MAC.
func (d *DHCPServer) Leases() map[string]net.IP {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]net.IP, len(d.leases))
	for mac, ip := range d.leases {
		out[mac] = ip
	}
	return out
}
