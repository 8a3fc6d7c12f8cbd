package vm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/mdlayher/packet"
)

// endpoint is a test NIC on a hub port: a real unix datagram socket bound at the
// port's PeerPath, speaking raw Ethernet frames like QEMU's -netdev dgram.
type endpoint struct {
	t    *testing.T
	port *Port
	conn *net.UnixConn
	hub  *net.UnixAddr
	mac  net.HardwareAddr
}

func attach(t *testing.T, h *Hub, name string, mac net.HardwareAddr) *endpoint {
	t.Helper()
	p, err := h.AddPort(name)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p.PeerPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &endpoint{t: t, port: p, conn: conn, hub: &net.UnixAddr{Name: p.HubPath, Net: "unixgram"}, mac: mac}
}

func (e *endpoint) send(dst net.HardwareAddr, payload string) []byte {
	e.t.Helper()
	f := etherFrame(dst, e.mac, 0x88b5, []byte(payload)) // IEEE local experimental ethertype
	if _, err := e.conn.WriteToUnix(f, e.hub); err != nil {
		e.t.Fatalf("send from %s: %v", e.mac, err)
	}
	return f
}

// recv returns the next frame, or nil after timeout.
func (e *endpoint) recv(timeout time.Duration) []byte {
	buf := make([]byte, 65536)
	e.conn.SetReadDeadline(time.Now().Add(timeout))
	n, _, err := e.conn.ReadFromUnix(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// recvPayloads returns the payloads of the test frames that arrive within d.
func (e *endpoint) recvPayloads(d time.Duration) []string {
	var got []string
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f := e.recv(time.Until(deadline))
		if f == nil {
			break
		}
		if binary.BigEndian.Uint16(f[12:14]) == 0x88b5 {
			got = append(got, string(f[14:]))
		}
	}
	return got
}

func mac(last byte) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0x00, 0, 0, last} }

func TestHubForwarding(t *testing.T) {
	h := NewHub(t, HubConfig{})
	a, b, c := attach(t, h, "a", mac(1)), attach(t, h, "b", mac(2)), attach(t, h, "c", mac(3))
	const quiet = 200 * time.Millisecond

	type step struct {
		name    string
		from    *endpoint
		to      net.HardwareAddr
		cut     *endpoint // cut this port before the step (nil: heal all)
		payload string
		want    map[*endpoint][]string
	}
	steps := []step{
		{name: "broadcast floods", from: a, to: broadcastMAC, payload: "hello all",
			want: map[*endpoint][]string{b: {"hello all"}, c: {"hello all"}}},
		{name: "unicast to a learned MAC goes to its port only", from: b, to: a.mac, payload: "b to a",
			want: map[*endpoint][]string{a: {"b to a"}}},
		{name: "unknown unicast floods", from: a, to: mac(9), payload: "to nobody",
			want: map[*endpoint][]string{b: {"to nobody"}, c: {"to nobody"}}},
		{name: "a cut port receives nothing", from: a, to: broadcastMAC, cut: c, payload: "c is cut",
			want: map[*endpoint][]string{b: {"c is cut"}}},
		{name: "a cut port sends nothing", from: c, to: broadcastMAC, cut: c, payload: "from cut c",
			want: map[*endpoint][]string{}},
		{name: "a healed port works again", from: c, to: a.mac, payload: "c healed",
			want: map[*endpoint][]string{a: {"c healed"}}},
	}
	for _, s := range steps {
		for _, e := range []*endpoint{a, b, c} {
			if e == s.cut {
				e.port.Cut()
			} else {
				e.port.Heal()
			}
		}
		s.from.send(s.to, s.payload)
		for _, e := range []*endpoint{a, b, c} {
			got := e.recvPayloads(quiet)
			if diff := cmp.Diff(s.want[e], got); diff != "" {
				t.Errorf("%s: frames at %s (-want +got):\n%s", s.name, e.port.Name, diff)
			}
		}
	}
	if st := c.port.Stats(); st.RxDropped != 1 || st.TxDropped != 1 {
		t.Errorf("port c stats = %+v, want 1 frame dropped each way", st)
	}
	if st := a.port.Stats(); st.RxFrames != 3 || st.TxFrames != 2 {
		t.Errorf("port a stats = %+v, want 3 frames in, 2 out", st)
	}
}

