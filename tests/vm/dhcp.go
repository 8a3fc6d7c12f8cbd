package vm

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// The hub's DHCP server (RFC 2131, the parts a LAN needs): one address per client
// MAC, kept across renewals, releases and reboots, so a VM that comes back gets the
// same address, as from a typical home or office server.

// SetDHCP switches the hub's DHCP server on or off. While off, DHCP requests are
// ignored (renewals too), as if the server were down; leases are kept.
func (h *Hub) SetDHCP(on bool) {
	h.mu.Lock()
	h.dhcpOn = on
	h.mu.Unlock()
	h.log.Info("dhcp switched", "on", on)
}

// DHCPOn reports whether the DHCP server is on.
func (h *Hub) DHCPOn() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dhcpOn
}

// SetDHCPDelay makes the DHCP server answer each request only after d (0: at once),
// to test client timeouts. A reply due while the server is off is not sent.
func (h *Hub) SetDHCPDelay(d time.Duration) {
	h.mu.Lock()
	h.dhcpDelay = d
	h.mu.Unlock()
	h.log.Info("dhcp delay set", "delay", d)
}

// FixAddress makes the DHCP server always hand addr to mac (a reservation).
func (h *Hub) FixAddress(mac net.HardwareAddr, addr netip.Addr) error {
	if !h.cfg.Subnet.Contains(addr) || addr == h.cfg.Gateway {
		return fmt.Errorf("hub %s: fixed address %s for %s: not a host address in %s", h.cfg.Name, addr, mac, h.cfg.Subnet)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fixed[macKey(mac)] = addr
	if l, ok := h.leases[macKey(mac)]; ok && l.IP != addr {
		delete(h.leases, macKey(mac))
	}
	return nil
}

// Leases returns every lease the hub knows, ordered by address.
func (h *Hub) Leases() []Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ls []Lease
	for _, l := range h.leases {
		c := *l
		c.MAC = append(net.HardwareAddr(nil), l.MAC...)
		ls = append(ls, c)
	}
	slices.SortFunc(ls, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return ls
}

// Lease returns the lease of mac, if any.
func (h *Hub) Lease(mac net.HardwareAddr) (Lease, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, ok := h.leases[macKey(mac)]
	if !ok {
		return Lease{}, false
	}
	c := *l
	c.MAC = append(net.HardwareAddr(nil), l.MAC...)
	return c, true
}

// WaitLease waits until mac holds a bound lease and returns it; it fails t after
// timeout (scaled by TimeoutScale).
func (h *Hub) WaitLease(t testing.TB, mac net.HardwareAddr, timeout time.Duration) Lease {
	t.Helper()
	l, err := h.AwaitLease(mac, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// AwaitLease is WaitLease returning an error instead of failing a test.
func (h *Hub) AwaitLease(mac net.HardwareAddr, timeout time.Duration) (Lease, error) {
	timeout = ScaleTimeout(timeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		l, ok := h.leases[macKey(mac)]
		if ok && l.State == "bound" {
			c := *l
			h.mu.Unlock()
			return c, nil
		}
		wake := h.leaseWake
		h.mu.Unlock()
		select {
		case <-wake:
		case <-deadline.C:
			return Lease{}, fmt.Errorf("hub %s: no bound DHCP lease for %s within %v (dhcp on: %v, leases: %v)",
				h.cfg.Name, mac, timeout, h.DHCPOn(), h.Leases())
		}
	}
}

func (l Lease) String() string {
	return fmt.Sprintf("%s=%s(%s)", l.MAC, l.IP, l.State)
}

func (h *Hub) leaseChangedLocked() {
	close(h.leaseWake)
	h.leaseWake = make(chan struct{})
}

// dhcp handles one DHCP message from src.
func (h *Hub) dhcp(src net.HardwareAddr, ip ipv4Packet, data []byte) {
	req, err := dhcpv4.FromBytes(data)
	if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
		return
	}
	h.mu.Lock()
	on, delay := h.dhcpOn, h.dhcpDelay
	if !on {
		h.mu.Unlock()
		h.log.Info("dhcp off: ignored", "type", req.MessageType(), "mac", req.ClientHWAddr.String())
		return
	}
	reply := h.dhcpReplyLocked(req)
	h.mu.Unlock()
	if reply == nil {
		return
	}
	frame := h.dhcpFrame(req, reply)
	send := func() {
		if !h.DHCPOn() {
			h.log.Info("dhcp off: delayed reply dropped", "type", reply.MessageType(), "mac", req.ClientHWAddr.String())
			return
		}
		h.log.Info("dhcp reply", "type", reply.MessageType(), "mac", req.ClientHWAddr.String(), "ip", reply.YourIPAddr)
		h.emit(frame)
	}
	if delay > 0 {
		time.AfterFunc(delay, send)
		return
	}
	send()
}

// dhcpReplyLocked decides the answer to req (nil: no answer) and updates leases.
func (h *Hub) dhcpReplyLocked(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	mac := req.ClientHWAddr
	key := macKey(mac)
	gw := net.IP(h.cfg.Gateway.AsSlice())
	now := time.Now()
	h.log.Info("dhcp request", "type", req.MessageType(), "mac", mac.String(), "requested", req.RequestedIPAddress(), "ciaddr", req.ClientIPAddr)

	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		addr, ok := h.allocateLocked(mac, req.RequestedIPAddress())
		if !ok {
			h.log.Warn("dhcp pool exhausted", "mac", mac.String())
			return nil
		}
		l := h.leases[key]
		if l == nil || l.State != "bound" {
			h.leases[key] = &Lease{MAC: append(net.HardwareAddr(nil), mac...), IP: addr, State: "offered",
				Hostname: req.HostName(), Expires: now.Add(time.Minute), Updated: now}
			h.leaseChangedLocked()
		}
		return h.buildReply(req, dhcpv4.MessageTypeOffer, addr)

	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(gw) {
			return nil // the client chose another server
		}
		want := req.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = req.ClientIPAddr // renewing or rebinding
		}
		wantAddr, ok := netip.AddrFromSlice(want.To4())
		if !ok {
			return h.buildNak(req, "no address requested")
		}
		got, ok := h.allocateLocked(mac, want)
		if !ok || got != wantAddr {
			h.log.Info("dhcp nak", "mac", mac.String(), "requested", wantAddr, "would_give", got)
			return h.buildNak(req, fmt.Sprintf("address %s is not yours", wantAddr))
		}
		h.leases[key] = &Lease{MAC: append(net.HardwareAddr(nil), mac...), IP: got, State: "bound",
			Hostname: req.HostName(), Expires: now.Add(h.cfg.LeaseTime), Updated: now}
		h.leaseChangedLocked()
		return h.buildReply(req, dhcpv4.MessageTypeAck, got)

	case dhcpv4.MessageTypeRelease:
		if l, ok := h.leases[key]; ok {
			l.State, l.Updated = "released", now
			h.leaseChangedLocked()
		}
		return nil

	case dhcpv4.MessageTypeDecline:
		if a, ok := netip.AddrFromSlice(req.RequestedIPAddress().To4()); ok {
			h.declined[a] = true
			delete(h.leases, key)
			h.leaseChangedLocked()
		}
		return nil

	case dhcpv4.MessageTypeInform:
		r := h.buildReply(req, dhcpv4.MessageTypeAck, netip.Addr{})
		if r != nil { // an INFORM gets configuration, no lease
			r.Options.Del(dhcpv4.OptionIPAddressLeaseTime)
			r.Options.Del(dhcpv4.OptionRenewTimeValue)
			r.Options.Del(dhcpv4.OptionRebindingTimeValue)
		}
		return r
	}
	return nil
}

