package hypervisor

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		uri        string
		wantRemote string
		wantSocket string
		wantErr    bool
	}{
		{"qemu:///system", "qemu:///system", "/run/libvirt/libvirt-sock", false},
		{"test:///default", "test:///default", "/run/libvirt/libvirt-sock", false},
		{"test+unix:///default?socket=/tmp/x/libvirt-sock", "test:///default", "/tmp/x/libvirt-sock", false},
		{"qemu+unix:///system?socket=%2Fa%2Fb", "qemu:///system", "/a/b", false},
		{"qemu+tcp://host/system", "", "", true},
		{"qemu://host/system", "", "", true},
		{"qemu+ssh://host/system", "", "", true},
		{"qemu:///system?mode=legacy", "", "", true},
		{"/var/run/libvirt", "", "", true},
		{"::", "", "", true},
	}
	for _, tt := range tests {
		remote, sock, err := ParseURI(tt.uri)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseURI(%q) error = %v, want error %v", tt.uri, err, tt.wantErr)
			continue
		}
		if string(remote) != tt.wantRemote || sock != tt.wantSocket {
			t.Errorf("ParseURI(%q) = %q, %q, want %q, %q", tt.uri, remote, sock, tt.wantRemote, tt.wantSocket)
		}
	}
}

func frame(prog, proc uint32, payload int) []byte {
	b := make([]byte, rpcHeaderLen+payload)
	binary.BigEndian.PutUint32(b[0:], uint32(len(b)))
	binary.BigEndian.PutUint32(b[4:], prog)
	binary.BigEndian.PutUint32(b[8:], 1)
	binary.BigEndian.PutUint32(b[12:], proc)
	for i := rpcHeaderLen; i < len(b); i++ {
		b[i] = 0x20 // payload bytes that look like nothing in particular
	}
	return b
}

func TestWatchConnScan(t *testing.T) {
	var stream []byte
	stream = append(stream, frame(remoteProgram, 1, 100)...)
	stream = append(stream, frame(remoteProgram, procStoragePoolLifecyle, 60)...)
	stream = append(stream, frame(0x20008087, procStoragePoolLifecyle, 10)...) // QEMU program: not ours
	stream = append(stream, frame(remoteProgram, 107, 0)...)                   // domain lifecycle
	stream = append(stream, frame(remoteProgram, procStoragePoolLifecyle, 0)...)
	for _, chunk := range []int{1, 3, 7, 28, 29, 64, len(stream)} {
		var n int
		c := &watchConn{onPoolEvent: func() { n++ }}
		for b := stream; len(b) > 0; {
			k := min(chunk, len(b))
			c.scan(b[:k])
			b = b[k:]
		}
		if n != 2 {
			t.Errorf("scan in chunks of %d: %d pool events, want 2", chunk, n)
		}
	}
}

func TestDiff(t *testing.T) {
	at := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	a := quantix.VM{UUID: "a", Name: "a", PowerState: quantix.PowerRunning, VCPUs: 1, MemoryBytes: 1 << 30}
	aOff := a
	aOff.PowerState = quantix.PowerShutoff
	b := quantix.VM{UUID: "b", Name: "b", PowerState: quantix.PowerShutoff, VCPUs: 2, MemoryBytes: 2 << 30}
	p := quantix.StoragePool{Name: "p", Type: "dir", Path: "/p", State: "running", CapacityBytes: 10, AvailableBytes: 5}
	pFull := p
	pFull.AvailableBytes = 0
	tests := []struct {
		name     string
		old, cur Snapshot
		want     []quantix.StateEvent
	}{
		{"same", Snapshot{VMs: []quantix.VM{a}, Pools: []quantix.StoragePool{p}}, Snapshot{VMs: []quantix.VM{a}, Pools: []quantix.StoragePool{p}}, nil},
		{"new vm", Snapshot{VMs: []quantix.VM{a}}, Snapshot{VMs: []quantix.VM{a, b}},
			[]quantix.StateEvent{{Kind: "vm", Action: "upsert", At: at, VM: &b}}},
		{"vm stopped", Snapshot{VMs: []quantix.VM{a}}, Snapshot{VMs: []quantix.VM{aOff}},
			[]quantix.StateEvent{{Kind: "vm", Action: "upsert", At: at, VM: &aOff}}},
		{"vm undefined", Snapshot{VMs: []quantix.VM{a, b}}, Snapshot{VMs: []quantix.VM{b}},
			[]quantix.StateEvent{{Kind: "vm", Action: "removed", At: at, VM: &a}}},
		{"pool changed and removed", Snapshot{Pools: []quantix.StoragePool{p}}, Snapshot{Pools: []quantix.StoragePool{pFull}},
			[]quantix.StateEvent{{Kind: "storage_pool", Action: "upsert", At: at, StoragePool: &pFull}}},
		{"pool removed", Snapshot{Pools: []quantix.StoragePool{p}}, Snapshot{},
			[]quantix.StateEvent{{Kind: "storage_pool", Action: "removed", At: at, StoragePool: &p}}},
	}
	for _, tt := range tests {
		got := Diff(tt.old, tt.cur, at)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s: Diff() mismatch (-want +got):\n%s", tt.name, diff)
		}
	}
}

