package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// HubConfig configures an L2 hub. The zero value gives 10.77.0.0/24 with the hub at
// 10.77.0.1, a DHCP pool .100-.199, one-hour leases and the DHCP server on.
type HubConfig struct {
	// Name names the hub's artifacts (<name>.pcap, <name>.log); default "hub".
	Name string
	// Subnet of the segment; default 10.77.0.0/24.
	Subnet netip.Prefix
	// Gateway is the hub's own address on the segment: it answers ARP and ping for
	// it, serves DHCP from it and hands it out as router. Default: first host of Subnet.
	Gateway netip.Addr
	// PoolStart and PoolEnd bound the DHCP pool; default .100 to .199 of Subnet.
	PoolStart, PoolEnd netip.Addr
	// LeaseTime of DHCP leases; default one hour.
	LeaseTime time.Duration
	// DNS servers handed out with leases; default none.
	DNS []netip.Addr
	// DHCPOff starts the hub with its DHCP server switched off (SetDHCP turns it on).
	DHCPOff bool
}

// GatewayMAC is the hub's own MAC address on every segment.
var GatewayMAC = net.HardwareAddr{0x02, 0x51, 0x78, 0x00, 0x00, 0x01}

// Hub is a learning L2 switch between unix datagram sockets (QEMU's `-netdev dgram`
// NICs, or any program speaking raw Ethernet frames over one), with an endpoint of
// its own at the gateway address: ARP, ICMP echo and a DHCP server. It writes every
// frame on the segment to a pcap.
type Hub struct {
	cfg      HubConfig
	dir      string // short folder for the sockets
	pcapPath string
	pcap     *pcapWriter
	log      *slog.Logger
	logFile  *os.File

	mu        sync.Mutex
	ports     map[string]*Port
	macs      map[[6]byte]*Port
	dhcpOn    bool
	dhcpDelay time.Duration
	leases    map[[6]byte]*Lease
	fixed     map[[6]byte]netip.Addr
	declined  map[netip.Addr]bool
	leaseWake chan struct{}
	closed    bool

	wg sync.WaitGroup
}

// Port is one hub port: the hub listens on HubPath and sends to PeerPath, where the
// VM's NIC (or a test's socket) is bound.
type Port struct {
	Name     string
	HubPath  string
	PeerPath string

	hub  *Hub
	conn *net.UnixConn
	peer *net.UnixAddr

	mu    sync.Mutex
	cut   bool
	stats PortStats
}

// PortStats counts frames through a port. Rx is from the peer into the hub, Tx from
// the hub to the peer; the Dropped counters are frames lost to a cut link.
type PortStats struct {
	RxFrames, TxFrames   uint64
	RxDropped, TxDropped uint64
	TxErrors             uint64 // peer not there (not started yet, or gone)
	LastRx               time.Time
}

// Lease is one DHCP lease the hub gave out.
type Lease struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
	State    string // "offered", "bound", "released"
	Expires  time.Time
	Updated  time.Time
}

