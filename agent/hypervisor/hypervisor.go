// Package hypervisor is the node agent's view of libvirt: it keeps a connection to
// the local libvirtd (reconnecting with backoff when it goes away), lists domains and
// storage pools on demand, and signals when libvirt reports a domain or storage-pool
// lifecycle event so the agent can send the change at once.
//
// It reports only what libvirt says: when libvirt cannot be reached the snapshot is
// "unavailable" with the reason, never an empty or remembered inventory.
package hypervisor

import (
	"context"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/internal/backoff"
)

// DefaultURI is the libvirt URI of a Quantix-OS host.
const DefaultURI = "qemu:///system"

// defaultSocket is libvirtd's read-write socket when the URI names none.
const defaultSocket = "/run/libvirt/libvirt-sock"

// Config configures a Monitor.
type Config struct {
	// URI is a local libvirt URI: qemu:///system, test:///default, or with an
	// explicit socket, test+unix:///default?socket=/path/libvirt-sock.
	URI string
	// DialTimeout bounds connecting to the socket (default 5 s).
	DialTimeout time.Duration
	// ScanTimeout bounds one Snapshot; a libvirtd that does not answer in time is
	// disconnected and reconnected (default 30 s).
	ScanTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (default 1 s .. 30 s).
	MinBackoff, MaxBackoff time.Duration
	// DataDir is QUANTIX-DATA's mount point (default quantix.DataDir): whether it
	// is a persistent filesystem is reported as Hypervisor.Persistent. MountInfo is
	// the mount table (default quantix.MountInfo).
	DataDir, MountInfo string
	// SysModule and KVMDevice are where the accelerator probe looks (default
	// /sys/module and /dev/kvm).
	SysModule, KVMDevice string
}

// Snapshot is the hypervisor's state at one moment.
type Snapshot struct {
	Hypervisor quantix.Hypervisor
	VMs        []quantix.VM
	Pools      []quantix.StoragePool
}

// Available reports whether the snapshot holds libvirt's inventory.
func (s Snapshot) Available() bool { return s.Hypervisor.State == quantix.HypervisorAvailable }

// Hash is quantix.StateHash of the inventory.
func (s Snapshot) Hash() string { return quantix.StateHash(s.VMs, s.Pools) }

// Monitor keeps the libvirt connection. Create it with New and start Run.
type Monitor struct {
	cfg    Config
	log    *slog.Logger
	remote libvirt.ConnectURI
	socket string

	changes   chan struct{}
	tried     chan struct{}
	triedOnce sync.Once

	mu      sync.Mutex
	lv      *libvirt.Libvirt // nil while disconnected
	state   string
	reason  string
	version string
	// Facts learnt at connect: the QEMU version, the accelerator and why.
	qemu, accel, accelReason string
}

// ParseURI checks that uri is a local (unix socket) libvirt URI and returns the URI
// to open inside libvirtd and the socket path.
func ParseURI(uri string) (libvirt.ConnectURI, string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", fmt.Errorf("libvirt uri %q: %w", uri, err)
	}
	if u.Scheme == "" {
		return "", "", fmt.Errorf("libvirt uri %q: no scheme; use e.g. %s", uri, DefaultURI)
	}
	driver, transport, _ := strings.Cut(u.Scheme, "+")
	if (transport != "" && transport != "unix") || u.Host != "" {
		return "", "", fmt.Errorf("libvirt uri %q: only local unix-socket URIs are supported (e.g. %s)", uri, DefaultURI)
	}
	for k := range u.Query() {
		if k != "socket" {
			return "", "", fmt.Errorf("libvirt uri %q: unsupported parameter %q (only socket)", uri, k)
		}
	}
	sock := u.Query().Get("socket")
	if sock == "" {
		sock = defaultSocket
	}
	remote := (&url.URL{Scheme: driver, Path: u.Path}).String()
	return libvirt.ConnectURI(remote), sock, nil
}

// New checks cfg and returns a Monitor that is not connected yet.
func New(cfg Config, log *slog.Logger) (*Monitor, error) {
	if cfg.URI == "" {
		cfg.URI = DefaultURI
	}
	remote, sock, err := ParseURI(cfg.URI)
	if err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.ScanTimeout <= 0 {
		cfg.ScanTimeout = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = 30 * time.Second
	}
	for _, d := range []struct {
		v   *string
		def string
	}{{&cfg.DataDir, quantix.DataDir}, {&cfg.MountInfo, quantix.MountInfo},
		{&cfg.SysModule, "/sys/module"}, {&cfg.KVMDevice, "/dev/kvm"}} {
		if *d.v == "" {
			*d.v = d.def
		}
	}
	return &Monitor{
		cfg:     cfg,
		log:     log,
		remote:  remote,
		socket:  sock,
		changes: make(chan struct{}, 1),
		tried:   make(chan struct{}),
		state:   quantix.HypervisorUnknown,
		reason:  "not connected yet",
	}, nil
}

