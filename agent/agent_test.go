package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
	"github.com/quantix/quantix/tests/netlab"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

// markers parses the markers an agent printed.
func markers(out *syncbuf.Buffer) []quantix.Marker {
	var ms []quantix.Marker
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		if m, ok := quantix.ParseMarker(sc.Text()); ok {
			ms = append(ms, m)
		}
	}
	return ms
}

type runningAgent struct {
	svc    *agent.Service
	out    *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan error
}

// testConfig is a Config for one agent against v, finding its management address
// in ns, with quick retries.
func testConfig(t testing.TB, v *vdctest.VDC, ns *netlab.NS, hostname string) agent.Config {
	return agent.Config{
		FileConfig: agent.FileConfig{
			ControlPlane: v.AgentURL,
			JoinToken:    v.JoinToken,
			// No libvirtd unless the test starts one: the agent reports it unavailable.
			LibvirtURI: "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "no-libvirt-sock"),
		},
		Hostname:           hostname,
		StateDir:           t.TempDir(),
		ProductUUIDPath:    filepath.Join(t.TempDir(), "no-product-uuid"),
		Netlink:            ns.Handle,
		RegisterBackoffMin: 50 * time.Millisecond,
		RegisterBackoffMax: 500 * time.Millisecond,
		RefusedRetry:       300 * time.Millisecond,
		RequestTimeout:     5 * time.Second,
		LibvirtBackoffMax:  200 * time.Millisecond,
	}
}