func TestHubPcap(t *testing.T) {
	h := NewHub(t, HubConfig{Name: "seg"})
	a, b := attach(t, h, "a", mac(1)), attach(t, h, "b", mac(2))
	start := time.Now().Add(-time.Second)
	var sent [][]byte
	sent = append(sent, a.send(broadcastMAC, "one"))
	b.recv(time.Second)
	sent = append(sent, b.send(a.mac, "two"))
	a.recv(time.Second)
	b.port.Cut()
	b.send(a.mac, "never on the segment")
	time.Sleep(100 * time.Millisecond)

	frames, err := ReadPcap(h.PcapPath())
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for _, f := range frames {
		got = append(got, f.Data)
		if f.Time.Before(start) || f.Time.After(time.Now()) {
			t.Errorf("frame time %v is not around now", f.Time)
		}
	}
	if diff := cmp.Diff(sent, got); diff != "" {
		t.Errorf("pcap frames (-want +got):\n%s", diff)
	}
	if _, err := ReadPcap(h.Config().Name); err == nil {
		t.Errorf("ReadPcap of a missing file: no error")
	}
}

func TestHubGateway(t *testing.T) {
	h := NewHub(t, HubConfig{})
	e := attach(t, h, "a", mac(1))
	me := netip.MustParseAddr("10.77.0.50")

	// ARP: who has 10.77.0.1?
	arp := make([]byte, 28)
	binary.BigEndian.PutUint16(arp[0:], 1)
	binary.BigEndian.PutUint16(arp[2:], etherTypeIPv4)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], 1)
	copy(arp[8:], e.mac)
	copy(arp[14:], me.AsSlice())
	copy(arp[24:], h.Gateway().AsSlice())
	e.conn.WriteToUnix(etherFrame(broadcastMAC, e.mac, etherTypeARP, arp), e.hub)
	r := e.recv(time.Second)
	if r == nil || binary.BigEndian.Uint16(r[12:14]) != etherTypeARP || binary.BigEndian.Uint16(r[20:22]) != 2 {
		t.Fatalf("no ARP reply for the gateway, got % x", r)
	}
	if got := net.HardwareAddr(r[22:28]); !bytes.Equal(got, GatewayMAC) {
		t.Errorf("ARP reply says gateway is at %s, want %s", got, GatewayMAC)
	}
	if !bytes.Equal(r[0:6], e.mac) {
		t.Errorf("ARP reply sent to %s, want %s", net.HardwareAddr(r[0:6]), e.mac)
	}

	// Nobody answers for other addresses.
	copy(arp[24:], netip.MustParseAddr("10.77.0.99").AsSlice())
	e.conn.WriteToUnix(etherFrame(broadcastMAC, e.mac, etherTypeARP, arp), e.hub)
	if r := e.recv(200 * time.Millisecond); r != nil {
		t.Errorf("ARP reply for an address nobody has: % x", r)
	}

	// Ping the gateway.
	echo := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'q', 'x'}
	binary.BigEndian.PutUint16(echo[2:], checksum(echo, 0))
	e.conn.WriteToUnix(etherFrame(GatewayMAC, e.mac, etherTypeIPv4, buildIPv4(me, h.Gateway(), protoICMP, echo)), e.hub)
	r = e.recv(time.Second)
	if r == nil {
		t.Fatal("no ICMP echo reply from the gateway")
	}
	ip, ok := parseIPv4(r[14:])
	if !ok || ip.proto != protoICMP || ip.src != h.Gateway() || ip.dst != me {
		t.Fatalf("reply is not ICMP from the gateway to %s: %+v", me, ip)
	}
	if ip.payload[0] != 0 || checksum(ip.payload, 0) != 0 || !bytes.Equal(ip.payload[4:], echo[4:]) {
		t.Errorf("bad echo reply % x", ip.payload)
	}
	if checksum(r[14:34], 0) != 0 {
		t.Errorf("bad IPv4 header checksum in % x", r[14:34])
	}
}