// Changes delivers a signal (coalesced) whenever the inventory may have changed:
// a domain or storage-pool lifecycle event, a connection made or lost.
func (m *Monitor) Changes() <-chan struct{} { return m.changes }

// Tried is closed once the first connection attempt has finished, successful or not.
func (m *Monitor) Tried() <-chan struct{} { return m.tried }

func (m *Monitor) notify() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// Status returns the connection state without asking libvirt anything.
func (m *Monitor) Status() quantix.Hypervisor {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := quantix.Hypervisor{State: m.state, URI: m.cfg.URI, Version: m.version, QEMUVersion: m.qemu,
		Accelerator: m.accel, AcceleratorReason: m.accelReason}
	if m.state != quantix.HypervisorAvailable {
		h.Reason = m.reason
	}
	if facts, err := quantix.ReadMountFacts(m.cfg.MountInfo, m.cfg.DataDir); err == nil {
		p := facts.Persistent()
		h.Persistent = &p
	}
	return h
}

// Conn is the current libvirt connection, nil while disconnected. Other parts of
// the agent (the VM reconciler, agent/vms) act through it rather than dialling
// their own.
func (m *Monitor) Conn() *libvirt.Libvirt {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lv
}

// Run connects and keeps reconnecting until ctx ends; it returns nil then.
func (m *Monitor) Run(ctx context.Context) error {
	b := backoff.Backoff{Min: m.cfg.MinBackoff, Max: m.cfg.MaxBackoff}
	lastErr := ""
	for {
		lv, err := m.connect(ctx)
		m.triedOnce.Do(func() { close(m.tried) })
		if err != nil {
			m.setDown(err.Error())
			if err.Error() != lastErr {
				m.log.Warn("libvirt unavailable; retrying", "uri", m.cfg.URI, "err", err)
				lastErr = err.Error()
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(b.Next()):
			}
			continue
		}
		b.Reset()
		lastErr = ""
		m.log.Info("libvirt connected", "uri", m.cfg.URI, "version", m.Status().Version)
		m.notify()
		select {
		case <-ctx.Done():
			m.disconnect(lv)
			return nil
		case <-lv.Disconnected():
			m.setDown("connection to libvirt lost")
			m.log.Warn("libvirt connection lost; reconnecting", "uri", m.cfg.URI)
			m.notify()
		}
	}
}

func (m *Monitor) setDown(reason string) {
	m.mu.Lock()
	m.lv = nil
	m.state = quantix.HypervisorUnavailable
	m.reason = reason
	m.mu.Unlock()
}

func (m *Monitor) disconnect(lv *libvirt.Libvirt) {
	m.mu.Lock()
	if m.lv == lv {
		m.lv = nil
		m.state = quantix.HypervisorUnavailable
		m.reason = "agent stopping"
	}
	m.mu.Unlock()
	lv.Disconnect()
}

// connect dials libvirtd, opens the URI and subscribes to lifecycle events.
func (m *Monitor) connect(ctx context.Context) (*libvirt.Libvirt, error) {
	lv := libvirt.NewWithDialer(&dialer{path: m.socket, timeout: m.cfg.DialTimeout, onPoolEvent: m.notify})
	if err := lv.ConnectToURI(m.remote); err != nil {
		return nil, fmt.Errorf("connect to %s via %s: %w", m.remote, m.socket, err)
	}
	ver, err := lv.ConnectGetLibVersion()
	if err != nil {
		lv.Disconnect()
		return nil, fmt.Errorf("libvirt version: %w", err)
	}
	// Domain lifecycle events go through go-libvirt's event streams. The stream
	// ends by itself when the connection drops.
	evs, err := lv.LifecycleEvents(ctx)
	if err != nil {
		lv.Disconnect()
		return nil, fmt.Errorf("subscribe to domain lifecycle events: %w", err)
	}
	go func() {
		for ev := range evs {
			m.log.Debug("libvirt domain event", "domain", ev.Dom.Name, "event", libvirt.DomainEventType(ev.Event).String())
			m.notify()
		}
	}()
	// go-libvirt does not route storage-pool events to a stream, so the dialer's
	// connection watches for their frames itself (see watchConn).
	if _, err := lv.ConnectStoragePoolEventRegisterAny(int32(libvirt.StoragePoolEventIDLifecycle), nil); err != nil {
		lv.Disconnect()
		return nil, fmt.Errorf("subscribe to storage pool lifecycle events: %w", err)
	}
	var qemu, accel, accelReason string
	if hv, err := lv.ConnectGetVersion(); err == nil && hv > 0 {
		qemu = quantix.LibvirtVersion(hv)
	}
	if strings.HasPrefix(string(m.remote), "qemu") {
		// Probed at every connect: a libvirtd restart may follow a module load.
		accel, accelReason = Accelerator(m.cfg.SysModule, m.cfg.KVMDevice)
	}
	m.mu.Lock()
	m.lv = lv
	m.state = quantix.HypervisorAvailable
	m.reason = ""
	m.version = quantix.LibvirtVersion(ver)
	m.qemu, m.accel, m.accelReason = qemu, accel, accelReason
	m.mu.Unlock()
	return lv, nil
}