func logger(t testing.TB, name string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("agent", name)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startAgent(t testing.TB, cfg agent.Config) *runningAgent {
	t.Helper()
	out := &syncbuf.Buffer{}
	cfg.Stdout = out
	svc, err := agent.New(cfg, logger(t, cfg.Hostname))
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &runningAgent{svc: svc, out: out, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- svc.Run(ctx) }()
	t.Cleanup(func() { a.stop(t) })
	return a
}

func (a *runningAgent) stop(t testing.TB) {
	t.Helper()
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("agent Run() = %v, want nil on stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("agent did not stop within 10s")
	}
}

// waitMarker waits for the agent's n-th ready marker (1-based).
func (a *runningAgent) waitMarker(t testing.TB, n int) quantix.Marker {
	t.Helper()
	var ms []quantix.Marker
	eventually(t, 20*time.Second, fmt.Sprintf("ready marker #%d", n), func() (bool, string) {
		ms = markers(a.out)
		return len(ms) >= n, fmt.Sprintf("markers so far: %v; status %+v", ms, a.svc.Status())
	})
	m := ms[n-1]
	if m.Kind != quantix.MarkerReady || m.Get("service") != "agent" || m.Get("node_id") == "" {
		t.Fatalf("marker %q is not an agent ready marker with node_id", m.String())
	}
	return m
}

// eventually polls cond every 50 ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, timeout, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mgmtNS is a namespace with one uplink holding addr (a /24) and the default route.
func mgmtNS(t testing.TB, cidr, gw string) *netlab.NS {
	ns := netlab.New(t)
	l := ns.Veth("uplink0")
	ns.Addr(l, cidr)
	ns.DefaultRoute(l, gw, 0, "")
	return ns
}

func nodesByHostname(t testing.TB, v *vdctest.VDC, hostname string) []quantix.Node {
	var out []quantix.Node
	for _, n := range v.Nodes(t) {
		if n.Hostname == hostname {
			out = append(out, n)
		}
	}
	return out
}

func oneNode(t testing.TB, v *vdctest.VDC, hostname string) quantix.Node {
	t.Helper()
	ns := nodesByHostname(t, v, hostname)
	if len(ns) != 1 {
		t.Fatalf("vDC has %d nodes named %s, want exactly 1: %+v", len(ns), hostname, ns)
	}
	return ns[0]
}

func startVDC(t testing.TB) *vdctest.VDC {
	return startVDCWith(t, vdctest.Options{})
}

func startVDCWith(t testing.TB, opts vdctest.Options) *vdctest.VDC {
	opts.HeartbeatInterval, opts.JoinTokens = time.Second, []string{"agent-test-token"}
	if !testing.Verbose() {
		opts.Log = io.Discard
	}
	return vdctest.Start(t, opts)
}

// TestRegistrationLifecycle: the first start registers; a restart re-registers with
// the same node id and identity; a node deleted in the vDC registers again.
func TestRegistrationLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDC(t)
	ns := mgmtNS(t, "10.50.0.5/24", "10.50.0.1")
	cfg := testConfig(t, v, ns, "node-a")

	a := startAgent(t, cfg)
	m := a.waitMarker(t, 1)
	if got := m.Get("registration"); got != quantix.RegistrationRegistered {
		t.Fatalf("first start: registration=%s, want %s", got, quantix.RegistrationRegistered)
	}
	id := m.Get("node_id")
	identityPath := filepath.Join(cfg.StateDir, "identity.toml")
	identity, err := os.ReadFile(identityPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(identityPath); fi.Mode().Perm() != 0o600 {
		t.Errorf("identity.toml mode %v, want 0600", fi.Mode().Perm())
	}
	n := oneNode(t, v, "node-a")
	if n.ID != id || n.ManagementIP != "10.50.0.5" || n.MachineID != a.svc.Identity().MachineID {
		t.Errorf("vDC node = %+v, want id %s, management_ip 10.50.0.5, machine_id %s", n, id, a.svc.Identity().MachineID)
	}
	if n.Hypervisor.State != quantix.HypervisorUnavailable || n.Hypervisor.Reason == "" {
		t.Errorf("vDC hypervisor = %+v, want unavailable with a reason (no libvirtd here)", n.Hypervisor)
	}
	// Heartbeats arrive at the vDC's 1 s interval.
	eventually(t, 10*time.Second, "heartbeats", func() (bool, string) {
		st := a.svc.Status()
		return st.Counts.Heartbeats >= 2 && st.HeartbeatIntervalSeconds == 1, fmt.Sprintf("status %+v", st)
	})

	// Restart: same identity, same node, exactly one row.
	a.stop(t)
	a = startAgent(t, cfg)
	m = a.waitMarker(t, 1)
	if m.Get("registration") != quantix.RegistrationReregistered || m.Get("node_id") != id {
		t.Fatalf("restart: marker %s, want registration=reregistered node_id=%s", m.String(), id)
	}
	if again, _ := os.ReadFile(identityPath); !bytes.Equal(again, identity) {
		t.Errorf("identity.toml changed across restart:\n%s\nvs\n%s", identity, again)
	}
	oneNode(t, v, "node-a")

	// The operator deletes the node: the next heartbeat gets 404 and the agent
	// registers again (a new node, with the join token), still one row.
	v.DeleteNode(t, id)
	m2 := a.waitMarker(t, 2)
	if m2.Get("registration") != quantix.RegistrationRegistered || m2.Get("node_id") == id {
		t.Fatalf("after delete: marker %s, want a new registration", m2.String())
	}
	n = oneNode(t, v, "node-a")
	if n.ID != m2.Get("node_id") {
		t.Errorf("vDC node id %s, want %s", n.ID, m2.Get("node_id"))
	}
	if again, _ := os.ReadFile(identityPath); !bytes.Equal(again, identity) {
		t.Errorf("identity.toml changed after re-registration")
	}
}

// TestTakeoverRefused: a second host claiming a registered hostname with another
// identity is refused with 409; it says so on /status and keeps retrying slowly
// without exiting, and the first node is untouched.
func TestTakeoverRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDC(t)
	nsA := mgmtNS(t, "10.51.0.5/24", "10.51.0.1")
	nsB := mgmtNS(t, "10.51.0.6/24", "10.51.0.1")
	a := startAgent(t, testConfig(t, v, nsA, "node-t"))
	id := a.waitMarker(t, 1).Get("node_id")
	before := oneNode(t, v, "node-t")

	cfgB := testConfig(t, v, nsB, "node-t")
	cfgB.HTTPListen = freeAddr(t)
	b := startAgent(t, cfgB)
	var st agent.Status
	eventually(t, 15*time.Second, "second agent refused twice", func() (bool, string) {
		var err error
		if st, err = fetchStatus(cfgB.HTTPListen); err != nil {
			return false, err.Error()
		}
		return st.State == agent.StateRefused && st.Counts.RegistrationFailures >= 2, fmt.Sprintf("status %+v", st)
	})
	for _, want := range []string{"hostname node-t is registered to another machine", id, "delete that node in the vDC"} {
		if !strings.Contains(st.Error, want) {
			t.Errorf("/status error %q does not say %q", st.Error, want)
		}
	}
	if st.NodeID != "" || st.Registration.OK {
		t.Errorf("/status = %+v, want no node id and a failed registration", st)
	}
	if len(markers(b.out)) != 0 {
		t.Errorf("refused agent printed markers: %v", markers(b.out))
	}
	select {
	case err := <-b.done:
		t.Fatalf("refused agent exited: %v", err)
	default:
	}
	after := oneNode(t, v, "node-t")
	if after.ID != before.ID || after.MachineID != before.MachineID || after.ManagementIP != "10.51.0.5" {
		t.Errorf("first node changed: before %+v, after %+v", before, after)
	}
	if a.svc.Status().State != agent.StateRegistered {
		t.Errorf("first agent state %q, want registered", a.svc.Status().State)
	}

	// /metrics says the same.
	metrics := httpGet(t, "http://"+cfgB.HTTPListen+quantix.PathMetrics)
	if !strings.Contains(metrics, "quantix_agent_refused 1\n") || !strings.Contains(metrics, "quantix_agent_registered 0\n") {
		t.Errorf("/metrics does not show the refusal:\n%s", metrics)
	}
	if got := httpGet(t, "http://"+cfgB.HTTPListen+quantix.PathHealthz); got != "ok\n" {
		t.Errorf("/healthz = %q, want ok", got)
	}
}

