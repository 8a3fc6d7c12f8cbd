// Package network is the Quantix network service: it puts the management address on
// one interface, or on a bridge over it (br0 on Quantix-OS, docs/design.md §13),
// static or by DHCP with a bounded first-lease timeout and a static or IPv4
// link-local fallback; it keeps exactly one default route, writes resolv.conf,
// applies new settings safely (rolled back unless confirmed) and reports its state
// on a unix socket. Settings are network.toml (docs/design.md §7); Parse, Load and
// Validate are shared with the installer and the console.
package network

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// Defaults of Config.
var (
	DefaultSessionPath  = filepath.Join(quantix.SessionDir, "network", "network.toml")
	DefaultResolvConf   = "/etc/resolv.conf"
	DefaultStateFile    = filepath.Join(quantix.RunDir, "network.json")
	DefaultCmdlinePath  = "/proc/cmdline"
	DefaultSysfsRoot    = "/sys"
	DefaultCheckTimeout = 5 * time.Second
	DefaultConfirm      = 60 * time.Second
)

// Config configures the service. Every path it reads or writes is here so tests
// never touch the host's own files; zero values take the defaults.
type Config struct {
	PersistentPath string // network.toml on QUANTIX-CFG (quantix.NetworkConfig)
	SessionPath    string // the session copy (/etc/quantix/network/network.toml)
	ResolvConf     string // /etc/resolv.conf
	StateFile      string // JSON Status, and the last lease for the next start
	Socket         string // quantix.NetworkSocket
	CmdlinePath    string // /proc/cmdline
	SysfsRoot      string // /sys, for the automatic interface choice
	// NetNS is a network namespace path (e.g. /var/run/netns/lab) to manage instead of
	// the process's own.
	NetNS string
	// Settings, when set, is used instead of the files and the command line
	// (apply --once, tests).
	Settings *Settings
	// Once makes Run return once the first address is in place (apply --once): no
	// socket, no persistence.
	Once bool
	// ProbeURL is fetched after an apply (any HTTP answer counts), in addition to the
	// gateway ARP check, e.g. the vDC.
	ProbeURL     string
	CheckTimeout time.Duration // gateway and probe check; 5s
	// DHCPRetryInitial and DHCPRetryMax bound the DISCOVER retransmission backoff
	// (2s doubling to 32s).
	DHCPRetryInitial time.Duration
	DHCPRetryMax     time.Duration
	// LinkLocal is the RFC 3927 timing; zero means RFC3927Timing.
	LinkLocal LinkLocalTiming
	// Hostname is sent in DHCP option 12 when set.
	Hostname string
	// Bridge is the image's default for network.toml's bridge key (docs/design.md
	// §13): "br0" on Quantix-OS, "" (the address on the NIC) on QvDC.
	Bridge string
	// Stdout receives the ready markers; nil discards them.
	Stdout io.Writer
}

func (c *Config) fill() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.PersistentPath, quantix.NetworkConfig)
	def(&c.SessionPath, DefaultSessionPath)
	def(&c.ResolvConf, DefaultResolvConf)
	def(&c.StateFile, DefaultStateFile)
	def(&c.Socket, quantix.NetworkSocket)
	def(&c.CmdlinePath, DefaultCmdlinePath)
	def(&c.SysfsRoot, DefaultSysfsRoot)
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = DefaultCheckTimeout
	}
	if c.DHCPRetryInitial <= 0 {
		c.DHCPRetryInitial = 2 * time.Second
	}
	if c.DHCPRetryMax < c.DHCPRetryInitial {
		c.DHCPRetryMax = max(32*time.Second, c.DHCPRetryInitial)
	}
	if c.LinkLocal.ProbeNum == 0 {
		c.LinkLocal = RFC3927Timing
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
}

