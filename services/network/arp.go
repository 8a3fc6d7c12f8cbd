package network

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"os"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

const (
	arpRequest = 1
	arpReply   = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

type arpPacket struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa net.IP
}

func (p arpPacket) marshal() []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], p.op)
	copy(b[8:14], p.sha)
	copy(b[14:18], p.spa.To4())
	copy(b[18:24], p.tha)
	copy(b[24:28], p.tpa.To4())
	return b
}

func parseARP(b []byte) (arpPacket, bool) {
	if len(b) < 28 || binary.BigEndian.Uint16(b[0:]) != 1 || binary.BigEndian.Uint16(b[2:]) != 0x0800 || b[4] != 6 || b[5] != 4 {
		return arpPacket{}, false
	}
	return arpPacket{
		op:  binary.BigEndian.Uint16(b[6:]),
		sha: net.HardwareAddr(append([]byte(nil), b[8:14]...)),
		spa: net.IP(append([]byte(nil), b[14:18]...)),
		tha: net.HardwareAddr(append([]byte(nil), b[18:24]...)),
		tpa: net.IP(append([]byte(nil), b[24:28]...)),
	}, true
}

// arpConn is an ARP socket on one interface.
type arpConn struct {
	c   *packet.Conn
	mac net.HardwareAddr
}

func (e *netEnv) openARP(ifi *net.Interface) (*arpConn, error) {
	var c *packet.Conn
	err := e.do(func() error {
		var err error
		c, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open ARP socket on %s: %w", ifi.Name, err)
	}
	return &arpConn{c: c, mac: ifi.HardwareAddr}, nil
}

func (a *arpConn) Close() error { return a.c.Close() }

func (a *arpConn) send(p arpPacket, to net.HardwareAddr) error {
	_, err := a.c.WriteTo(p.marshal(), &packet.Addr{HardwareAddr: to})
	return err
}

// readUntil passes ARP packets from other hosts to match until it returns true
// (found) or the deadline or ctx ends the wait (not found, nil error).
func (a *arpConn) readUntil(ctx context.Context, deadline time.Time, match func(arpPacket) bool) (bool, error) {
	stop := context.AfterFunc(ctx, func() { a.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := a.c.SetReadDeadline(deadline); err != nil {
		return false, err
	}
	buf := make([]byte, 128)
	for {
		n, _, err := a.c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return false, ctx.Err()
			}
			return false, err
		}
		p, ok := parseARP(buf[:n])
		if !ok || bytes.Equal(p.sha, a.mac) {
			continue // ours, looped back, or not IPv4-over-ethernet
		}
		if match(p) {
			return true, nil
		}
	}
}

// resolveARP asks for ip's MAC from src every interval until a reply or timeout: the
// gateway reachability check. It needs no ICMP from the gateway.
func (a *arpConn) resolve(ctx context.Context, src, ip net.IP, timeout time.Duration) (net.HardwareAddr, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req := arpPacket{op: arpRequest, sha: a.mac, spa: src, tha: make(net.HardwareAddr, 6), tpa: ip}
	interval := 250 * time.Millisecond
	for {
		if err := a.send(req, broadcastMAC); err != nil {
			return nil, fmt.Errorf("send ARP request for %s: %w", ip, err)
		}
		var mac net.HardwareAddr
		found, err := a.readUntil(ctx, time.Now().Add(interval), func(p arpPacket) bool {
			if p.op == arpReply && p.spa.Equal(ip) {
				mac = p.sha
				return true
			}
			return false
		})
		if found {
			return mac, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("no ARP reply from %s within %s", ip, timeout)
			}
			return nil, err
		}
		interval = min(interval*2, 2*time.Second)
	}
}

// LinkLocalTiming holds the RFC 3927 section 9 constants; tests shorten them.
type LinkLocalTiming struct {
	ProbeWait        time.Duration // random delay before the first probe
	ProbeNum         int
	ProbeMin         time.Duration // spacing between probes: random in [ProbeMin, ProbeMax]
	ProbeMax         time.Duration
	AnnounceWait     time.Duration // wait after the last probe
	AnnounceNum      int
	AnnounceInterval time.Duration
	MaxConflicts     int           // after this many, wait RateLimitInterval between tries
	RateLimit        time.Duration // RATE_LIMIT_INTERVAL
}

// RFC3927Timing is the timing RFC 3927 prescribes.
var RFC3927Timing = LinkLocalTiming{
	ProbeWait: time.Second, ProbeNum: 3, ProbeMin: time.Second, ProbeMax: 2 * time.Second,
	AnnounceWait: 2 * time.Second, AnnounceNum: 2, AnnounceInterval: 2 * time.Second,
	MaxConflicts: 10, RateLimit: 60 * time.Second,
}

// linkLocalCandidate returns the n-th address this MAC tries, from 169.254.1.0 to
// 169.254.254.255 (RFC 3927 2.1): seeded by the MAC so a host keeps its address
// across boots when it can.
func linkLocalCandidate(mac net.HardwareAddr, n int) net.IP {
	h := fnv.New64a()
	h.Write(mac)
	seed := h.Sum64()
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	v := r.IntN(254 * 256)
	return net.IPv4(169, 254, byte(1+v/256), byte(v%256)).To4()
}

func randBetween(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo)
}

// probe runs RFC 3927 2.2.1 for ip: it reports a conflict when another host uses or
// probes for it.
func (a *arpConn) probe(ctx context.Context, ip net.IP, t LinkLocalTiming) (conflict bool, err error) {
	conflicts := func(p arpPacket) bool {
		return p.spa.Equal(ip) || (p.op == arpRequest && p.spa.IsUnspecified() && p.tpa.Equal(ip))
	}
	zero := net.IPv4zero.To4()
	if found, err := a.readUntil(ctx, time.Now().Add(randBetween(0, t.ProbeWait)), conflicts); found || err != nil {
		return found, err
	}
	for i := 0; i < t.ProbeNum; i++ {
		p := arpPacket{op: arpRequest, sha: a.mac, spa: zero, tha: make(net.HardwareAddr, 6), tpa: ip}
		if err := a.send(p, broadcastMAC); err != nil {
			return false, fmt.Errorf("send ARP probe for %s: %w", ip, err)
		}
		wait := randBetween(t.ProbeMin, t.ProbeMax)
		if i == t.ProbeNum-1 {
			wait = t.AnnounceWait
		}
		if found, err := a.readUntil(ctx, time.Now().Add(wait), conflicts); found || err != nil {
			return found, err
		}
	}
	return false, nil
}

// announce sends the RFC 3927 2.4 announcements once ip is assigned.
func (a *arpConn) announce(ctx context.Context, ip net.IP, t LinkLocalTiming) error {
	for i := 0; i < t.AnnounceNum; i++ {
		p := arpPacket{op: arpRequest, sha: a.mac, spa: ip, tha: make(net.HardwareAddr, 6), tpa: ip}
		if err := a.send(p, broadcastMAC); err != nil {
			return fmt.Errorf("send ARP announcement for %s: %w", ip, err)
		}
		if i < t.AnnounceNum-1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(t.AnnounceInterval):
			}
		}
	}
	return nil
}
