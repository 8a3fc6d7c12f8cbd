package network

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/netlab"
	"github.com/vishvananda/netlink"
)

// The lab: two network namespaces joined by a veth pair. The service manages
// "eth0" in the client namespace; the far namespace holds "gw0" with the gateway
// address and, when a test wants one, a DHCP server written with server4.

const labGateway = netlab.Gateway

type lab struct {
	t          testing.TB
	pair       *netlab.Pair
	client     string // namespace names
	far        string
	clientPath string
	dir        string
	h          *netlink.Handle // client namespace
}

// newLab makes the namespaces and the veth pair, with the gateway address on the
// far end; everything is removed when the test ends.
func newLab(t testing.TB) *lab {
	t.Helper()
	p := netlab.NewPair(t, "qxnet")
	return &lab{t: t, pair: p, client: p.Client.Name, far: p.Far.Name, clientPath: p.Client.Path(),
		dir: t.TempDir(), h: p.Client.Handle}
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

func (l *lab) addrs(dev string) []string { return l.pair.Client.Addrs(dev) }

// inFar runs f on a thread inside the far namespace (for sockets created there).
func (l *lab) inFar(f func() error) error { return l.pair.Far.Do(f) }

// startDHCP starts the far end's DHCP server with the given lease time.
func (l *lab) startDHCP(lease time.Duration) *netlab.DHCPServer {
	l.t.Helper()
	return l.pair.StartDHCP(l.t, netlab.DHCPSettings{Lease: lease, DNS: net.ParseIP("10.77.0.53")})
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
