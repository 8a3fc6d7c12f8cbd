package network

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/quantix/quantix"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The lab: two network namespaces joined by a veth pair. The service manages
// "eth0" in the client namespace; the far namespace holds "gw0" with the gateway
// address and, when a test wants one, a DHCP server written with server4.

const (
	labSubnet  = "10.77.0.0/24"
	labGateway = "10.77.0.1"
)

var labSeq atomic.Int32

type lab struct {
	t          testing.TB
	client     string // namespace names
	far        string
	clientPath string
	farNS      netns.NsHandle
	dir        string
	h          *netlink.Handle // client namespace
}

func requireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("network namespace test: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Fatalf("network namespace tests need root (run as root, or go test -short)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("ip not found: run make deps (apt-get install iproute2)")
	}
}

func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newLab makes the namespaces and the veth pair, with the gateway address on the
// far end; everything is removed when the test ends.
func newLab(t testing.TB) *lab {
	t.Helper()
	requireRoot(t)
	base := fmt.Sprintf("qxnet%d-%d", os.Getpid(), labSeq.Add(1))
	l := &lab{t: t, client: base + "c", far: base + "f", dir: t.TempDir()}
	ipCmd(t, "netns", "add", l.client)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.client).Run() })
	ipCmd(t, "netns", "add", l.far)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.far).Run() })
	l.clientPath = "/var/run/netns/" + l.client
	ipCmd(t, "-n", l.client, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.far, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.client, "link", "add", "eth0", "address", "52:54:00:77:00:10", "type", "veth", "peer", "name", "gw0", "netns", l.far)
	ipCmd(t, "-n", l.far, "addr", "add", labGateway+"/24", "dev", "gw0")
	ipCmd(t, "-n", l.far, "link", "set", "gw0", "up")
	var err error
	l.farNS, err = netns.GetFromName(l.far)
	if err != nil {
		t.Fatalf("open namespace %s: %v", l.far, err)
	}
	t.Cleanup(func() { l.farNS.Close() })
	cns, err := netns.GetFromName(l.client)
	if err != nil {
		t.Fatalf("open namespace %s: %v", l.client, err)
	}
	defer cns.Close()
	l.h, err = netlink.NewHandleAt(cns)
	if err != nil {
		t.Fatalf("netlink in %s: %v", l.client, err)
	}
	t.Cleanup(l.h.Close)
	return l
}

// config returns a service Config whose every path is inside the test's folder.
func (l *lab) config() Config {
	return Config{
		PersistentPath:   filepath.Join(l.dir, "quantix/network/network.toml"),
		SessionPath:      filepath.Join(l.dir, "etc/quantix/network/network.toml"),
		ResolvConf:       filepath.Join(l.dir, "etc/resolv.conf"),
		StateFile:        filepath.Join(l.dir, "run/network.json"),
		Socket:           filepath.Join(l.dir, "run/network.sock"),
		CmdlinePath:      filepath.Join(l.dir, "cmdline"),
		SysfsRoot:        filepath.Join(l.dir, "sys"),
		NetNS:            l.clientPath,
		CheckTimeout:     2 * time.Second,
		DHCPRetryInitial: 500 * time.Millisecond,
		DHCPRetryMax:     time.Second,
		LinkLocal:        fastLinkLocal,
	}
}

// fastLinkLocal keeps RFC 3927's sequence with shorter waits: the time is the only
// thing faked.
var fastLinkLocal = LinkLocalTiming{
	ProbeWait: 100 * time.Millisecond, ProbeNum: 3, ProbeMin: 100 * time.Millisecond, ProbeMax: 200 * time.Millisecond,
	AnnounceWait: 300 * time.Millisecond, AnnounceNum: 2, AnnounceInterval: 200 * time.Millisecond,
	MaxConflicts: 10, RateLimit: time.Second,
}

// kernelState is what the tests compare: every IPv4 address on every link and every
// IPv4 route of the main table in the client namespace.
func (l *lab) kernelState() string {
	l.t.Helper()
	links, err := l.h.LinkList()
	if err != nil {
		l.t.Fatalf("list links: %v", err)
	}
	var lines []string
	for _, k := range links {
		as, err := l.h.AddrList(k, netlink.FAMILY_V4)
		if err != nil {
			l.t.Fatalf("list addresses: %v", err)
		}
		for _, a := range as {
			lines = append(lines, fmt.Sprintf("addr %s %s", k.Attrs().Name, a.IPNet))
		}
	}
	rs, err := l.h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatalf("list routes: %v", err)
	}
	for _, r := range rs {
		lines = append(lines, fmt.Sprintf("route dst=%v gw=%v dev=%d", r.Dst, r.Gw, r.LinkIndex))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// defaults returns the default routes as "via GW dev NAME".
func (l *lab) defaults() []string {
	l.t.Helper()
	rs, err := l.h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatalf("list routes: %v", err)
	}
	var out []string
	for _, r := range rs {
		if !isDefault(r) {
			continue
		}
		k, err := l.h.LinkByIndex(r.LinkIndex)
		name := "?"
		if err == nil {
			name = k.Attrs().Name
		}
		out = append(out, fmt.Sprintf("via %s dev %s", r.Gw, name))
	}
	return out
}