// Service is the network service. Run owns the network; Status may be called from
// any goroutine.
type Service struct {
	cfg   Config
	log   *slog.Logger
	reqs  chan request
	ready chan struct{}

	mu         sync.Mutex
	env        *netEnv
	st         Status
	lastKernel [2][]string // addresses and default routes when Run ended

	// Owned by the Run goroutine.
	cur         plan
	origin      Origin
	good        plan
	link        netlink.Link // holds the address: the NIC, or the bridge over it
	port        netlink.Link // the NIC under link when that is a bridge, else nil
	bridge      string       // the bridge in use ("" none); at start, the previous run's
	leftBridge  string       // a bridge an unconfirmed apply stopped using
	programmed  target
	dhcp        *worker
	dhcpStarted time.Time
	dhcpBlind   bool // the client started while its link had no carrier
	dhcpEvents  chan dhcpEvent
	ll          *worker
	llEvents    chan llEvent
	llReady     net.IP
	fallbackC   <-chan time.Time
	leaseC      <-chan time.Time
	lease       *lease
	requested   net.IP
	fallbackOn  bool
	awaiting    *checkJob // a check to run once the address is in place
	pending     *pending
	confirmC    <-chan time.Time
	checks      chan checkResult
	marker      string
	onceDone    chan error
	runCtx      context.Context
}

// New checks cfg and returns a service; nothing is touched until Run.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	cfg.fill()
	if cfg.Bridge != "" {
		if err := validIfaceName(cfg.Bridge); err != nil {
			return nil, quantix.ConfigError(fmt.Errorf("default bridge %q %v", cfg.Bridge, err))
		}
	}
	if cfg.Settings != nil {
		if _, err := cfg.Settings.compile(cfg.Bridge); err != nil {
			return nil, quantix.ConfigError(fmt.Errorf("network configuration: %w", err))
		}
	}
	return &Service{
		cfg:        cfg,
		log:        log,
		reqs:       make(chan request),
		ready:      make(chan struct{}),
		dhcpEvents: make(chan dhcpEvent, 16),
		llEvents:   make(chan llEvent, 4),
		checks:     make(chan checkResult, 1),
		onceDone:   make(chan error, 1),
	}, nil
}

// Ready is closed once the first address is in place.
func (s *Service) Ready() <-chan struct{} { return s.ready }

type worker struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startWorker(ctx context.Context, f func(ctx context.Context)) *worker {
	ctx, cancel := context.WithCancel(ctx)
	w := &worker{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		f(ctx)
	}()
	return w
}