// TestRegisterOnce is qx-node --register: register, send the state, return.
func TestRegisterOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDC(t)
	ns := mgmtNS(t, "10.52.0.5/24", "10.52.0.1")
	cfg := testConfig(t, v, ns, "node-once")
	cfg.Once = true
	out := &syncbuf.Buffer{}
	cfg.Stdout = out
	svc, err := agent.New(cfg, logger(t, "once"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := svc.Run(ctx); err != nil {
		t.Fatalf("Run() in --register mode = %v", err)
	}
	ms := markers(out)
	if len(ms) != 1 || ms[0].Get("registration") != quantix.RegistrationRegistered {
		t.Fatalf("markers %v, want one registered marker", ms)
	}
	oneNode(t, v, "node-once")

	// A wrong join token for a new hostname is refused and --register says so.
	cfg = testConfig(t, v, ns, "node-once-2")
	cfg.Once = true
	cfg.JoinToken = "not-a-token"
	if _, err := agent.New(cfg, logger(t, "once-2")); !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), "join_token") {
		t.Fatalf("New() with a token without the CA pin = %v, want a config error naming join_token", err)
	}
	cfg.JoinToken = quantix.FormatJoinToken(v.Pin, "not-the-vdcs-secret-0123456789")
	svc, err = agent.New(cfg, logger(t, "once-2"))
	if err != nil {
		t.Fatal(err)
	}
	err = svc.Run(ctx)
	if !errors.Is(err, agent.ErrRefused) || !strings.Contains(err.Error(), "join token") {
		t.Fatalf("Run() with a bad token = %v, want ErrRefused about the join token", err)
	}
}

// TestManagementAddressChange: the address changes in the namespace and the vDC
// shows the new one after the next heartbeat.
func TestManagementAddressChange(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDC(t)
	ns := mgmtNS(t, "10.53.0.5/24", "10.53.0.1")
	a := startAgent(t, testConfig(t, v, ns, "node-ip"))
	a.waitMarker(t, 1)
	if n := oneNode(t, v, "node-ip"); n.ManagementIP != "10.53.0.5" {
		t.Fatalf("management_ip %s, want 10.53.0.5", n.ManagementIP)
	}
	ns.Readdress(ns.Link("uplink0"), "10.53.0.5/24", "10.53.0.1", "10.53.7.9/24", "10.53.7.1")
	eventually(t, 10*time.Second, "new address in the vDC", func() (bool, string) {
		n := oneNode(t, v, "node-ip")
		return n.ManagementIP == "10.53.7.9", fmt.Sprintf("vDC node %+v", n)
	})
	st := a.svc.Status()
	if st.Management.IP != "10.53.7.9" || st.Management.Interface != "uplink0" || st.Management.Source != agent.SourceDefaultRoute || st.Counts.ManagementChanges != 1 {
		t.Errorf("status management %+v, changes %d; want 10.53.7.9 on uplink0 by default route, 1 change", st.Management, st.Counts.ManagementChanges)
	}
	if len(markers(a.out)) != 1 {
		t.Errorf("an address change must not re-register: markers %v", markers(a.out))
	}
}