func (l *lab) addrs(dev string) []string {
	l.t.Helper()
	k, err := l.h.LinkByName(dev)
	if err != nil {
		l.t.Fatalf("link %s: %v", dev, err)
	}
	as, err := l.h.AddrList(k, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatalf("addresses of %s: %v", dev, err)
	}
	out := []string{}
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
}

// inFar runs f on a thread inside the far namespace (for sockets created there).
func (l *lab) inFar(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(l.farNS); err != nil {
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

// dhcpServer is the far end's DHCP server. Tests switch it on and off, and set the
// lease times.
type dhcpServer struct {
	t        testing.TB
	srv      *server4.Server
	serverIP net.IP
	mu       sync.Mutex
	on       bool
	nakAll   bool // refuse every REQUEST
	delay    time.Duration
	lease    time.Duration
	t1, t2   time.Duration
	next     byte
	leases   map[string]net.IP
	log      []string // "DISCOVER from 0.0.0.0", "REQUEST from 10.77.0.100 ciaddr=..."
	changed  chan struct{}
}

func (l *lab) startDHCP(lease time.Duration) *dhcpServer {
	l.t.Helper()
	d := &dhcpServer{t: l.t, serverIP: net.ParseIP(labGateway).To4(), on: true, lease: lease,
		next: 100, leases: map[string]net.IP{}, changed: make(chan struct{}, 1)}
	err := l.inFar(func() error {
		var err error
		d.srv, err = server4.NewServer("gw0", &net.UDPAddr{Port: dhcpv4.ServerPort}, d.handle)
		return err
	})
	if err != nil {
		l.t.Fatalf("start DHCP server in %s: %v", l.far, err)
	}
	go d.srv.Serve()
	l.t.Cleanup(func() { d.srv.Close() })
	return d
}

func (d *dhcpServer) set(f func(d *dhcpServer)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

func (d *dhcpServer) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

func (d *dhcpServer) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	if m.OpCode != dhcpv4.OpcodeBootRequest {
		return
	}
	d.mu.Lock()
	mac := m.ClientHWAddr.String()
	d.log = append(d.log, fmt.Sprintf("%s from %s ciaddr=%s req=%v", m.MessageType(), peer.(*net.UDPAddr).IP, m.ClientIPAddr, m.RequestedIPAddress()))
	select {
	case d.changed <- struct{}{}:
	default:
	}
	on, nakAll, delay, lease, t1, t2 := d.on, d.nakAll, d.delay, d.lease, d.t1, d.t2
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
	if !on {
		return
	}
	if delay > 0 {
		time.Sleep(delay)
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
		if !want.Equal(ip) || nakAll {
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
			dhcpv4.WithOption(dhcpv4.OptDNS(net.ParseIP("10.77.0.53"))),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lease)))
		if t1 > 0 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(t1)), dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(t2)))
		}
	}
	resp, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		d.t.Errorf("dhcp server: %v", err)
		return
	}
	conn.WriteTo(resp.ToBytes(), peer)
}

// run starts a service on the lab and returns it with its marker stream; it is
// stopped (and must exit nil) when the test ends.
type running struct {
	s       *Service
	markers *markerWriter
	done    chan error
	start   time.Time
	cancel  context.CancelFunc
}

func (l *lab) run(cfg Config) *running {
	l.t.Helper()
	mw := newMarkerWriter()
	cfg.Stdout = mw
	log := slog.New(slog.NewTextHandler(newTestWriter(l.t), &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg, log)
	if err != nil {
		l.t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, markers: mw, done: make(chan error, 1), start: time.Now(), cancel: cancel}
	go func() { r.done <- s.Run(ctx) }()
	l.t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				l.t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			l.t.Errorf("Run did not stop within 10s of cancel")
		}
	})
	return r
}

// waitMarker waits for a ready marker with the given source.
func (r *running) waitMarker(t testing.TB, source string, timeout time.Duration) quantix.Marker {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-r.markers.ch:
			t.Logf("marker after %s: %s", time.Since(r.start).Round(time.Millisecond), m)
			if m.Get("source") == source {
				return m
			}
		case err := <-r.done:
			t.Fatalf("Run ended while waiting for source=%s: %v", source, err)
		case <-deadline:
			t.Fatalf("no ready marker with source=%s within %s; status %+v", source, timeout, r.s.Status())
		}
	}
}

// waitStatus polls the status until cond holds.
func waitStatus(t testing.TB, s *Service, timeout time.Duration, what string, cond func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := s.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; status %+v dhcp %+v", what, timeout, st, st.DHCP)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type markerWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan quantix.Marker
}

func newMarkerWriter() *markerWriter { return &markerWriter{ch: make(chan quantix.Marker, 64)} }

func (w *markerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err == io.EOF {
			w.buf.WriteString(line)
			return len(p), nil
		}
		if m, ok := quantix.ParseMarker(line); ok {
			w.ch <- m
		}
	}
}

// testWriter sends log lines to t.Log until the test is over.
type testWriter struct {
	t    testing.TB
	done *atomic.Bool
}

func newTestWriter(t testing.TB) testWriter {
	w := testWriter{t: t, done: new(atomic.Bool)}
	t.Cleanup(func() { w.done.Store(true) })
	return w
}

func (w testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