func (w *worker) stop() {
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// Run configures the network and serves the socket until ctx ends (nil) or the
// starting configuration is invalid (an error wrapping quantix.ErrConfig).
func (s *Service) Run(ctx context.Context) error {
	s.runCtx = ctx
	env, err := openNetEnv(s.cfg.NetNS)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.env = env
	s.mu.Unlock()
	defer func() {
		// Keep the last kernel view for Status after Run, then let go of the
		// namespace: a closed netlink handle would silently read our own.
		st := s.Status()
		s.mu.Lock()
		s.lastKernel = [2][]string{st.KernelAddresses, st.DefaultRoutes}
		s.env = nil
		s.mu.Unlock()
		env.close()
	}()

	settings, origin, err := s.startSettings()
	if err != nil {
		return quantix.ConfigError(fmt.Errorf("network configuration: %w", err))
	}
	p, err := settings.compile(s.cfg.Bridge)
	if err != nil {
		return quantix.ConfigError(fmt.Errorf("network configuration: %w", err))
	}
	s.requested, s.bridge = s.previous()

	var ln net.Listener
	if !s.cfg.Once {
		ln, err = listenUnix(s.cfg.Socket)
		if err != nil {
			return err
		}
		defer os.Remove(s.cfg.Socket)
		defer ln.Close()
		go s.serve(ctx, ln)
	}

	links := make(chan netlink.LinkUpdate, 32)
	linkDone := make(chan struct{})
	var stopping atomic.Bool
	defer func() {
		stopping.Store(true)
		close(linkDone)
	}()
	opts := netlink.LinkSubscribeOptions{ErrorCallback: func(err error) {
		if !stopping.Load() {
			s.log.Warn("link updates", "err", err)
		}
	}}
	if s.cfg.NetNS != "" {
		opts.Namespace = &env.ns
	}
	if err := netlink.LinkSubscribeWithOptions(links, linkDone, opts); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	routes := make(chan netlink.RouteUpdate, 64)
	ropts := netlink.RouteSubscribeOptions{Namespace: opts.Namespace, ErrorCallback: opts.ErrorCallback}
	if err := netlink.RouteSubscribeWithOptions(routes, linkDone, ropts); err != nil {
		return fmt.Errorf("subscribe to route updates: %w", err)
	}

	defer func() {
		s.dhcp.stop()
		s.ll.stop()
	}()
	s.log.Info("network starting", "origin", string(origin), "config", p.source, "mode", p.mode, "interface", p.iface)
	s.origin = origin
	s.good = p
	if err := s.activate(ctx, p); err != nil {
		s.setError(err)
		if s.cfg.Once {
			return err
		}
	}
	carrier := map[int]bool{}
	for {
		select {
		case <-ctx.Done():
			s.log.Info("network stopping")
			return nil
		case err := <-s.onceDone:
			return err
		case req := <-s.reqs:
			s.handle(ctx, req)
		case ev := <-s.dhcpEvents:
			s.onDHCP(ctx, ev)
		case ev := <-s.llEvents:
			s.onLinkLocal(ctx, ev)
		case <-s.fallbackC:
			s.fallbackC = nil
			s.onFallback(ctx)
		case <-s.leaseC:
			s.leaseC = nil
			s.onDHCP(ctx, dhcpEvent{kind: dhcpExpired, state: DHCPInit, why: "lease expired"})
		case <-s.confirmC:
			s.confirmC = nil
			if s.pending != nil {
				s.rollback(ctx, fmt.Sprintf("not confirmed within %s", s.pending.timeout), nil)
			}
		case r := <-s.checks:
			s.onCheck(ctx, r)
		case u := <-links:
			s.onLink(ctx, u, carrier)
		case u := <-routes:
			if u.Type == unix.RTM_NEWROUTE && isDefault(u.Route) && u.Family == netlink.FAMILY_V4 && u.Table == unix.RT_TABLE_MAIN {
				s.reconcileDefaults()
			}
		}
	}
}

// startSettings applies the precedence of docs/design.md §3 and makes the session copy.
func (s *Service) startSettings() (Settings, Origin, error) {
	if s.cfg.Settings != nil {
		return *s.cfg.Settings, OriginApply, nil
	}
	removeStaleTemp(s.cfg.PersistentPath)
	file, err := readOptional(s.cfg.PersistentPath)
	if err != nil {
		return Settings{}, OriginFile, fmt.Errorf("read %s: %w", s.cfg.PersistentPath, err)
	}
	cmdline, err := os.ReadFile(s.cfg.CmdlinePath)
	if err != nil && !os.IsNotExist(err) {
		return Settings{}, OriginCmdline, fmt.Errorf("read kernel command line: %w", err)
	}
	st, origin, err := Resolve(string(cmdline), s.cfg.PersistentPath, file)
	if err != nil {
		return Settings{}, origin, err
	}
	if origin == OriginFile {
		if err := quantix.WriteFileAtomic(s.cfg.SessionPath, file, 0o644); err != nil {
			return Settings{}, origin, fmt.Errorf("session copy: %w", err)
		}
	}
	return st, origin, nil
}

// previous reads the last run's state file: the leased address, to ask for it
// again, and the bridge the address was on, to reuse or remove it.
func (s *Service) previous() (leased net.IP, bridge string) {
	b, err := os.ReadFile(s.cfg.StateFile)
	if err != nil {
		return nil, ""
	}
	var st Status
	if json.Unmarshal(b, &st) != nil {
		return nil, ""
	}
	if st.Port != "" {
		bridge = st.Interface
	}
	if st.DHCP == nil || st.DHCP.Address == "" {
		return nil, bridge
	}
	ip, _, err := net.ParseCIDR(st.DHCP.Address)
	if err != nil {
		return nil, bridge
	}
	return ip.To4(), bridge
}

// activate makes p the running configuration on its interface. For static settings
// the address is in place (and verified) when it returns; for DHCP the client and
// the fallback timer are started.
func (s *Service) activate(ctx context.Context, p plan) error {
	// A lease in place may move with the layout (below): same MAC, same lease.
	var carried *lease
	if s.programmed.source == SourceDHCP && s.lease != nil && time.Until(s.lease.expiry()) > 0 {
		carried = s.lease
	}
	s.dhcp.stop()
	s.ll.stop()
	s.dhcp, s.ll = nil, nil
	s.fallbackC, s.leaseC = nil, nil
	s.lease, s.llReady, s.fallbackOn = nil, nil, false
	s.drainEvents()

	s.cur = p
	s.update(func(st *Status) {
		st.Mode, st.ConfigOrigin, st.ConfigSource = p.mode, string(s.origin), p.source
		st.DHCP = nil
		// A new configuration starts with a clean slate: errors of the previous one
		// are in the log.
		st.LastError, st.LastErrorAt = "", time.Time{}
	})
	nic, err := s.env.findLink(p.iface, s.ourBridges(p), s.cfg.SysfsRoot)
	if err != nil {
		if s.link != nil {
			s.programTarget(target{source: SourceNone})
		}
		s.link, s.port = nil, nil
		return err
	}
	prevLink, prevPort, prevBridge := s.link, s.port, s.bridge
	l, port, err := s.layout(p, nic)
	var bridgeErr error
	if err != nil && p.bridge != "" && s.pending == nil {
		// Not an apply (that would roll back): the host must not stay off the
		// network because its bridge cannot be made. The address goes on the NIC,
		// and the console and the status say why.
		bridgeErr = err
		nb := p
		nb.bridge = ""
		l, port, err = s.layout(nb, nic)
	}
	if err != nil {
		if s.link != nil {
			s.programTarget(target{source: SourceNone})
		}
		s.link, s.port = nil, nil
		return err
	}
	s.link, s.port, s.bridge = l, port, p.bridge
	if bridgeErr != nil {
		s.bridge = ""
		msg := fmt.Sprintf("%v; the address is on %s instead", bridgeErr, l.Attrs().Name)
		fmt.Fprintln(s.cfg.Stdout, quantix.WarningMarker("network", msg))
		s.setError(errors.New(msg))
	}
	s.update(func(st *Status) {
		st.Interface, st.MAC, st.Port = l.Attrs().Name, l.Attrs().HardwareAddr.String(), ""
		if port != nil {
			st.Port = port.Attrs().Name
		}
	})
	first := target{source: SourceNone, dns: p.dns}
	moved := prevLink != nil && prevLink.Attrs().Index != l.Attrs().Index &&
		bytes.Equal(prevLink.Attrs().HardwareAddr, l.Attrs().HardwareAddr)
	switch {
	case p.mode == ModeStatic:
		first = staticTarget(p, SourceStatic)
	case carried != nil && moved:
		// The NIC went under a bridge or came out of one: the bridge has the
		// NIC's MAC, so the lease is still this host's. It moves with the layout
		// (no gap) and the client below renews it from the new link.
		first = carried.target(p.dns)
	default:
		carried = nil
	}
	if err := s.programTarget(first); err != nil {
		return err
	}
	s.leave(prevLink, prevPort, prevBridge)
	if p.mode == ModeStatic {
		return nil
	}
	s.update(func(st *Status) {
		st.DHCP = &DHCPStatus{State: DHCPInit, Timeout: p.timeout.String(), Fallback: p.fallback}
		if carried != nil {
			st.DHCP.setLease(carried) // still this host's until renewed or expired
		}
	})
	s.startDHCP(ctx)
	if carried != nil {
		s.lease = carried
		s.leaseC = time.After(time.Until(carried.expiry()))
		return nil
	}
	s.fallbackC = time.After(p.timeout)
	if p.fallback == FallbackLinkLocal {
		s.startLinkLocal(ctx)
	}
	return nil
}

// ourBridges names the bridges the service manages while it activates p: p's, the
// one in use and the one a pending change left.
func (s *Service) ourBridges(p plan) []string {
	var out []string
	for _, b := range []string{p.bridge, s.bridge, s.leftBridge} {
		if b != "" {
			out = append(out, b)
		}
	}
	return out
}

// layout puts nic where p wants it and returns the link that is to hold the
// address, with nic as its port when that is a bridge. Nothing else is touched:
// the addresses move in programTarget, and the previous layout is left in leave.
func (s *Service) layout(p plan, nic netlink.Link) (l, port netlink.Link, err error) {
	name := nic.Attrs().Name
	if p.bridge == "" {
		if m := nic.Attrs().MasterIndex; m != 0 {
			master := "another interface"
			if ml, err := s.env.linkByIndex(m); err == nil {
				master = ml.Attrs().Name
			}
			if !slices.Contains(s.ourBridges(p), master) {
				return nil, nil, fmt.Errorf("interface %s is a port of %s, which the network service does not manage: take it out, or set bridge = %q", name, master, master)
			}
			if err := s.env.releasePort(nic); err != nil {
				return nil, nil, err
			}
			if nic, err = s.env.linkByName(name); err != nil {
				return nil, nil, err
			}
		}
		return nic, nil, nil
	}
	if nic.Type() == "bridge" {
		return nil, nil, fmt.Errorf("interface %s is itself a bridge: name the NIC that goes under bridge %s", name, p.bridge)
	}
	if s.leftBridge == p.bridge {
		s.leftBridge = "" // back in use: a rollback restores the previous layout
	}
	br, err := s.env.ensureBridge(p.bridge, nic)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge %s over %s: %w", p.bridge, name, err)
	}
	if nic, err = s.env.linkByName(name); err != nil {
		return nil, nil, err
	}
	return br, nic, nil
}