// Snapshot lists the domains and storage pools now. When libvirt is not connected,
// or the listing fails, the snapshot is unavailable with the reason and holds no
// inventory.
func (m *Monitor) Snapshot(ctx context.Context) Snapshot {
	m.mu.Lock()
	lv := m.lv
	m.mu.Unlock()
	if lv == nil {
		return Snapshot{Hypervisor: m.Status()}
	}
	type result struct {
		vms   []quantix.VM
		pools []quantix.StoragePool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		vms, pools, err := scan(lv)
		done <- result{vms, pools, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(m.cfg.ScanTimeout):
		r.err = fmt.Errorf("libvirt did not answer within %v", m.cfg.ScanTimeout)
		// Dropping the connection fails the stuck calls; Run reconnects.
		go lv.Disconnect()
	case <-ctx.Done():
		r.err = ctx.Err()
	}
	if r.err != nil {
		h := m.Status()
		h.State = quantix.HypervisorUnavailable
		h.Reason = fmt.Sprintf("list libvirt inventory: %v", r.err)
		return Snapshot{Hypervisor: h}
	}
	return Snapshot{Hypervisor: m.Status(), VMs: r.vms, Pools: r.pools}
}

func isErr(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == uint32(code)
}

func scan(lv *libvirt.Libvirt) ([]quantix.VM, []quantix.StoragePool, error) {
	doms, _, err := lv.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("list domains: %w", err)
	}
	vms := make([]quantix.VM, 0, len(doms))
	for _, d := range doms {
		state, maxMem, _, vcpus, _, err := lv.DomainGetInfo(d)
		if isErr(err, libvirt.ErrNoDomain) {
			continue // undefined between the list and now; the next event says so
		}
		if err != nil {
			return nil, nil, fmt.Errorf("domain %s info: %w", d.Name, err)
		}
		vms = append(vms, quantix.VM{
			UUID:        uuid.UUID(d.UUID).String(),
			Name:        d.Name,
			PowerState:  powerState(state),
			VCPUs:       int(vcpus),
			MemoryBytes: int64(maxMem) * 1024, // libvirt reports KiB
		})
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].UUID < vms[j].UUID })

	ps, _, err := lv.ConnectListAllStoragePools(1, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("list storage pools: %w", err)
	}
	pools := make([]quantix.StoragePool, 0, len(ps))
	for _, p := range ps {
		state, capacity, alloc, avail, err := lv.StoragePoolGetInfo(p)
		if isErr(err, libvirt.ErrNoStoragePool) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("storage pool %s info: %w", p.Name, err)
		}
		desc, err := lv.StoragePoolGetXMLDesc(p, 0)
		if isErr(err, libvirt.ErrNoStoragePool) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("storage pool %s xml: %w", p.Name, err)
		}
		var px poolXML
		if err := xml.Unmarshal([]byte(desc), &px); err != nil {
			return nil, nil, fmt.Errorf("storage pool %s xml: %w", p.Name, err)
		}
		pools = append(pools, quantix.StoragePool{
			UUID:            uuid.UUID(p.UUID).String(),
			Name:            p.Name,
			Type:            px.Type,
			Path:            px.Target.Path,
			State:           poolState(state),
			CapacityBytes:   int64(capacity),
			AvailableBytes:  int64(avail),
			AllocationBytes: int64(alloc),
		})
	}
	sort.Slice(pools, func(i, j int) bool { return pools[i].Name < pools[j].Name })
	return vms, pools, nil
}

type poolXML struct {
	Type   string `xml:"type,attr"`
	Target struct {
		Path string `xml:"path"`
	} `xml:"target"`
}

func powerState(s uint8) string {
	switch libvirt.DomainState(s) {
	case libvirt.DomainRunning:
		return quantix.PowerRunning
	case libvirt.DomainBlocked:
		return quantix.PowerBlocked
	case libvirt.DomainPaused:
		return quantix.PowerPaused
	case libvirt.DomainShutdown:
		return quantix.PowerShutdown
	case libvirt.DomainShutoff:
		return quantix.PowerShutoff
	case libvirt.DomainCrashed:
		return quantix.PowerCrashed
	case libvirt.DomainPmsuspended:
		return quantix.PowerPMSuspended
	}
	return quantix.PowerUnknown
}