// TestAddressChangeDuringRequest: a heartbeat is in flight, its answer held back,
// when the management address changes (a DHCP lease replacing the fallback
// address): its connection belongs to the old address, so the agent ends it within
// about a second instead of waiting out RequestTimeout, and the next heartbeat
// brings the new address to the vDC.
func TestAddressChangeDuringRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	// The front is a plain-HTTP reverse proxy: this test is about addresses, so the
	// lab flags allow plain HTTP on both sides.
	v := startVDCWith(t, vdctest.Options{PlainAgents: true})
	target, err := url.Parse(v.URL)
	if err != nil {
		t.Fatal(err)
	}
	var hold atomic.Bool
	held := make(chan time.Time, 16) // when a held request ended on the agent's side
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hold.Load() && strings.HasSuffix(r.URL.Path, "/heartbeat") {
			// The body read, the server notices the client going away.
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done() // never answered: the agent must give up
			held <- time.Now()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	ns := mgmtNS(t, "10.54.0.5/24", "10.54.0.1")
	cfg := testConfig(t, v, ns, "node-move")
	cfg.ControlPlane = front.URL
	cfg.InsecurePlainHTTP = true
	cfg.RequestTimeout = time.Minute
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)
	hold.Store(true)
	before := a.svc.Status().Counts.Heartbeats
	// Let a heartbeat start and hang.
	time.Sleep(1500 * time.Millisecond)
	if got := a.svc.Status().Counts.Heartbeats; got != before {
		t.Fatalf("heartbeats went on while held: %d -> %d", before, got)
	}
	moved := time.Now()
	ns.Readdress(ns.Link("uplink0"), "10.54.0.5/24", "10.54.0.1", "10.54.9.9/24", "10.54.9.1")
	select {
	case at := <-held:
		t.Logf("the held heartbeat ended %s after the address change", at.Sub(moved).Round(10*time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatalf("the heartbeat in flight was still waiting 5s after the address change (RequestTimeout %s)", cfg.RequestTimeout)
	}
	hold.Store(false)
	eventually(t, 10*time.Second, "new address in the vDC", func() (bool, string) {
		n := oneNode(t, v, "node-move")
		return n.ManagementIP == "10.54.9.9", fmt.Sprintf("vDC node %+v", n)
	})
}

// TestInventory: libvirt's domains and pools reach the vDC; lifecycle changes
// follow as events; libvirtd stopping is reported and recovered from.
func TestInventory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, a vDC and libvirtd")
	}
	v := startVDC(t)
	lv := libvirtdtest.Start(t)
	ns := mgmtNS(t, "10.54.0.5/24", "10.54.0.1")
	cfg := testConfig(t, v, ns, "node-lv")
	cfg.LibvirtURI = lv.URI()
	a := startAgent(t, cfg)
	id := a.waitMarker(t, 1).Get("node_id")

	vm := func(name string) *quantix.InventoryVM {
		for _, x := range v.VMs(t) {
			if x.NodeID == id && x.Name == name {
				return &x
			}
		}
		return nil
	}
	pool := func(name string) *quantix.InventoryPool {
		for _, x := range v.Pools(t) {
			if x.NodeID == id && x.Name == name {
				return &x
			}
		}
		return nil
	}
	waitVM := func(what, name string, cond func(*quantix.InventoryVM) bool) {
		t.Helper()
		eventually(t, 15*time.Second, what, func() (bool, string) {
			x := vm(name)
			return cond(x), fmt.Sprintf("vDC has %+v", x)
		})
	}
	// test:///default has the running domain "test" and the pool "default-pool".
	waitVM("domain test in the vDC", "test", func(x *quantix.InventoryVM) bool {
		return x != nil && x.PowerState == quantix.PowerRunning && x.VCPUs > 0 && x.MemoryBytes > 0 && !x.Lost
	})
	eventually(t, 10*time.Second, "default-pool in the vDC", func() (bool, string) {
		p := pool("default-pool")
		return p != nil && p.Type == "dir" && p.Path == "/default-pool" && p.State == "running" && p.CapacityBytes > 0, fmt.Sprintf("%+v", p)
	})
	if n := oneNode(t, v, "node-lv"); n.Hypervisor.State != quantix.HypervisorAvailable || n.Hypervisor.Version == "" {
		t.Errorf("vDC hypervisor %+v, want available with a version", n.Hypervisor)
	}

	ctl := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(lv.Socket)))
	if err := ctl.ConnectToURI("test:///default"); err != nil {
		t.Fatal(err)
	}
	defer ctl.Disconnect()
	dom, err := ctl.DomainDefineXML(`<domain type='test'><name>web1</name><uuid>0b7e0f3c-2a47-4b8e-9d0c-31e3b2a1c001</uuid>
		<memory unit='MiB'>768</memory><vcpu>2</vcpu><os><type>hvm</type></os></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	waitVM("defined domain", "web1", func(x *quantix.InventoryVM) bool {
		return x != nil && x.PowerState == quantix.PowerShutoff && x.VCPUs == 2 && x.MemoryBytes == 768<<20 && x.UUID == "0b7e0f3c-2a47-4b8e-9d0c-31e3b2a1c001"
	})
	if err := ctl.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	waitVM("started domain", "web1", func(x *quantix.InventoryVM) bool { return x != nil && x.PowerState == quantix.PowerRunning })
	if err := ctl.DomainDestroy(dom); err != nil {
		t.Fatal(err)
	}
	waitVM("stopped domain", "web1", func(x *quantix.InventoryVM) bool { return x != nil && x.PowerState == quantix.PowerShutoff })
	if err := ctl.DomainUndefine(dom); err != nil {
		t.Fatal(err)
	}
	waitVM("undefined domain", "web1", func(x *quantix.InventoryVM) bool { return x == nil || x.Lost })
	if st := a.svc.Status(); st.Counts.EventsSent < 4 {
		t.Errorf("events sent %d, want at least 4 (define, start, stop, undefine): changes must go as events", st.Counts.EventsSent)
	}

	// libvirtd stops: the vDC hears "unavailable" with the reason; it comes back.
	ctl.Disconnect()
	if err := lv.Stop(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "hypervisor unavailable in the vDC", func() (bool, string) {
		n := oneNode(t, v, "node-lv")
		return n.Hypervisor.State == quantix.HypervisorUnavailable && n.Hypervisor.Reason != "", fmt.Sprintf("%+v", n.Hypervisor)
	})
	if x := vm("test"); x == nil {
		t.Errorf("domain test vanished from the vDC while libvirt was down; the agent must not report an empty inventory")
	}
	if err := lv.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "hypervisor available again", func() (bool, string) {
		n := oneNode(t, v, "node-lv")
		return n.Hypervisor.State == quantix.HypervisorAvailable, fmt.Sprintf("%+v", n.Hypervisor)
	})
	waitVM("domain test after recovery", "test", func(x *quantix.InventoryVM) bool { return x != nil && !x.Lost && x.PowerState == quantix.PowerRunning })
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

func fetchStatus(addr string) (agent.Status, error) {
	var st agent.Status
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("/status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// TestVDCOutageAndRestart: while the vDC is down the agent reports failed
// heartbeats and keeps its registration; when the vDC comes back on the same
// database (the same cluster epoch, docs/design.md §17) heartbeats resume without a
// new registration and without a full state: the database kept it.
func TestVDCOutageAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, a vDC and libvirtd")
	}
	v := startVDC(t)
	lv := libvirtdtest.Start(t)
	ns := mgmtNS(t, "10.55.0.5/24", "10.55.0.1")
	cfg := testConfig(t, v, ns, "node-out")
	cfg.LibvirtURI = lv.URI()
	a := startAgent(t, cfg)
	id := a.waitMarker(t, 1).Get("node_id")
	eventually(t, 10*time.Second, "first full state", func() (bool, string) {
		st := a.svc.Status()
		return st.Counts.StatePuts == 1 && st.Counts.Heartbeats >= 1, fmt.Sprintf("%+v", st.Counts)
	})

	v.Stop(t)
	eventually(t, 10*time.Second, "failed heartbeats while the vDC is down", func() (bool, string) {
		st := a.svc.Status()
		return st.Counts.HeartbeatFailures >= 2 && !st.Heartbeat.OK && st.Heartbeat.Error != "", fmt.Sprintf("%+v", st.Heartbeat)
	})
	if st := a.svc.Status(); st.State != agent.StateRegistered || st.NodeID != id || !strings.Contains(st.Error, "heartbeat failed") {
		t.Errorf("during the outage: state %q node %q error %q, want still registered as %s and a heartbeat error", st.State, st.NodeID, st.Error, id)
	}
	before := a.svc.Status().Counts.Heartbeats
	v.Restart(t)
	eventually(t, 15*time.Second, "heartbeats after the vDC restart", func() (bool, string) {
		st := a.svc.Status()
		return st.Counts.Heartbeats >= before+2 && st.Heartbeat.OK, fmt.Sprintf("counts %+v heartbeat %+v", st.Counts, st.Heartbeat)
	})
	if st := a.svc.Status(); st.Counts.StatePuts != 1 {
		t.Errorf("the vDC restart cost a full state: %d state PUTs, want 1 (the first)", st.Counts.StatePuts)
	}
	if ms := markers(a.out); len(ms) != 1 {
		t.Errorf("the vDC restart caused re-registration: markers %v", ms)
	}
	if st := a.svc.Status(); st.Error != "" {
		t.Errorf("error after recovery: %q, want none", st.Error)
	}
	n := oneNode(t, v, "node-out")
	if n.ID != id || n.Hypervisor.State != quantix.HypervisorAvailable {
		t.Errorf("after restart the vDC has %+v", n)
	}
}

// TestPeriodicFullSync: the full state goes up periodically as a safety net even
// when nothing changes.
func TestPeriodicFullSync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, a vDC and libvirtd")
	}
	v := startVDC(t)
	lv := libvirtdtest.Start(t)
	ns := mgmtNS(t, "10.57.0.5/24", "10.57.0.1")
	cfg := testConfig(t, v, ns, "node-sync")
	cfg.LibvirtURI = lv.URI()
	cfg.FullSyncEvery = 300 * time.Millisecond
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)
	eventually(t, 10*time.Second, "periodic full state uploads", func() (bool, string) {
		st := a.svc.Status()
		return st.Counts.StatePuts >= 4 && st.StateSync.OK, fmt.Sprintf("%+v", st.Counts)
	})
	if st := a.svc.Status(); st.Counts.EventsSent != 0 {
		t.Errorf("events sent %d with no change on the host, want 0", st.Counts.EventsSent)
	}
}

// TestHypervisorChangeIsPrompt: with a long heartbeat interval, libvirtd stopping
// and returning still reaches the vDC within seconds (an extra heartbeat).
func TestHypervisorChangeIsPrompt(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, a vDC and libvirtd")
	}
	opts := vdctest.Options{HeartbeatInterval: time.Minute}
	if !testing.Verbose() {
		opts.Log = io.Discard
	}
	v := vdctest.Start(t, opts)
	lv := libvirtdtest.Start(t)
	ns := mgmtNS(t, "10.58.0.5/24", "10.58.0.1")
	cfg := testConfig(t, v, ns, "node-prompt")
	cfg.LibvirtURI = lv.URI()
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)
	if n := oneNode(t, v, "node-prompt"); n.Hypervisor.State != quantix.HypervisorAvailable {
		t.Fatalf("vDC hypervisor %+v, want available", n.Hypervisor)
	}
	if err := lv.Stop(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "unavailable in the vDC well before the next 60 s heartbeat", func() (bool, string) {
		n := oneNode(t, v, "node-prompt")
		return n.Hypervisor.State == quantix.HypervisorUnavailable, fmt.Sprintf("%+v", n.Hypervisor)
	})
	if err := lv.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "available again in the vDC", func() (bool, string) {
		n := oneNode(t, v, "node-prompt")
		return n.Hypervisor.State == quantix.HypervisorAvailable, fmt.Sprintf("%+v", n.Hypervisor)
	})
}

// TestReinstallReenrolls: the same machine (same SMBIOS product UUID) loses its
// identity file, as a reinstall does; with a join token it re-enrols as the same
// node.
func TestReinstallReenrolls(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDC(t)
	ns := mgmtNS(t, "10.59.0.5/24", "10.59.0.1")
	cfg := testConfig(t, v, ns, "node-re")
	cfg.ProductUUIDPath = filepath.Join(t.TempDir(), "product_uuid")
	if err := os.WriteFile(cfg.ProductUUIDPath, []byte("3F1C2B4A-9E8D-4C7B-A6F5-0123456789AB\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, cfg)
	id := a.waitMarker(t, 1).Get("node_id")
	if got := a.svc.Identity(); got.MachineID != "3f1c2b4a-9e8d-4c7b-a6f5-0123456789ab" || got.MachineIDSource != agent.MachineIDSMBIOS {
		t.Fatalf("identity %+v, want the SMBIOS product UUID", got)
	}
	oldSecret := a.svc.Identity().NodeSecret
	a.stop(t)

	if err := os.Remove(filepath.Join(cfg.StateDir, "identity.toml")); err != nil {
		t.Fatal(err)
	}
	a = startAgent(t, cfg)
	m := a.waitMarker(t, 1)
	if m.Get("registration") != quantix.RegistrationReenrolled || m.Get("node_id") != id {
		t.Fatalf("after reinstall: marker %s, want registration=reenrolled node_id=%s", m.String(), id)
	}
	if a.svc.Identity().NodeSecret == oldSecret {
		t.Errorf("reinstall kept the old node secret; a new identity must have a new one")
	}
	oneNode(t, v, "node-re")
}

// TestSeveralVDCs (docs/design.md §17): an agent given two vDCs of one database
// stays on the first, moves to the second when the first stops (no failed
// heartbeat beyond the one in flight, no re-registration, no full state), and
// learns from the vDC's answers a list with a third vDC it was never configured
// with, which it moves to when the second stops.
func TestSeveralVDCs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and three vDCs")
	}
	opts := vdctest.Options{HeartbeatInterval: time.Second, JoinTokens: []string{"agent-test-token"},
		AdminToken: "several-vdcs-admin-token"}
	if !testing.Verbose() {
		opts.Log = io.Discard
	}
	opts.DatabaseURL = vdctest.Shared(t).NewDatabase(t)
	v1, v2 := vdctest.Start(t, opts), vdctest.Start(t, opts)
	ns := mgmtNS(t, "10.55.0.5/24", "10.55.0.1")
	cfg := testConfig(t, v1, ns, "node-ha")
	cfg.ControlPlane = v1.AgentURL + "," + v2.AgentURL
	a := startAgent(t, cfg)
	id := a.waitMarker(t, 1).Get("node_id")
	eventually(t, 10*time.Second, "heartbeats to the first vDC", func() (bool, string) {
		st := a.svc.Status()
		return st.Counts.Heartbeats >= 2 && st.VDC == v1.AgentURL, fmt.Sprintf("vdc %s counts %+v", st.VDC, st.Counts)
	})
	moved := func(to string) {
		t.Helper()
		before := a.svc.Status().Counts
		start := time.Now()
		eventually(t, 15*time.Second, "heartbeats to "+to, func() (bool, string) {
			st := a.svc.Status()
			return st.VDC == to && st.Counts.Heartbeats >= before.Heartbeats+2 && st.Heartbeat.OK,
				fmt.Sprintf("vdc %s counts %+v", st.VDC, st.Counts)
		})
		st := a.svc.Status()
		t.Logf("moved to %s in %s, %d failed heartbeats", to, time.Since(start).Round(10*time.Millisecond),
			st.Counts.HeartbeatFailures-before.HeartbeatFailures)
		if f := st.Counts.HeartbeatFailures - before.HeartbeatFailures; f > 1 {
			t.Errorf("%d failed heartbeats moving to %s, want at most the one in flight", f, to)
		}
		if st.Counts.StatePuts != before.StatePuts || len(markers(a.out)) != 1 || st.NodeID != id {
			t.Errorf("moving to %s: %d state PUTs (before: %d), markers %v, node %s; want no full state, one registration as %s",
				to, st.Counts.StatePuts, before.StatePuts, markers(a.out), st.NodeID, id)
		}
	}
	v1.Stop(t)
	moved(v2.AgentURL)

	// A third vDC the agent was never configured with, announced by the second.
	addr3 := freeAddr(t)
	o3 := opts
	o3.Listen = addr3
	v3 := vdctest.Start(t, o3)
	v2.Announce(t, []string{v2.AgentURL, v3.AgentURL})
	eventually(t, 15*time.Second, "heartbeats after the second vDC's restart", func() (bool, string) {
		st := a.svc.Status()
		return st.Heartbeat.OK && st.VDC == v2.AgentURL, fmt.Sprintf("vdc %s heartbeat %+v", st.VDC, st.Heartbeat)
	})
	time.Sleep(1500 * time.Millisecond) // a heartbeat answer with the list
	v2.Stop(t)
	moved(v3.AgentURL)
	if n := oneNode(t, v3, "node-ha"); n.ID != id || n.Phase != quantix.PhaseReady {
		t.Errorf("the third vDC has %+v, want node %s ready", n, id)
	}
}