// leave cleans up the previous layout once the new one holds its first target: a
// previous NIC that is no longer used loses its addresses (and its bridge), a
// bridge no longer used goes. During an unconfirmed apply that bridge is kept
// without addresses, so a rollback finds it (and the VM taps on it) as it was; the
// commit removes it.
func (s *Service) leave(prevLink, prevPort netlink.Link, prevBridge string) {
	used := func(l netlink.Link) bool {
		i := l.Attrs().Index
		return i == s.link.Attrs().Index || (s.port != nil && i == s.port.Attrs().Index)
	}
	if prevPort != nil && !used(prevPort) {
		if err := s.env.releasePort(prevPort); err != nil {
			s.log.Warn("release previous port", "iface", prevPort.Attrs().Name, "err", err)
		}
		prevLink = prevPort
	}
	if prevLink != nil && !used(prevLink) && prevLink.Attrs().Name != prevBridge {
		if err := s.env.flushAddrs(prevLink); err != nil {
			s.log.Warn("clean previous interface", "iface", prevLink.Attrs().Name, "err", err)
		}
	}
	if prevBridge == "" || prevBridge == s.bridge {
		return
	}
	if s.pending != nil {
		if br, err := s.env.linkByName(prevBridge); err == nil {
			if err := s.env.flushAddrs(br); err != nil {
				s.log.Warn("clean previous bridge", "bridge", prevBridge, "err", err)
			}
		}
		s.leftBridge = prevBridge
		return
	}
	s.dropBridge(prevBridge)
}

