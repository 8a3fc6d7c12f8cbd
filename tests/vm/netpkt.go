package vm

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Minimal Ethernet/ARP/IPv4/UDP/ICMP handling for the hub's own endpoint and for
// reading pcaps; hand-written because the hub needs only these few shapes.

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	protoICMP     = 1
	protoUDP      = 17
	ethHeaderLen  = 14
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func macKey(b []byte) [6]byte {
	var k [6]byte
	copy(k[:], b)
	return k
}

func isGroupMAC(b []byte) bool { return b[0]&1 == 1 } // broadcast or multicast

func etherFrame(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	f := make([]byte, ethHeaderLen+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], typ)
	copy(f[14:], payload)
	return f
}

// ipv4Packet is a parsed IPv4 header with its payload.
type ipv4Packet struct {
	src, dst netip.Addr
	proto    uint8
	payload  []byte
}

func parseIPv4(b []byte) (ipv4Packet, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return ipv4Packet{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || total < ihl || total > len(b) {
		return ipv4Packet{}, false
	}
	if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 {
		return ipv4Packet{}, false // fragments: not needed here
	}
	return ipv4Packet{
		src:     netip.AddrFrom4([4]byte(b[12:16])),
		dst:     netip.AddrFrom4([4]byte(b[16:20])),
		proto:   b[9],
		payload: b[ihl:total],
	}, true
}

func buildIPv4(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	p[8] = 64
	p[9] = proto
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20], 0))
	copy(p[20:], payload)
	return p
}

func buildUDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:2], sport)
	binary.BigEndian.PutUint16(u[2:4], dport)
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	copy(u[8:], payload)
	s, d := src.As4(), dst.As4()
	pseudo := make([]byte, 0, 12)
	pseudo = append(pseudo, s[:]...)
	pseudo = append(pseudo, d[:]...)
	pseudo = append(pseudo, 0, protoUDP, byte(len(u)>>8), byte(len(u)))
	sum := checksum(u, sumBytes(pseudo))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:8], sum)
	return buildIPv4(src, dst, protoUDP, u)
}

func sumBytes(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

// checksum is the Internet checksum of b on top of an initial partial sum.
func checksum(b []byte, initial uint32) uint16 {
	s := initial + sumBytes(b)
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// udpPorts returns the ports and payload of a UDP datagram.
func udpPorts(b []byte) (sport, dport uint16, payload []byte, ok bool) {
	if len(b) < 8 {
		return 0, 0, nil, false
	}
	n := int(binary.BigEndian.Uint16(b[4:6]))
	if n < 8 || n > len(b) {
		return 0, 0, nil, false
	}
	return binary.BigEndian.Uint16(b[0:2]), binary.BigEndian.Uint16(b[2:4]), b[8:n], true
}

// ParseDHCP decodes a DHCPv4 message carried in an Ethernet frame (UDP port 67 or
// 68), e.g. one read back from a hub pcap.
func ParseDHCP(frame []byte) (*dhcpv4.DHCPv4, bool) {
	if len(frame) < ethHeaderLen || binary.BigEndian.Uint16(frame[12:14]) != etherTypeIPv4 {
		return nil, false
	}
	ip, ok := parseIPv4(frame[ethHeaderLen:])
	if !ok || ip.proto != protoUDP {
		return nil, false
	}
	sport, dport, payload, ok := udpPorts(ip.payload)
	if !ok || !(dport == 67 || dport == 68 || sport == 67) {
		return nil, false
	}
	m, err := dhcpv4.FromBytes(payload)
	if err != nil {
		return nil, false
	}
	return m, true
}

// FrameSource returns the source MAC of an Ethernet frame.
func FrameSource(frame []byte) net.HardwareAddr {
	if len(frame) < ethHeaderLen {
		return nil
	}
	return net.HardwareAddr(append([]byte(nil), frame[6:12]...))
}