const domainXML = `<domain type='test'>
  <name>qx-test-vm</name>
  <uuid>5e5c1a8e-5f0e-4c61-9d0f-6b1bde8e0a01</uuid>
  <memory unit='MiB'>512</memory>
  <vcpu>3</vcpu>
  <os><type>hvm</type></os>
</domain>`

const poolXMLDef = `<pool type='dir'>
  <name>qx-test-pool</name>
  <target><path>/qx-test-pool</path></target>
</pool>`

// waitFor waits for change signals until cond holds for a fresh snapshot. The
// monitor does not poll, so only a lifecycle event or a connection change can
// make cond true here.
func waitFor(t *testing.T, m *Monitor, what string, cond func(Snapshot) bool) Snapshot {
	t.Helper()
	deadline := time.After(15 * time.Second)
	var last Snapshot
	for {
		select {
		case <-m.Changes():
			last = m.Snapshot(context.Background())
			if cond(last) {
				return last
			}
		case <-deadline:
			t.Fatalf("%s: not seen within 15s; last snapshot: %+v", what, last)
		}
	}
}

func findVM(s Snapshot, name string) *quantix.VM {
	for _, v := range s.VMs {
		if v.Name == name {
			return &v
		}
	}
	return nil
}

func findPool(s Snapshot, name string) *quantix.StoragePool {
	for _, p := range s.Pools {
		if p.Name == name {
			return &p
		}
	}
	return nil
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestMonitorLibvirt(t *testing.T) {
	if testing.Short() {
		t.Skip("starts libvirtd")
	}
	d := libvirtdtest.Start(t)
	m, err := New(Config{URI: d.URI(), MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stopped atomic.Bool
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx); stopped.Store(true) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run() = %v", err)
		}
	}()

	s := waitFor(t, m, "connected", Snapshot.Available)
	if s.Hypervisor.Version == "" || s.Hypervisor.URI != d.URI() {
		t.Errorf("Hypervisor = %+v, want version and uri %s", s.Hypervisor, d.URI())
	}
	// test:///default ships one running domain "test" and one pool "default-pool".
	if v := findVM(s, "test"); v == nil || v.PowerState != quantix.PowerRunning || v.VCPUs < 1 || v.MemoryBytes <= 0 || len(v.UUID) != 36 {
		t.Errorf("domain test = %+v, want running with vcpus, memory and uuid; snapshot %+v", v, s)
	}
	if p := findPool(s, "default-pool"); p == nil || p.Type != "dir" || p.Path != "/default-pool" || p.State != "running" || p.CapacityBytes <= 0 ||
		p.AllocationBytes < 0 || p.AllocationBytes+p.AvailableBytes > p.CapacityBytes {
		t.Errorf("pool default-pool = %+v, want dir /default-pool running with capacity, allocation + available at most the capacity (the test driver reports 0 allocated)", p)
	}

	// A second client changes the hypervisor; the monitor hears the events. The test
	// driver's default state is shared while any client holds it open.
	ctl := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.Socket)))
	if err := ctl.ConnectToURI("test:///default"); err != nil {
		t.Fatal(err)
	}
	defer ctl.Disconnect()

	dom, err := ctl.DomainDefineXML(domainXML)
	if err != nil {
		t.Fatal(err)
	}
	s = waitFor(t, m, "domain defined", func(s Snapshot) bool { return findVM(s, "qx-test-vm") != nil })
	want := quantix.VM{UUID: "5e5c1a8e-5f0e-4c61-9d0f-6b1bde8e0a01", Name: "qx-test-vm", PowerState: quantix.PowerShutoff, VCPUs: 3, MemoryBytes: 512 << 20}
	if diff := cmp.Diff(&want, findVM(s, "qx-test-vm")); diff != "" {
		t.Errorf("defined domain (-want +got):\n%s", diff)
	}
	if err := ctl.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, "domain started", func(s Snapshot) bool {
		v := findVM(s, "qx-test-vm")
		return v != nil && v.PowerState == quantix.PowerRunning
	})
	if err := ctl.DomainDestroy(dom); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, "domain stopped", func(s Snapshot) bool {
		v := findVM(s, "qx-test-vm")
		return v != nil && v.PowerState == quantix.PowerShutoff
	})
	if err := ctl.DomainUndefine(dom); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, "domain undefined", func(s Snapshot) bool { return findVM(s, "qx-test-vm") == nil })

	// Storage pools: their events reach the monitor through watchConn.
	pool, err := ctl.StoragePoolDefineXML(poolXMLDef, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, "pool defined", func(s Snapshot) bool {
		p := findPool(s, "qx-test-pool")
		return p != nil && p.State == "inactive" && p.Path == "/qx-test-pool" && p.Type == "dir"
	})
	if err := ctl.StoragePoolCreate(pool, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, "pool started", func(s Snapshot) bool {
		p := findPool(s, "qx-test-pool")
		return p != nil && p.State == "running"
	})
	if err := ctl.StoragePoolDestroy(pool); err != nil {
		t.Fatal(err)
	}
	if err := ctl.StoragePoolUndefine(pool); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, "pool undefined", func(s Snapshot) bool { return findPool(s, "qx-test-pool") == nil })

	// libvirtd goes away: unavailable with a reason and no inventory, then back.
	ctl.Disconnect()
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	s = waitFor(t, m, "libvirt unavailable", func(s Snapshot) bool { return !s.Available() })
	if s.Hypervisor.State != quantix.HypervisorUnavailable || s.Hypervisor.Reason == "" || s.VMs != nil || s.Pools != nil {
		t.Errorf("snapshot while libvirtd is down = %+v, want unavailable with a reason and no inventory", s)
	}
	if err := d.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	s = waitFor(t, m, "libvirt back", Snapshot.Available)
	if findVM(s, "test") == nil {
		t.Errorf("after reconnect: no domain test in %+v", s)
	}
	if stopped.Load() {
		t.Error("Run returned while the context was live")
	}
}

func TestMonitorUnreachable(t *testing.T) {
	m, err := New(Config{URI: "qemu+unix:///system?socket=" + t.TempDir() + "/none", MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if s := m.Snapshot(context.Background()); s.Hypervisor.State != quantix.HypervisorUnknown {
		t.Errorf("before Run: state %q, want %q", s.Hypervisor.State, quantix.HypervisorUnknown)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	<-m.Tried()
	s := m.Snapshot(ctx)
	if s.Available() || s.Hypervisor.State != quantix.HypervisorUnavailable || s.VMs != nil {
		t.Errorf("Snapshot() = %+v, want unavailable without inventory", s)
	}
	if want := "no such file"; !strings.Contains(s.Hypervisor.Reason, want) {
		t.Errorf("reason %q does not say %q", s.Hypervisor.Reason, want)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v", err)
	}
}