// dropBridge removes a bridge the service no longer uses.
func (s *Service) dropBridge(name string) {
	note, err := s.env.removeBridge(name)
	switch {
	case err != nil:
		s.setError(fmt.Errorf("remove bridge %s: %w", name, err))
	case note != "":
		s.log.Warn(note)
	default:
		s.log.Info("bridge removed", "bridge", name)
	}
}

// setLease shows l in the status.
func (d *DHCPStatus) setLease(l *lease) {
	d.Server, d.Address = l.server.String(), l.addr.String()
	d.Router = ""
	if l.router != nil {
		d.Router = l.router.String()
	}
	d.Obtained, d.T1, d.T2, d.Expiry = l.obtained, l.obtained.Add(l.t1), l.obtained.Add(l.t2), l.expiry()
}

func (s *Service) drainEvents() {
	for {
		select {
		case <-s.dhcpEvents:
		case <-s.llEvents:
		default:
			return
		}
	}
}

func staticTarget(p plan, source string) target {
	return target{source: source, addr: p.static.addr, gw: p.static.gw, dns: p.dns}
}

func (s *Service) startDHCP(ctx context.Context) {
	c := &dhcpClient{
		env: s.env, ifi: ifaceOf(s.link), log: s.log, requested: s.requested,
		retryInitial: s.cfg.DHCPRetryInitial, retryMax: s.cfg.DHCPRetryMax,
		hostname: s.cfg.Hostname, events: s.dhcpEvents,
	}
	s.dhcp = startWorker(ctx, c.run)
	s.dhcpStarted = time.Now()
	// A DISCOVER sent without carrier is lost (a bridge whose port is not yet
	// forwarding drops it): the carrier's arrival starts the client over, instead
	// of the first retransmission seconds later.
	s.dhcpBlind = true
	if l, err := s.env.linkByIndex(s.link.Attrs().Index); err == nil {
		s.dhcpBlind = !carrierUp(l.Attrs())
	}
}

