package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// DHCP client states (RFC 2131 section 4.4), as shown in the status.
const (
	DHCPInit       = "init"
	DHCPSelecting  = "selecting"
	DHCPRequesting = "requesting"
	DHCPBound      = "bound"
	DHCPRenewing   = "renewing"
	DHCPRebinding  = "rebinding"
)

// lease is a bound DHCP lease.
type lease struct {
	addr     *net.IPNet
	router   net.IP
	dns      []net.IP
	search   []string
	server   net.IP
	obtained time.Time
	duration time.Duration // option 51
	t1, t2   time.Duration // from obtained
	offer    *dhcpv4.DHCPv4
	ack      *dhcpv4.DHCPv4
}

func (l *lease) expiry() time.Time { return l.obtained.Add(l.duration) }

func (l *lease) target(dnsOverride []net.IP) target {
	t := target{source: SourceDHCP, addr: l.addr, gw: l.router, dns: l.dns, search: l.search}
	if len(dnsOverride) > 0 {
		t.dns = dnsOverride
	}
	t.lifetime = time.Until(l.expiry())
	return t
}

// leaseFrom builds a lease from an ACK, taking what the ACK leaves out from the
// offer (some servers omit options in renewal ACKs).
func leaseFrom(ack, offer *dhcpv4.DHCPv4, now time.Time) (*lease, error) {
	ip := ack.YourIPAddr.To4()
	if ip == nil || ip.IsUnspecified() {
		return nil, errors.New("ACK without an address")
	}
	mask := ack.SubnetMask()
	if mask == nil && offer != nil {
		mask = offer.SubnetMask()
	}
	if mask == nil {
		mask = net.CIDRMask(classfulPrefix(ip), 32)
	}
	l := &lease{
		addr:     &net.IPNet{IP: ip, Mask: mask},
		server:   ack.ServerIdentifier(),
		obtained: now,
		offer:    offer,
		ack:      ack,
	}
	if l.server == nil && offer != nil {
		l.server = offer.ServerIdentifier()
	}
	pick := func(f func(*dhcpv4.DHCPv4) []net.IP) []net.IP {
		if v := f(ack); len(v) > 0 {
			return v
		}
		if offer != nil {
			return f(offer)
		}
		return nil
	}
	if rs := pick((*dhcpv4.DHCPv4).Router); len(rs) > 0 && rs[0].To4() != nil && !rs[0].IsUnspecified() {
		l.router = rs[0].To4()
	}
	l.dns = pick((*dhcpv4.DHCPv4).DNS)
	if ds := ack.DomainSearch(); ds != nil {
		l.search = ds.Labels
	} else if dn := ack.DomainName(); dn != "" {
		l.search = []string{dn}
	}
	l.duration = ack.IPAddressLeaseTime(0)
	if l.duration <= 0 {
		return nil, errors.New("ACK without a lease time")
	}
	l.t1 = ack.IPAddressRenewalTime(l.duration / 2)
	l.t2 = ack.IPAddressRebindingTime(l.duration * 7 / 8)
	if l.t2 <= 0 || l.t2 > l.duration {
		l.t2 = l.duration * 7 / 8
	}
	if l.t1 <= 0 || l.t1 > l.t2 {
		l.t1 = l.t2 / 2 * 8 / 7 // keep the 0.5 : 0.875 ratio of the defaults
	}
	return l, nil
}

type dhcpEventKind int

const (
	dhcpState   dhcpEventKind = iota // state changed (status only)
	dhcpBound                        // a new lease (first or after re-discovery)
	dhcpRenewed                      // the same lease extended (RENEWING or REBINDING)
	dhcpExpired                      // lease expired or NAKed: the address must go
)

type dhcpEvent struct {
	kind  dhcpEventKind
	state string
	lease *lease
	why   string
}

// dhcpClient is the lease state machine on top of nclient4, which only does the
// exchanges: INIT, SELECTING, REQUESTING, BOUND, RENEWING, REBINDING, expiry.
type dhcpClient struct {
	env          *netEnv
	ifi          *net.Interface
	log          *slog.Logger
	requested    net.IP // the previous address, asked for again in DISCOVER
	retryInitial time.Duration
	retryMax     time.Duration
	hostname     string
	events       chan<- dhcpEvent
}