// NewHub starts a hub for test t; it is closed, and its pcap finished, when t ends.
func NewHub(t testing.TB, cfg HubConfig) *Hub {
	t.Helper()
	h, err := newHub(cfg, ArtifactDir(t))
	if err != nil {
		t.Fatalf("hub: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func (c *HubConfig) setDefaults() error {
	if c.Name == "" {
		c.Name = "hub"
	}
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix("10.77.0.0/24")
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 30 || c.Subnet.Bits() < 8 {
		return fmt.Errorf("hub %s: subnet %s: want an IPv4 prefix between /8 and /30", c.Name, c.Subnet)
	}
	base := c.Subnet.Addr().As4()
	nth := func(n uint32) netip.Addr {
		v := binary.BigEndian.Uint32(base[:]) + n
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	if !c.Gateway.IsValid() {
		c.Gateway = nth(1)
	}
	if !c.PoolStart.IsValid() {
		c.PoolStart = nth(100)
	}
	if !c.PoolEnd.IsValid() {
		c.PoolEnd = nth(199)
	}
	for name, a := range map[string]netip.Addr{"gateway": c.Gateway, "pool start": c.PoolStart, "pool end": c.PoolEnd} {
		if !c.Subnet.Contains(a) {
			return fmt.Errorf("hub %s: %s %s is not inside %s", c.Name, name, a, c.Subnet)
		}
	}
	if c.PoolEnd.Less(c.PoolStart) {
		return fmt.Errorf("hub %s: pool end %s is before pool start %s", c.Name, c.PoolEnd, c.PoolStart)
	}
	if c.LeaseTime == 0 {
		c.LeaseTime = time.Hour
	}
	if c.LeaseTime < 10*time.Second {
		return fmt.Errorf("hub %s: lease time %v: want at least 10s", c.Name, c.LeaseTime)
	}
	return nil
}

func newHub(cfg HubConfig, artifacts string) (*Hub, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	// Unix socket paths are limited to 107 bytes: keep them out of long test folders.
	dir, err := os.MkdirTemp("", "qxhub-")
	if err != nil {
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	logFile, err := os.Create(filepath.Join(artifacts, cfg.Name+".log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	pcapPath := filepath.Join(artifacts, cfg.Name+".pcap")
	pw, err := newPcapWriter(pcapPath)
	if err != nil {
		logFile.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("hub %s: %w", cfg.Name, err)
	}
	h := &Hub{
		cfg:       cfg,
		dir:       dir,
		pcapPath:  pcapPath,
		pcap:      pw,
		logFile:   logFile,
		log:       slog.New(slog.NewTextHandler(logFile, nil)).With("hub", cfg.Name),
		ports:     map[string]*Port{},
		macs:      map[[6]byte]*Port{},
		dhcpOn:    !cfg.DHCPOff,
		leases:    map[[6]byte]*Lease{},
		fixed:     map[[6]byte]netip.Addr{},
		declined:  map[netip.Addr]bool{},
		leaseWake: make(chan struct{}),
	}
	h.log.Info("hub started", "subnet", cfg.Subnet, "gateway", cfg.Gateway, "dhcp", h.dhcpOn)
	return h, nil
}

// Config returns the hub's configuration with defaults filled in.
func (h *Hub) Config() HubConfig { return h.cfg }

// Gateway returns the hub's own address.
func (h *Hub) Gateway() netip.Addr { return h.cfg.Gateway }

// PcapPath returns the path of the segment's pcap (complete once the hub is closed;
// readable with ReadPcap at any time).
func (h *Hub) PcapPath() string { return h.pcapPath }

// AddPort creates a port. The peer must bind a unix datagram socket at PeerPath
// and send its frames to HubPath.
func (h *Hub) AddPort(name string) (*Port, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("hub %s: add port %s: hub closed", h.cfg.Name, name)
	}
	if _, ok := h.ports[name]; ok {
		return nil, fmt.Errorf("hub %s: add port %s: name in use", h.cfg.Name, name)
	}
	n := len(h.ports)
	p := &Port{
		Name:     name,
		HubPath:  filepath.Join(h.dir, fmt.Sprintf("p%d.hub", n)),
		PeerPath: filepath.Join(h.dir, fmt.Sprintf("p%d.peer", n)),
		hub:      h,
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p.HubPath, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("hub %s: add port %s: %w", h.cfg.Name, name, err)
	}
	p.conn = conn
	p.peer = &net.UnixAddr{Name: p.PeerPath, Net: "unixgram"}
	h.ports[name] = p
	h.wg.Add(1)
	go p.read()
	h.log.Info("port added", "port", name, "hub_path", p.HubPath, "peer_path", p.PeerPath)
	return p, nil
}

// Port returns the port called name, or nil.
func (h *Hub) Port(name string) *Port {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ports[name]
}

// Close stops the hub: ports closed, pcap and log finished. Safe to call twice.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	for _, p := range h.ports {
		p.conn.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	h.pcap.close()
	h.log.Info("hub closed")
	h.logFile.Close()
	os.RemoveAll(h.dir)
}

func (p *Port) read() {
	defer p.hub.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := p.conn.ReadFromUnix(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.hub.input(p, append([]byte(nil), buf[:n]...))
	}
}

// Cut makes the port drop every frame both ways, as if the cable were pulled (the
// VM's NIC still shows carrier; use Machine.SetLink for a carrier change).
func (p *Port) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
	p.hub.log.Info("link cut", "port", p.Name)
}

// Heal undoes Cut.
func (p *Port) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
	p.hub.log.Info("link healed", "port", p.Name)
}

// IsCut reports whether the port's link is cut.
func (p *Port) IsCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// Stats returns the port's frame counters.
func (p *Port) Stats() PortStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// send delivers a frame to the port's peer unless the link is cut.
func (p *Port) send(frame []byte) {
	p.mu.Lock()
	if p.cut {
		p.stats.TxDropped++
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	// A peer that stops reading must not stall the whole segment.
	p.conn.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	_, err := p.conn.WriteToUnix(frame, p.peer)
	p.mu.Lock()
	if err != nil {
		p.stats.TxErrors++
	} else {
		p.stats.TxFrames++
	}
	p.mu.Unlock()
}

// input takes a frame that arrived from port src.
func (h *Hub) input(src *Port, frame []byte) {
	if len(frame) < ethHeaderLen {
		return
	}
	src.mu.Lock()
	if src.cut {
		src.stats.RxDropped++
		src.mu.Unlock()
		return
	}
	src.stats.RxFrames++
	src.stats.LastRx = time.Now()
	src.mu.Unlock()
	h.pcap.write(time.Now(), frame)

	dst, from := frame[0:6], frame[6:12]
	h.mu.Lock()
	if !isGroupMAC(from) {
		if old := h.macs[macKey(from)]; old != src {
			h.macs[macKey(from)] = src
			h.log.Debug("learned", "mac", net.HardwareAddr(from).String(), "port", src.Name)
		}
	}
	var out []*Port
	local := false
	switch {
	case isGroupMAC(dst):
		local = true
		out = h.othersLocked(src)
	case macKey(dst) == macKey(GatewayMAC):
		local = true
	default:
		if p, ok := h.macs[macKey(dst)]; ok {
			if p != src {
				out = []*Port{p}
			}
		} else {
			out = h.othersLocked(src) // unknown unicast: flood
		}
	}
	h.mu.Unlock()
	for _, p := range out {
		p.send(frame)
	}
	if local {
		h.local(frame)
	}
}

func (h *Hub) othersLocked(src *Port) []*Port {
	var out []*Port
	for _, p := range h.ports {
		if p != src {
			out = append(out, p)
		}
	}
	return out
}

// emit sends a frame from the hub's own endpoint onto the segment.
func (h *Hub) emit(frame []byte) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	var out []*Port
	if isGroupMAC(frame[0:6]) {
		out = h.othersLocked(nil)
	} else if p, ok := h.macs[macKey(frame[0:6])]; ok {
		out = []*Port{p}
	} else {
		out = h.othersLocked(nil)
	}
	h.mu.Unlock()
	h.pcap.write(time.Now(), frame)
	for _, p := range out {
		p.send(frame)
	}
}

// local handles frames for the hub's own endpoint: ARP and ping for the gateway
// address, and DHCP.
func (h *Hub) local(frame []byte) {
	src := net.HardwareAddr(frame[6:12])
	payload := frame[ethHeaderLen:]
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeARP:
		h.arp(src, payload)
	case etherTypeIPv4:
		ip, ok := parseIPv4(payload)
		if !ok {
			return
		}
		switch ip.proto {
		case protoICMP:
			if ip.dst == h.cfg.Gateway {
				h.icmpEcho(src, ip)
			}
		case protoUDP:
			_, dport, data, ok := udpPorts(ip.payload)
			if ok && dport == 67 && (ip.dst == h.cfg.Gateway || ip.dst == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
				h.dhcp(src, ip, data)
			}
		}
	}
}

func (h *Hub) arp(src net.HardwareAddr, p []byte) {
	// Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4.
	if len(p) < 28 || binary.BigEndian.Uint16(p[0:2]) != 1 || binary.BigEndian.Uint16(p[2:4]) != etherTypeIPv4 ||
		p[4] != 6 || p[5] != 4 || binary.BigEndian.Uint16(p[6:8]) != 1 {
		return
	}
	target := netip.AddrFrom4([4]byte(p[24:28]))
	if target != h.cfg.Gateway {
		return
	}
	r := make([]byte, 28)
	copy(r[0:6], p[0:6])
	binary.BigEndian.PutUint16(r[6:8], 2) // reply
	copy(r[8:14], GatewayMAC)
	gw := h.cfg.Gateway.As4()
	copy(r[14:18], gw[:])
	copy(r[18:24], p[8:14])  // sender MAC becomes target
	copy(r[24:28], p[14:18]) // sender IP becomes target
	h.emit(etherFrame(net.HardwareAddr(p[8:14]), GatewayMAC, etherTypeARP, r))
}

func (h *Hub) icmpEcho(src net.HardwareAddr, ip ipv4Packet) {
	b := ip.payload
	if len(b) < 8 || b[0] != 8 || checksum(b, 0) != 0 { // echo request with a valid checksum
		return
	}
	r := append([]byte(nil), b...)
	r[0] = 0 // echo reply
	r[2], r[3] = 0, 0
	binary.BigEndian.PutUint16(r[2:4], checksum(r, 0))
	h.emit(etherFrame(src, GatewayMAC, etherTypeIPv4, buildIPv4(h.cfg.Gateway, ip.src, protoICMP, r)))
}