// carrierUp says whether the link can pass packets (operstate up, or unknown with
// the lower layer up, as for links that do not report an operstate).
func carrierUp(a *netlink.LinkAttrs) bool {
	return a.OperState == netlink.OperUp || (a.OperState == netlink.OperUnknown && a.RawFlags&unix.IFF_LOWER_UP != 0)
}

// programTarget puts t in the kernel and resolv.conf, verifies both, and prints the
// ready marker when the address or its source changed.
func (s *Service) programTarget(t target) error {
	if s.link == nil {
		return errors.New("no interface")
	}
	if err := s.env.program(s.link, s.port, t); err != nil {
		return err
	}
	s.programmed = t
	if err := writeResolv(s.cfg.ResolvConf, t.source, t.dns, t.search); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	s.update(func(st *Status) {
		st.Source, st.Address, st.Gateway, st.DNS = t.source, "", "", nil
		if t.addr != nil {
			st.Address = t.addr.String()
		}
		if t.gw != nil {
			st.Gateway = t.gw.String()
		}
		for _, d := range t.dns {
			st.DNS = append(st.DNS, d.String())
		}
		st.Since = time.Now()
	})
	s.log.Info("network configured", "iface", s.link.Attrs().Name, "target", t.String())
	if t.addr != nil {
		s.addressInPlace(t)
	} else {
		s.marker = "" // the next address is news, even if it is the same again
	}
	return nil
}

func (s *Service) addressInPlace(t target) {
	kv := []string{"iface", s.link.Attrs().Name, "addr", t.addr.String(), "source", t.source}
	if s.port != nil {
		kv = append(kv, "port", s.port.Attrs().Name)
	}
	m := quantix.ReadyMarker("network", kv...)
	if m != s.marker {
		s.marker = m
		fmt.Fprintln(s.cfg.Stdout, m)
	}
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	if s.cfg.Once {
		select {
		case s.onceDone <- nil:
		default:
		}
	}
	if job := s.awaiting; job != nil {
		s.awaiting = nil
		s.startCheck(job, t)
	}
}