// rawIPConn adapts an endpoint to what nclient4 expects from a raw packet socket:
// IPv4 packets in, IPv4 packets out to a link-layer address.
type rawIPConn struct{ *endpoint }

func (c rawIPConn) ReadFrom(b []byte) (int, net.Addr, error) {
	buf := make([]byte, 65536)
	for {
		n, _, err := c.conn.ReadFromUnix(buf)
		if err != nil {
			return 0, nil, err
		}
		f := buf[:n]
		if n < ethHeaderLen || binary.BigEndian.Uint16(f[12:14]) != etherTypeIPv4 ||
			!(bytes.Equal(f[0:6], c.mac) || bytes.Equal(f[0:6], broadcastMAC)) {
			continue
		}
		return copy(b, f[ethHeaderLen:]), &packet.Addr{HardwareAddr: net.HardwareAddr(f[6:12])}, nil
	}
}

func (c rawIPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	dst := addr.(*packet.Addr).HardwareAddr
	if _, err := c.conn.WriteToUnix(etherFrame(dst, c.mac, etherTypeIPv4, b), c.hub); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c rawIPConn) Close() error                       { return c.conn.Close() }
func (c rawIPConn) LocalAddr() net.Addr                { return &packet.Addr{HardwareAddr: c.mac} }
func (c rawIPConn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c rawIPConn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c rawIPConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// dhcpClient is a real nclient4 client on a fresh hub port.
// Its per-message timeout is 500 ms unless opts say otherwise.
func dhcpClient(t *testing.T, h *Hub, name string, m net.HardwareAddr, opts ...nclient4.ClientOpt) *nclient4.Client {
	t.Helper()
	e := attach(t, h, name, m)
	opts = append([]nclient4.ClientOpt{nclient4.WithTimeout(500 * time.Millisecond), nclient4.WithRetry(2)}, opts...)
	c, err := nclient4.NewWithConn(nclient4.NewBroadcastUDPConn(rawIPConn{e}, &net.UDPAddr{Port: nclient4.ClientPort}), m, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func request(c *nclient4.Client, timeout time.Duration) (*nclient4.Lease, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Request(ctx)
}

func leaseAddr(l *nclient4.Lease) netip.Addr {
	a, _ := netip.AddrFromSlice(l.ACK.YourIPAddr.To4())
	return a
}

func TestHubDHCPLeases(t *testing.T) {
	h := NewHub(t, HubConfig{LeaseTime: 10 * time.Minute, DNS: []netip.Addr{netip.MustParseAddr("10.77.0.53")}})
	var got []netip.Addr
	for i, m := range []net.HardwareAddr{mac(1), mac(2)} {
		c := dhcpClient(t, h, "c"+string(rune('1'+i)), m)
		l, err := request(c, 5*time.Second)
		if err != nil {
			t.Fatalf("client %s: %v", m, err)
		}
		ack := l.ACK
		if r := ack.Router(); len(r) != 1 || !r[0].Equal(net.ParseIP("10.77.0.1")) {
			t.Errorf("router = %v, want 10.77.0.1", r)
		}
		if ones, _ := ack.SubnetMask().Size(); ones != 24 {
			t.Errorf("subnet mask /%d, want /24", ones)
		}
		if d := ack.IPAddressLeaseTime(0); d != 10*time.Minute {
			t.Errorf("lease time %v, want 10m", d)
		}
		if d := ack.DNS(); len(d) != 1 || !d[0].Equal(net.ParseIP("10.77.0.53")) {
			t.Errorf("DNS = %v, want 10.77.0.53", d)
		}
		got = append(got, leaseAddr(l))
	}
	want := []netip.Addr{netip.MustParseAddr("10.77.0.100"), netip.MustParseAddr("10.77.0.101")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("leased addresses (-want +got):\n%s", diff)
	}
	for i, m := range []net.HardwareAddr{mac(1), mac(2)} {
		l, ok := h.Lease(m)
		if !ok || l.IP != want[i] || l.State != "bound" {
			t.Errorf("hub lease of %s = %v, want %s bound", m, l, want[i])
		}
	}
	if n := len(h.Leases()); n != 2 {
		t.Errorf("hub has %d leases, want 2", n)
	}

	// The same MAC on another port (a rebooted VM) gets its address back.
	again, err := request(dhcpClient(t, h, "c1-again", mac(1)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if leaseAddr(again) != want[0] {
		t.Errorf("second lease of %s = %s, want %s again", mac(1), leaseAddr(again), want[0])
	}

	// Asking for another client's address is refused.
	c3 := dhcpClient(t, h, "c3", mac(3))
	offer, err := dhcpv4.New(dhcpv4.WithHwAddr(mac(3)), dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithYourIP(net.ParseIP("10.77.0.101")), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.77.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	offer.OpCode = dhcpv4.OpcodeBootReply
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c3.RequestFromOffer(ctx, offer)
	var nak *nclient4.ErrNak
	if !errors.As(err, &nak) {
		t.Errorf("request for another client's address: %v, want a NAK", err)
	}
}

func TestHubDHCPControl(t *testing.T) {
	h := NewHub(t, HubConfig{DHCPOff: true})
	c := dhcpClient(t, h, "c1", mac(1))
	if _, err := request(c, 2*time.Second); err == nil {
		t.Fatal("got a lease while the DHCP server is off")
	}
	if _, ok := h.Lease(mac(1)); ok {
		t.Errorf("hub recorded a lease while off")
	}

	h.SetDHCP(true)
	l, err := request(c, 5*time.Second)
	if err != nil {
		t.Fatalf("after switching DHCP on: %v", err)
	}
	if got, err := h.AwaitLease(mac(1), time.Second); err != nil || got.IP != leaseAddr(l) {
		t.Errorf("AwaitLease = %v, %v; want %s", got, err, leaseAddr(l))
	}

	// A slow server: each answer comes after the delay.
	const delay = 400 * time.Millisecond
	h.SetDHCPDelay(delay)
	slow := dhcpClient(t, h, "c2", mac(2), nclient4.WithTimeout(3*time.Second))
	start := time.Now()
	if _, err := request(slow, 10*time.Second); err != nil {
		t.Fatalf("with a delay of %v: %v", delay, err)
	}
	if took := time.Since(start); took < 2*delay {
		t.Errorf("lease came after %v, want at least %v (offer and ack delayed)", took, 2*delay)
	}
	h.SetDHCPDelay(0)

	// A reservation wins over the pool.
	fixed := netip.MustParseAddr("10.77.0.20")
	if err := h.FixAddress(mac(3), fixed); err != nil {
		t.Fatal(err)
	}
	if err := h.FixAddress(mac(4), netip.MustParseAddr("10.78.0.20")); err == nil {
		t.Errorf("FixAddress outside the subnet: no error")
	}
	l, err = request(dhcpClient(t, h, "c3", mac(3)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if leaseAddr(l) != fixed {
		t.Errorf("reserved client got %s, want %s", leaseAddr(l), fixed)
	}

	// DHCP exchanges are in the pcap.
	frames, err := ReadPcap(h.PcapPath())
	if err != nil {
		t.Fatal(err)
	}
	types := map[dhcpv4.MessageType]int{}
	for _, f := range frames {
		if m, ok := ParseDHCP(f.Data); ok {
			types[m.MessageType()]++
		}
	}
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeAck} {
		if types[mt] == 0 {
			t.Errorf("no DHCP %s in the pcap (saw %v)", mt, types)
		}
	}
}

func TestHubConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  HubConfig
		want string
	}{
		{"gateway outside", HubConfig{Gateway: netip.MustParseAddr("10.1.0.1")}, "gateway 10.1.0.1 is not inside 10.77.0.0/24"},
		{"pool reversed", HubConfig{PoolStart: netip.MustParseAddr("10.77.0.50"), PoolEnd: netip.MustParseAddr("10.77.0.40")}, "pool end 10.77.0.40 is before pool start 10.77.0.50"},
		{"ipv6", HubConfig{Subnet: netip.MustParsePrefix("fd00::/64")}, "want an IPv4 prefix"},
		{"short lease", HubConfig{LeaseTime: time.Second}, "lease time 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.setDefaults()
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Errorf("setDefaults() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