// allocateLocked picks the address for mac: its reservation, else its earlier
// address, else the one it asks for if free, else the first free one.
func (h *Hub) allocateLocked(mac net.HardwareAddr, requested net.IP) (netip.Addr, bool) {
	if a, ok := h.fixed[macKey(mac)]; ok {
		return a, true
	}
	if l, ok := h.leases[macKey(mac)]; ok {
		return l.IP, true
	}
	inUse := map[netip.Addr]bool{}
	for _, l := range h.leases {
		inUse[l.IP] = true
	}
	for _, a := range h.fixed {
		inUse[a] = true
	}
	free := func(a netip.Addr) bool {
		return a.IsValid() && !inUse[a] && !h.declined[a] && a != h.cfg.Gateway &&
			!a.Less(h.cfg.PoolStart) && !h.cfg.PoolEnd.Less(a)
	}
	if r, ok := netip.AddrFromSlice(requested.To4()); ok && free(r) {
		return r, true
	}
	for a := h.cfg.PoolStart; !h.cfg.PoolEnd.Less(a); a = a.Next() {
		if free(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (h *Hub) buildReply(req *dhcpv4.DHCPv4, typ dhcpv4.MessageType, addr netip.Addr) *dhcpv4.DHCPv4 {
	gw := net.IP(h.cfg.Gateway.AsSlice())
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(gw),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw)),
		dhcpv4.WithNetmask(net.CIDRMask(h.cfg.Subnet.Bits(), 32)),
		dhcpv4.WithRouter(gw),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(h.cfg.LeaseTime)),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(h.cfg.LeaseTime / 2)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(h.cfg.LeaseTime * 7 / 8)),
	}
	if addr.IsValid() {
		mods = append(mods, dhcpv4.WithYourIP(net.IP(addr.AsSlice())))
	}
	if typ == dhcpv4.MessageTypeAck && req.MessageType() == dhcpv4.MessageTypeInform {
		mods = append(mods, dhcpv4.WithClientIP(req.ClientIPAddr))
	}
	if len(h.cfg.DNS) > 0 {
		var dns []net.IP
		for _, d := range h.cfg.DNS {
			dns = append(dns, net.IP(d.AsSlice()))
		}
		mods = append(mods, dhcpv4.WithDNS(dns...))
	}
	r, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		h.log.Error("dhcp build reply", "err", err)
		return nil
	}
	return r
}