func (s *Service) onDHCP(ctx context.Context, ev dhcpEvent) {
	if s.dhcp == nil {
		return // a late event from a stopped client
	}
	switch ev.kind {
	case dhcpState:
		s.update(func(st *Status) {
			if st.DHCP != nil {
				st.DHCP.State = ev.state
			}
		})
	case dhcpBound, dhcpRenewed:
		l := ev.lease
		t := l.target(s.cur.dns)
		var err error
		if s.lease != nil && s.programmed.source == SourceDHCP &&
			s.programmed.addr.String() == t.addr.String() && s.programmed.gw.Equal(t.gw) {
			// The same address again (renewal, or re-discovery after a carrier
			// blip): extend it in place, connections stay up.
			err = s.env.refresh(s.link, s.port, t)
			if err == nil {
				s.programmed = t
			}
		} else {
			// A lease replaces whatever is there, the fallback included.
			s.ll.stop()
			s.ll, s.llReady = nil, nil
			s.fallbackC, s.fallbackOn = nil, false
			err = s.programTarget(t)
		}
		renewals := 0
		if ev.kind == dhcpRenewed {
			renewals = 1
		}
		s.lease = l
		s.requested = l.addr.IP
		s.leaseC = time.After(time.Until(l.expiry()))
		s.update(func(st *Status) {
			if st.DHCP == nil {
				return
			}
			d := st.DHCP
			d.State = DHCPBound
			d.setLease(l)
			if renewals == 0 {
				d.Renewals = 0
			}
			d.Renewals += renewals
		})
		s.log.Info("dhcp lease", "iface", s.link.Attrs().Name, "addr", l.addr, "server", l.server, "router", l.router,
			"lease", l.duration, "t1", l.t1, "t2", l.t2, "renewed", ev.kind == dhcpRenewed)
		if err != nil {
			s.setError(fmt.Errorf("apply DHCP lease %s: %w", l.addr, err))
		}
	case dhcpExpired:
		if s.lease == nil {
			return
		}
		s.log.Warn("dhcp lease lost", "iface", s.link.Attrs().Name, "addr", s.lease.addr, "why", ev.why)
		s.lease, s.leaseC = nil, nil
		s.setError(fmt.Errorf("dhcp lease %s lost: %s", s.programmed.addr, ev.why))
		if err := s.programTarget(target{source: SourceNone, dns: s.cur.dns}); err != nil {
			s.setError(fmt.Errorf("drop expired lease: %w", err))
		}
		s.update(func(st *Status) {
			if st.DHCP != nil {
				st.DHCP.State = DHCPInit
				st.DHCP.Obtained, st.DHCP.T1, st.DHCP.T2, st.DHCP.Expiry = time.Time{}, time.Time{}, time.Time{}, time.Time{}
			}
		})
		if ev.why == "lease expired" && s.dhcp != nil {
			// The controller's own expiry timer fired first: restart the client
			// in INIT so nothing keeps renewing a lease that is gone.
			s.dhcp.stop()
			s.startDHCP(ctx)
		}
		// Back to the first-lease rules: fall back again if no lease comes in time.
		s.fallbackC = time.After(s.cur.timeout)
		if s.cur.fallback == FallbackLinkLocal && s.ll == nil {
			s.startLinkLocal(ctx)
		}
	}
}

func (s *Service) onFallback(ctx context.Context) {
	if s.lease != nil || s.cur.mode != ModeDHCP {
		return
	}
	p := s.cur
	s.log.Warn("no dhcp lease in time", "iface", s.link.Attrs().Name, "timeout", p.timeout, "fallback", p.fallback)
	switch p.fallback {
	case FallbackStatic:
		s.fallbackOn = true
		if err := s.programTarget(staticTarget(p, SourceFallback)); err != nil {
			s.setError(fmt.Errorf("fallback to %s: %w", p.static, err))
		}
	case FallbackLinkLocal:
		s.fallbackOn = true
		if s.llReady != nil {
			s.assignLinkLocal(ctx)
		}
	default:
		err := fmt.Errorf("no DHCP lease on %s within %s and fallback is none", s.link.Attrs().Name, p.timeout)
		s.setError(err)
		if s.cfg.Once {
			select {
			case s.onceDone <- err:
			default:
			}
		}
		if job := s.awaiting; job != nil {
			s.awaiting = nil
			s.onCheck(ctx, checkResult{job: job, err: err})
		}
	}
}

func (s *Service) onLink(ctx context.Context, u netlink.LinkUpdate, carrier map[int]bool) {
	a := u.Attrs()
	up := carrierUp(a)
	was, seen := carrier[a.Index]
	carrier[a.Index] = up
	s.log.Debug("link update", "iface", a.Name, "oper", a.OperState.String(), "carrier", up)
	if s.link == nil {
		if u.Header.Type == unix.RTM_NEWLINK { // maybe the interface we wait for
			if err := s.activate(ctx, s.cur); err == nil {
				s.log.Info("interface appeared", "iface", a.Name)
			}
		}
		return
	}
	if a.Index != s.link.Attrs().Index || !up {
		return
	}
	if s.cur.mode == ModeDHCP && s.dhcp != nil && s.dhcpBlind {
		s.log.Info("carrier up, dhcp starts over", "iface", a.Name, "after", time.Since(s.dhcpStarted).Round(time.Millisecond))
		s.dhcp.stop()
		s.startDHCP(ctx)
		return
	}
	if !seen || was == up {
		return
	}
	if s.cur.mode == ModeDHCP && s.dhcp != nil && time.Since(s.dhcpStarted) > time.Second {
		// Carrier came back: maybe another network. Ask again now (for the same
		// address) instead of waiting for T1; the current lease stays until then.
		s.log.Info("carrier up, restarting dhcp", "iface", a.Name)
		s.dhcp.stop()
		s.startDHCP(ctx)
	}
}