func (c *dhcpClient) emit(ctx context.Context, ev dhcpEvent) bool {
	select {
	case c.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *dhcpClient) run(ctx context.Context) {
	for ctx.Err() == nil {
		l := c.acquire(ctx)
		if l == nil {
			return
		}
		if !c.emit(ctx, dhcpEvent{kind: dhcpBound, state: DHCPBound, lease: l}) {
			return
		}
		c.requested = l.addr.IP
		c.maintain(ctx, l)
	}
}

func (c *dhcpClient) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// jitter spreads retransmissions by up to ±1/8 (RFC 2131 4.1 asks for ±1 s on its
// 4 s..64 s schedule).
func jitter(d time.Duration) time.Duration {
	if d < 8 {
		return d
	}
	return d - d/8 + rand.N(d/4)
}

func (c *dhcpClient) requestOptions() []dhcpv4.Modifier {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
			dhcpv4.OptionDomainName, dhcpv4.OptionDNSDomainSearchList, dhcpv4.OptionIPAddressLeaseTime,
			dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue),
	}
	if c.hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(c.hostname)))
	}
	return mods
}

// rawClient opens a broadcast client on the unconfigured interface.
func (c *dhcpClient) rawClient(timeout time.Duration) (*nclient4.Client, error) {
	var conn net.PacketConn
	err := c.env.do(func() error {
		pc, err := packet.Listen(c.ifi, packet.Datagram, unix.ETH_P_IP, nil)
		if err != nil {
			return err
		}
		conn = nclient4.NewBroadcastUDPConn(pc, &net.UDPAddr{Port: nclient4.ClientPort})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open DHCP socket on %s: %w", c.ifi.Name, err)
	}
	return nclient4.NewWithConn(conn, c.ifi.HardwareAddr, nclient4.WithTimeout(timeout), nclient4.WithRetry(1))
}

// unicastClient opens a UDP socket on the leased address for RENEWING (RFC 2131
// 4.4.5: the request is unicast to the server that granted the lease).
func (c *dhcpClient) unicastClient(l *lease, timeout time.Duration) (*nclient4.Client, error) {
	var conn net.PacketConn
	err := c.env.do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
					return
				}
				serr = unix.BindToDevice(int(fd), c.ifi.Name)
			})
			if err != nil {
				return err
			}
			return serr
		}}
		var err error
		conn, err = lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort(l.addr.IP.String(), fmt.Sprint(nclient4.ClientPort)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open DHCP renewal socket on %s: %w", l.addr.IP, err)
	}
	return nclient4.NewWithConn(conn, c.ifi.HardwareAddr, nclient4.WithTimeout(timeout), nclient4.WithRetry(1),
		nclient4.WithServerAddr(&net.UDPAddr{IP: l.server, Port: nclient4.ServerPort}))
}

// acquire runs INIT -> SELECTING -> REQUESTING until a lease is bound; retransmits
// back off exponentially from retryInitial to retryMax. It returns nil when ctx ends.
func (c *dhcpClient) acquire(ctx context.Context) *lease {
	backoff := c.retryInitial
	for ctx.Err() == nil {
		c.emit(ctx, dhcpEvent{kind: dhcpState, state: DHCPSelecting})
		wait := jitter(backoff)
		start := time.Now()
		l, err := c.discover(ctx, wait)
		if l != nil {
			return l
		}
		if ctx.Err() != nil {
			return nil
		}
		var nak *nclient4.ErrNak
		if errors.As(err, &nak) {
			// The server refused the address we asked for: start over without it.
			c.log.Info("dhcp request refused", "iface", c.ifi.Name, "requested", c.requested, "msg", nak.Nak.Message())
			if c.requested != nil {
				// Our old address is not welcome here: ask at once for any
				// (only once; further NAKs wait their turn).
				c.requested = nil
				continue
			}
		} else {
			c.log.Debug("dhcp no lease yet", "iface", c.ifi.Name, "err", err)
		}
		// A failure that came back early (link down, socket error) still waits
		// out its turn: never a busy loop.
		if !c.sleep(ctx, wait-time.Since(start)) {
			return nil
		}
		backoff = min(backoff*2, c.retryMax)
	}
	return nil
}