func poolState(s uint8) string {
	switch libvirt.StoragePoolState(s) {
	case libvirt.StoragePoolInactive:
		return "inactive"
	case libvirt.StoragePoolBuilding:
		return "building"
	case libvirt.StoragePoolRunning:
		return "running"
	case libvirt.StoragePoolDegraded:
		return "degraded"
	case libvirt.StoragePoolInaccessible:
		return "inaccessible"
	}
	return "unknown"
}

// Diff returns the events that turn old into cur: an upsert for every VM or pool
// that is new or changed, a removal for every one that is gone.
func Diff(old, cur Snapshot, at time.Time) []quantix.StateEvent {
	var evs []quantix.StateEvent
	oldVMs := make(map[string]quantix.VM, len(old.VMs))
	for _, v := range old.VMs {
		oldVMs[v.UUID] = v
	}
	for _, v := range cur.VMs {
		if o, ok := oldVMs[v.UUID]; !ok || o != v {
			v := v
			evs = append(evs, quantix.StateEvent{Kind: quantix.EventKindVM, Action: quantix.EventActionUpsert, At: at, VM: &v})
		}
		delete(oldVMs, v.UUID)
	}
	gone := make([]string, 0, len(oldVMs))
	for id := range oldVMs {
		gone = append(gone, id)
	}
	sort.Strings(gone)
	for _, id := range gone {
		v := oldVMs[id]
		evs = append(evs, quantix.StateEvent{Kind: quantix.EventKindVM, Action: quantix.EventActionRemoved, At: at, VM: &v})
	}

	oldPools := make(map[string]quantix.StoragePool, len(old.Pools))
	for _, p := range old.Pools {
		oldPools[p.Name] = p
	}
	for _, p := range cur.Pools {
		if o, ok := oldPools[p.Name]; !ok || o != p {
			p := p
			evs = append(evs, quantix.StateEvent{Kind: quantix.EventKindStoragePool, Action: quantix.EventActionUpsert, At: at, StoragePool: &p})
		}
		delete(oldPools, p.Name)
	}
	goneP := make([]string, 0, len(oldPools))
	for n := range oldPools {
		goneP = append(goneP, n)
	}
	sort.Strings(goneP)
	for _, n := range goneP {
		p := oldPools[n]
		evs = append(evs, quantix.StateEvent{Kind: quantix.EventKindStoragePool, Action: quantix.EventActionRemoved, At: at, StoragePool: &p})
	}
	return evs
}

// dialer connects to libvirtd's unix socket and wraps the connection in a watchConn.
type dialer struct {
	path        string
	timeout     time.Duration
	onPoolEvent func()
}

func (d *dialer) Dial() (net.Conn, error) {
	c, err := net.DialTimeout("unix", d.path, d.timeout)
	if err != nil {
		return nil, err
	}
	return &watchConn{Conn: c, onPoolEvent: d.onPoolEvent}, nil
}

// libvirt RPC framing (libvirt src/rpc/virnetprotocol.x, remote_protocol.x): a
// 4-byte big-endian length (including itself), then program, version, procedure,
// type, serial and status, 4 bytes each.
const (
	rpcHeaderLen            = 28
	remoteProgram           = 0x20008086
	procStoragePoolLifecyle = 370 // REMOTE_PROC_STORAGE_POOL_EVENT_LIFECYCLE
)

// watchConn passes every byte through unchanged and calls onPoolEvent when a
// storage-pool lifecycle event frame arrives. go-libvirt drops such frames (it has
// no stream for them), so this is how the agent learns of pool changes at once.
type watchConn struct {
	net.Conn
	onPoolEvent func()
	hdr         [rpcHeaderLen]byte
	hdrN        int
	skip        int
}

func (c *watchConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.scan(p[:n])
	return n, err
}

func (c *watchConn) scan(b []byte) {
	for len(b) > 0 {
		if c.skip > 0 {
			k := min(c.skip, len(b))
			c.skip -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hdrN:], b)
		c.hdrN += k
		b = b[k:]
		if c.hdrN < rpcHeaderLen {
			return
		}
		c.hdrN = 0
		length := int(binary.BigEndian.Uint32(c.hdr[0:4]))
		prog := binary.BigEndian.Uint32(c.hdr[4:8])
		proc := binary.BigEndian.Uint32(c.hdr[12:16])
		if prog == remoteProgram && proc == procStoragePoolLifecyle && c.onPoolEvent != nil {
			c.onPoolEvent()
		}
		c.skip = max(length-rpcHeaderLen, 0)
	}
}