// reconcileDefaults keeps the one-default-route rule when something else adds a
// default route: every default route but the one the service put there goes.
func (s *Service) reconcileDefaults() {
	if s.link == nil {
		return
	}
	rs, err := s.env.defaultRoutes()
	if err != nil {
		s.log.Warn("list default routes", "err", err)
		return
	}
	kept := false
	for _, r := range rs {
		if !kept && s.programmed.gw != nil && r.Gw.Equal(s.programmed.gw) && r.LinkIndex == s.link.Attrs().Index {
			kept = true
			continue
		}
		desc := describeRoute(r, s.env)
		if err := s.env.nl(func(h *netlink.Handle) error { return h.RouteDel(&r) }); err != nil && !errors.Is(err, unix.ESRCH) {
			s.setError(fmt.Errorf("remove foreign default route %s: %w", desc, err))
			continue
		}
		s.log.Warn("removed a default route the service did not make", "route", desc)
	}
}

func (s *Service) update(f func(*Status)) {
	s.mu.Lock()
	f(&s.st)
	b, _ := json.MarshalIndent(s.st, "", "  ")
	s.mu.Unlock()
	if err := quantix.WriteFileAtomic(s.cfg.StateFile, append(b, '\n'), 0o644); err != nil {
		s.log.Warn("write state file", "path", s.cfg.StateFile, "err", err)
	}
}

func (s *Service) setError(err error) {
	s.log.Error("network", "err", err)
	s.update(func(st *Status) {
		st.LastError = err.Error()
		st.LastErrorAt = time.Now()
	})
}

// Status returns the service's state with the kernel's addresses and default routes
// read now.
func (s *Service) Status() Status {
	s.mu.Lock()
	st := s.st
	env := s.env
	// The controller changes the pointed-to parts in place: copy them under the lock.
	st.DNS = append([]string(nil), st.DNS...)
	if st.DHCP != nil {
		d := *st.DHCP
		st.DHCP = &d
	}
	if st.Pending != nil {
		p := *st.Pending
		st.Pending = &p
	}
	if st.LastRollback != nil {
		r := *st.LastRollback
		st.LastRollback = &r
	}
	s.mu.Unlock()
	st.KernelAddresses, st.DefaultRoutes = []string{}, []string{}
	if env == nil {
		s.mu.Lock()
		st.KernelAddresses = append(st.KernelAddresses, s.lastKernel[0]...)
		st.DefaultRoutes = append(st.DefaultRoutes, s.lastKernel[1]...)
		s.mu.Unlock()
		return st
	}
	if rs, err := env.defaultRoutes(); err == nil {
		for _, r := range rs {
			st.DefaultRoutes = append(st.DefaultRoutes, describeRoute(r, env))
		}
	}
	if st.Interface != "" {
		var l netlink.Link
		err := env.nl(func(h *netlink.Handle) (err error) {
			l, err = h.LinkByName(st.Interface)
			return err
		})
		if err == nil {
			if as, err := env.addrs(l); err == nil {
				for _, a := range as {
					st.KernelAddresses = append(st.KernelAddresses, a.IPNet.String())
				}
			}
		}
	}
	return st
}

// describe is a one-line summary of a plan for messages.
func (p plan) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s on %s", p.mode, p.iface)
	if p.mode == ModeStatic {
		fmt.Fprintf(&b, " %s", p.static)
	}
	if p.source != "" {
		fmt.Fprintf(&b, " (%s)", p.source)
	}
	return b.String()
}