func (c *dhcpClient) discover(ctx context.Context, wait time.Duration) (*lease, error) {
	cl, err := c.rawClient(wait)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	mods := c.requestOptions()
	if c.requested != nil {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(c.requested)))
	}
	offer, err := cl.DiscoverOffer(ctx, mods...)
	if err != nil {
		return nil, err
	}
	c.emit(ctx, dhcpEvent{kind: dhcpState, state: DHCPRequesting})
	lw, err := cl.RequestFromOffer(ctx, offer, c.requestOptions()...)
	if err != nil {
		return nil, err
	}
	return leaseFrom(lw.ACK, offer, lw.CreationTime)
}

// maintain runs BOUND -> RENEWING -> REBINDING for l and returns when the lease is
// gone (expired or NAKed; dhcpExpired is emitted) or ctx ends.
func (c *dhcpClient) maintain(ctx context.Context, l *lease) {
	for {
		c.emit(ctx, dhcpEvent{kind: dhcpState, state: DHCPBound})
		if !c.sleep(ctx, time.Until(l.obtained.Add(l.t1))) {
			return
		}
		next, why := c.extend(ctx, l, DHCPRenewing, l.obtained.Add(l.t2))
		if next == nil && why == "" && ctx.Err() == nil {
			next, why = c.extend(ctx, l, DHCPRebinding, l.expiry())
		}
		if ctx.Err() != nil {
			return
		}
		if next == nil {
			if why == "" {
				why = "lease expired without renewal"
			}
			c.emit(ctx, dhcpEvent{kind: dhcpExpired, state: DHCPInit, why: why})
			return
		}
		kind := dhcpRenewed
		if !next.addr.IP.Equal(l.addr.IP) {
			kind = dhcpBound
		}
		l = next
		c.requested = l.addr.IP
		if !c.emit(ctx, dhcpEvent{kind: kind, state: DHCPBound, lease: l}) {
			return
		}
	}
}

// extend sends REQUESTs in state (unicast when renewing, broadcast when rebinding)
// until an ACK, a NAK (why is set) or until.
func (c *dhcpClient) extend(ctx context.Context, l *lease, state string, until time.Time) (*lease, string) {
	c.emit(ctx, dhcpEvent{kind: dhcpState, state: state})
	for ctx.Err() == nil {
		left := time.Until(until)
		if left <= 0 {
			return nil, ""
		}
		// RFC 2131 4.4.5: wait half the remaining time (at most 60 s) between tries.
		wait := min(max(left/2, 500*time.Millisecond), 60*time.Second, left)
		start := time.Now()
		var cl *nclient4.Client
		var err error
		if state == DHCPRenewing {
			cl, err = c.unicastClient(l, wait)
		} else {
			cl, err = c.rawClient(wait)
		}
		if err != nil {
			c.log.Warn("dhcp socket", "iface", c.ifi.Name, "state", state, "err", err)
			if !c.sleep(ctx, wait) {
				return nil, ""
			}
			continue
		}
		xid, _ := dhcpv4.GenerateTransactionID()
		mods := append(c.requestOptions(), dhcpv4.WithTransactionID(xid),
			dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)))
		req, err := dhcpv4.NewRenewFromAck(l.ack, mods...)
		if err != nil {
			cl.Close()
			c.log.Error("dhcp build request", "err", err)
			return nil, ""
		}
		dest := &net.UDPAddr{IP: net.IPv4bcast, Port: nclient4.ServerPort}
		match := nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)
		if state == DHCPRenewing {
			dest = &net.UDPAddr{IP: l.server, Port: nclient4.ServerPort}
			match = nclient4.IsAll(nclient4.IsCorrectServer(l.server), match)
		}
		resp, err := cl.SendAndRead(ctx, dest, req, match)
		cl.Close()
		switch {
		case err != nil:
			c.log.Debug("dhcp no answer", "iface", c.ifi.Name, "state", state, "err", err)
			if !c.sleep(ctx, wait-time.Since(start)) {
				return nil, ""
			}
		case resp.MessageType() == dhcpv4.MessageTypeNak:
			return nil, "server " + resp.ServerIdentifier().String() + " refused the lease (NAK): " + resp.Message()
		default:
			next, err := leaseFrom(resp, l.offer, time.Now())
			if err != nil {
				c.log.Warn("dhcp bad ACK", "iface", c.ifi.Name, "err", err)
				continue
			}
			return next, ""
		}
	}
	return nil, ""
}