func (h *Hub) buildNak(req *dhcpv4.DHCPv4, msg string) *dhcpv4.DHCPv4 {
	gw := net.IP(h.cfg.Gateway.AsSlice())
	r, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw)),
		dhcpv4.WithOption(dhcpv4.OptMessage(msg)),
		dhcpv4.WithBroadcast(true))
	if err != nil {
		h.log.Error("dhcp build nak", "err", err)
		return nil
	}
	return r
}

// dhcpFrame addresses a reply per RFC 2131 4.1: to ciaddr when the client has one,
// broadcast when the client asks for it (and for NAKs), else to yiaddr at chaddr.
func (h *Hub) dhcpFrame(req, reply *dhcpv4.DHCPv4) []byte {
	dstMAC := reply.ClientHWAddr
	bcast := netip.AddrFrom4([4]byte{255, 255, 255, 255})
	dst := bcast
	switch {
	case reply.MessageType() == dhcpv4.MessageTypeNak:
		dstMAC = broadcastMAC
	case req.ClientIPAddr != nil && !req.ClientIPAddr.IsUnspecified():
		dst, _ = netip.AddrFromSlice(req.ClientIPAddr.To4())
	case req.IsBroadcast():
		dstMAC = broadcastMAC
	case reply.YourIPAddr != nil && !reply.YourIPAddr.IsUnspecified():
		dst, _ = netip.AddrFromSlice(reply.YourIPAddr.To4())
	default:
		dstMAC = broadcastMAC
	}
	pkt := buildUDP(h.cfg.Gateway, dst, 67, 68, reply.ToBytes())
	return etherFrame(dstMAC, GatewayMAC, etherTypeIPv4, pkt)
}
