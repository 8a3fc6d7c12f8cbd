package vdc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

// The node side of these tests is the agent's HTTP contract, spoken directly.

func vmSpec(name string, mem int64) quantix.VMSpec {
	return quantix.VMSpec{Name: name, VCPUs: 1, MemoryBytes: mem,
		Disks: []quantix.DiskSpec{{SizeBytes: 64 << 20}}, NICs: []quantix.NICSpec{{Network: quantix.NetworkManagement}}}
}

func createVM(t *testing.T, v *vdctest.VDC, c quantix.VMCreate) (int, quantix.ManagedVM, []byte) {
	t.Helper()
	code, b := call(t, http.MethodPost, v.URL+quantix.PathVMs, v.AdminToken, c)
	var m quantix.ManagedVM
	if code == http.StatusCreated {
		decodeInto(t, b, &m)
	}
	return code, m, b
}

func mustCreateVM(t *testing.T, v *vdctest.VDC, c quantix.VMCreate) quantix.ManagedVM {
	t.Helper()
	code, m, b := createVM(t, v, c)
	if code != http.StatusCreated {
		t.Fatalf("create vm %s: %d %s, want 201", c.Name, code, b)
	}
	return m
}

func managed(t *testing.T, v *vdctest.VDC) []quantix.ManagedVM {
	t.Helper()
	var l quantix.VMList
	v.Do(t, http.MethodGet, quantix.PathVMs, nil, &l, http.StatusOK)
	return l.Managed
}

func getVM(t *testing.T, v *vdctest.VDC, ref string) quantix.ManagedVM {
	t.Helper()
	var m quantix.ManagedVM
	v.Do(t, http.MethodGet, quantix.PathVM(ref), nil, &m, http.StatusOK)
	return m
}

func desired(t *testing.T, v *vdctest.VDC, n *node, query string) quantix.NodeDesired {
	t.Helper()
	code, b := call(t, http.MethodGet, v.AgentURL+quantix.PathDesired(n.ID)+query, n.Secret, nil)
	if code != http.StatusOK {
		t.Fatalf("desired of %s%s: %d %s", n.Hostname, query, code, b)
	}
	var d quantix.NodeDesired
	decodeInto(t, b, &d)
	return d
}

func putManaged(t *testing.T, v *vdctest.VDC, n *node, applied int64, vms ...quantix.VM) {
	t.Helper()
	st := quantix.NodeState{VMs: vms, StoragePools: []quantix.StoragePool{}, AppliedGeneration: applied}
	st.StateHash = quantix.StateHash(st.VMs, st.StoragePools)
	if code, b := call(t, http.MethodPut, v.AgentURL+quantix.PathState(n.ID), n.Secret, st); code != http.StatusOK {
		t.Fatalf("state of %s: %d %s", n.Hostname, code, b)
	}
}

func startNode(t *testing.T, v *vdctest.VDC, hostname string, mem int64) *node {
	t.Helper()
	n := newNode(hostname)
	n.Memory = mem
	mustRegister(t, v, n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
	return n
}

func TestVMInvalidSpecsCreateNothing(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	startNode(t, v, "node-a", 8<<30)
	ok := func(f func(*quantix.VMCreate)) quantix.VMCreate {
		c := quantix.VMCreate{VMSpec: vmSpec("good", 256<<20)}
		f(&c)
		return c
	}
	cases := []struct {
		name  string
		body  any
		field string
	}{
		{"name", ok(func(c *quantix.VMCreate) { c.Name = "Bad_Name" }), "name"},
		{"empty name", ok(func(c *quantix.VMCreate) { c.Name = "" }), "name"},
		{"vcpus", ok(func(c *quantix.VMCreate) { c.VCPUs = 0 }), "vcpus"},
		{"memory", ok(func(c *quantix.VMCreate) { c.MemoryBytes = 1000 }), "memory_bytes"},
		{"disk size", ok(func(c *quantix.VMCreate) { c.Disks = []quantix.DiskSpec{{SizeBytes: 64 << 20}, {SizeBytes: 12345}} }), "disks[1].size_bytes"},
		{"empty disk", ok(func(c *quantix.VMCreate) { c.Disks = []quantix.DiskSpec{{}} }), "disks[0]"},
		{"unknown image", ok(func(c *quantix.VMCreate) {
			c.Disks = []quantix.DiskSpec{{ImageID: "5b1e7c52-0000-4000-8000-000000000000"}}
		}), "disks[0].image_id"},
		{"image not a uuid", ok(func(c *quantix.VMCreate) { c.CDROM = "debian.iso" }), "cdrom_image_id"},
		{"network", ok(func(c *quantix.VMCreate) { c.NICs = []quantix.NICSpec{{Network: "dmz"}} }), "nics[0].network"},
		{"mac", ok(func(c *quantix.VMCreate) {
			c.NICs = []quantix.NICSpec{{Network: "management", MAC: "01:00:5e:00:00:01"}}
		}), "nics[0].mac"},
		{"same mac twice", ok(func(c *quantix.VMCreate) {
			c.NICs = []quantix.NICSpec{{Network: "management", MAC: "52:51:58:00:00:01"}, {Network: "management", MAC: "52:51:58:00:00:01"}}
		}), "nics[1].mac"},
		{"firmware", ok(func(c *quantix.VMCreate) { c.Firmware = "coreboot" }), "firmware"},
		{"boot order", ok(func(c *quantix.VMCreate) { c.BootOrder = []string{"disk", "floppy"} }), "boot_order[1]"},
		{"unknown node", ok(func(c *quantix.VMCreate) { c.Node = "node-zz" }), "node"},
		{"power", ok(func(c *quantix.VMCreate) { c.Power = "paused" }), "power"},
		{"unknown field", `{"name":"x","vcpus":1,"memory_bytes":268435456,"cpus":2}`, `"cpus"`},
		{"wrong type", `{"name":"x","vcpus":"one","memory_bytes":268435456}`, `"vcpus"`},
	}
	for _, tc := range cases {
		code, b := call(t, http.MethodPost, v.URL+quantix.PathVMs, v.AdminToken, tc.body)
		if code != http.StatusBadRequest || !strings.Contains(errMsg(t, b), tc.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.name, code, b, tc.field)
		}
	}
	if got := managed(t, v); len(got) != 0 {
		t.Errorf("after bad creates: %d managed VMs, want none: %+v", len(got), got)
	}
	var n int
	if err := vdctestPool(t, v).QueryRow(t.Context(), `SELECT (SELECT count(*) FROM vm_disks) + (SELECT count(*) FROM vm_nics) +
		(SELECT count(*) FROM vm_events) + (SELECT desired_generation FROM nodes)`).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows left by bad creates (disks + nics + events + generation) = %d, %v; want 0", n, err)
	}
}

// createsAtOnce sends n creates at the same moment and counts 201s and 409s; any
// other answer fails t.
func createsAtOnce(t *testing.T, v *vdctest.VDC, n int, spec func(i int) quantix.VMSpec) (created, refused int) {
	t.Helper()
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = createVM(t, v, quantix.VMCreate{VMSpec: spec(i)})
		}()
	}
	wg.Wait()
	for _, c := range codes {
		switch c {
		case http.StatusCreated:
			created++
		case http.StatusConflict:
			refused++
		default:
			t.Errorf("concurrent create: %d, want 201 or 409", c)
		}
	}
	return created, refused
}

func TestVMConcurrentCreatesOneName(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	startNode(t, v, "node-a", 64<<30)
	created, refused := createsAtOnce(t, v, 8, func(int) quantix.VMSpec { return vmSpec("web", 256<<20) })
	if created != 1 || refused != 7 {
		t.Errorf("8 concurrent creates of one name: %d created, %d refused; want 1 and 7", created, refused)
	}
	if got := managed(t, v); len(got) != 1 || got[0].Name != "web" {
		t.Errorf("managed VMs = %+v, want exactly web", got)
	}
}

// TestVMConcurrentPlacement: creates racing for the last room of a node never
// overbook it.
func TestVMConcurrentPlacement(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	startNode(t, v, "node-a", 4<<30) // 3.6 GiB free: three VMs of 1 GiB
	created, _ := createsAtOnce(t, v, 8, func(i int) quantix.VMSpec { return vmSpec(fmt.Sprintf("vm-%d", i), 1<<30) })
	if got := len(managed(t, v)); created != 3 || got != 3 {
		t.Errorf("8 concurrent 1 GiB creates on 3.6 GiB free: %d created, %d stored; want 3", created, got)
	}
}

func TestVMPlacement(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	a := startNode(t, v, "node-a", 4<<30)
	b := startNode(t, v, "node-b", 8<<30)
	// Free: a 4 GiB - 410 MiB reserve, b 8 GiB - 819 MiB.
	first := mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("vm1", 4<<30)})
	if first.NodeID != b.ID || first.Observed != quantix.ObservedPending || first.Wanted != quantix.WantedRunning {
		t.Errorf("vm1 = node %s observed %s wanted %s, want node-b (most free), pending, running", first.Hostname, first.Observed, first.Wanted)
	}
	second := mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("vm2", 3<<30)})
	if second.NodeID != a.ID {
		t.Errorf("vm2 on %s, want node-a (node-b has 3.2 GiB free, node-a 3.6 GiB)", second.Hostname)
	}
	v.SetMaintenance(t, a.ID, true)
	code, _, body := createVM(t, v, quantix.VMCreate{VMSpec: vmSpec("vm3", 4<<30)})
	msg := ""
	if code == http.StatusConflict {
		msg = errMsg(t, body)
	}
	if code != http.StatusConflict || !strings.Contains(msg, "no ready node has 4 GiB free") ||
		!strings.Contains(msg, "node-a in maintenance") || !strings.Contains(msg, "node-b 3.2 GiB free") {
		t.Errorf("create with no room: %d %s, want 409 naming each node's reason", code, body)
	}
	// Named explicitly, a node in maintenance is used if it has room.
	code, _, body = createVM(t, v, quantix.VMCreate{VMSpec: vmSpec("vm3", 512<<20), Node: "node-a"})
	if code != http.StatusCreated {
		t.Errorf("explicit node in maintenance: %d %s, want 201", code, body)
	}
	code, _, body = createVM(t, v, quantix.VMCreate{VMSpec: vmSpec("vm4", 4<<30), Node: b.ID})
	if code != http.StatusConflict || !strings.Contains(string(body), "node-b cannot take 4 GiB: node-b 3.2 GiB free") {
		t.Errorf("explicit node without room: %d %s, want 409", code, body)
	}
	// Growing a VM on its node is checked the same way, and nothing changes.
	code, b2 := call(t, http.MethodPatch, v.URL+quantix.PathVM("vm1"), v.AdminToken, `{"memory_bytes": 8589934592}`)
	if code != http.StatusConflict || !strings.Contains(string(b2), "node-b cannot take 8 GiB: 7.2 GiB free") || getVM(t, v, "vm1").Spec.MemoryBytes != 4<<30 {
		t.Errorf("grow vm1 past its node: %d %s, want 409 and memory unchanged", code, b2)
	}
}

func TestDesiredGenerationAndLongPoll(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := startNode(t, v, "node-a", 8<<30)
	d := desired(t, v, n, "")
	if d.Generation != 0 || len(d.VMs) != 0 {
		t.Fatalf("desired of a fresh node = %+v, want generation 0, no VMs", d)
	}
	// A long-poll at the current generation answers after wait, unchanged.
	start := time.Now()
	d = desired(t, v, n, "?after=0&wait=1")
	if took := time.Since(start); d.Generation != 0 || took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("idle long-poll = generation %d after %v, want 0 after about 1s", d.Generation, took)
	}
	// A change wakes a waiting long-poll at once.
	type answer struct {
		d  quantix.NodeDesired
		at time.Time
	}
	got := make(chan answer, 1)
	go func() {
		d := desired(t, v, n, "?after=0&wait=30")
		got <- answer{d, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond) // the poll is waiting
	changed := time.Now()
	vm := mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("web", 512<<20)})
	committed := time.Now()
	var a answer
	select {
	case a = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll did not answer within 10s of a change")
	}
	t.Logf("long-poll wake-up: %v after the create began, %v after it returned", a.at.Sub(changed), a.at.Sub(committed))
	if a.at.Sub(committed) > time.Second {
		t.Errorf("long-poll answered %v after the change, want within 1s", a.at.Sub(committed))
	}
	if a.d.Generation != 1 || len(a.d.VMs) != 1 {
		t.Fatalf("desired after create = %+v, want generation 1 with the VM", a.d)
	}
	dv := a.d.VMs[0]
	if dv.UUID != vm.UUID || dv.Power != quantix.WantedRunning || dv.Generation != 1 || len(dv.Spec.NICs) != 1 ||
		!strings.HasPrefix(dv.Spec.NICs[0].MAC, "52:51:58:") || quantix.ValidMAC(dv.Spec.NICs[0].MAC) != nil {
		t.Errorf("desired VM = %+v, want running, generation 1, a 52:51:58 MAC", dv)
	}
	// The heartbeat answer carries the generation; the node's applied one is kept.
	code, hb, b := heartbeat(t, v, n, quantix.HeartbeatRequest{AppliedGeneration: 0})
	if code != http.StatusOK || hb.DesiredGeneration != 1 {
		t.Errorf("heartbeat = %d %s, want desired_generation 1", code, b)
	}
	// A long-poll behind the current generation answers without waiting.
	start = time.Now()
	if d := desired(t, v, n, "?after=0&wait=30"); d.Generation != 1 || time.Since(start) > time.Second {
		t.Errorf("long-poll behind = generation %d after %v, want 1 at once", d.Generation, time.Since(start))
	}
	// Every change bumps it: an action, a spec change, a delete.
	v.Do(t, http.MethodPost, quantix.PathVMAction("web"), quantix.VMActionRequest{Action: quantix.VMActionStop}, nil, http.StatusOK)
	code, b = call(t, http.MethodPatch, v.URL+quantix.PathVM("web"), v.AdminToken, `{"vcpus": 2, "nics": [{"network": "management"}]}`)
	if code != http.StatusOK {
		t.Fatalf("patch: %d %s", code, b)
	}
	d = desired(t, v, n, "")
	if d.Generation != 3 || d.VMs[0].Power != quantix.WantedStopped || d.VMs[0].Spec.VCPUs != 2 ||
		d.VMs[0].Spec.NICs[0].MAC != dv.Spec.NICs[0].MAC || d.VMs[0].Spec.Disks[0].SizeBytes != 64<<20 {
		t.Errorf("desired after stop and patch = %+v, want generation 3, stopped, 2 vCPUs, same MAC and disk", d)
	}
	v.Do(t, http.MethodDelete, quantix.PathVM("web")+"?keep_disks=1", nil, nil, http.StatusNoContent)
	d = desired(t, v, n, "")
	if d.Generation != 4 || len(d.VMs) != 0 || len(d.Deleted) != 1 || d.Deleted[0].UUID != vm.UUID || !d.Deleted[0].KeepDisks {
		t.Errorf("desired after delete = %+v, want generation 4 and the VM in deleted with keep_disks", d)
	}
	// The node applied it and no longer has the VM: the tombstone goes.
	putManaged(t, v, n, 4)
	if d := desired(t, v, n, ""); len(d.Deleted) != 0 {
		t.Errorf("deleted after the node applied generation 4 = %+v, want none", d.Deleted)
	}
	// Another node's secret cannot read this node's desired state.
	other := startNode(t, v, "node-b", 8<<30)
	if code, b := call(t, http.MethodGet, v.AgentURL+quantix.PathDesired(n.ID), other.Secret, nil); code != http.StatusUnauthorized {
		t.Errorf("desired with another node's secret: %d %s, want 401", code, b)
	}
	if code, b := call(t, http.MethodGet, v.AgentURL+quantix.PathDesired(n.ID)+"?after=0&wait=61", n.Secret, nil); code != http.StatusBadRequest {
		t.Errorf("wait above the maximum: %d %s, want 400", code, b)
	}
}

func TestVMObservedStates(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: 500 * time.Millisecond})
	n := startNode(t, v, "node-a", 8<<30)
	vm := mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("web", 512<<20)})
	if vm.Observed != quantix.ObservedPending {
		t.Errorf("before the node reports: %s, want pending", vm.Observed)
	}
	// A heartbeat saying the generation is applied is not yet a report.
	heartbeat(t, v, n, quantix.HeartbeatRequest{AppliedGeneration: 1})
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedPending || got.AppliedGeneration != 1 {
		t.Errorf("applied per heartbeat, no state yet: %s (applied %d), want pending (applied 1)", got.Observed, got.AppliedGeneration)
	}
	// A full state at the generation that created it, without it: lost.
	putManaged(t, v, n, 1)
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedLost || !strings.Contains(got.Error, "does not report") {
		t.Errorf("applied but not reported: %s %q, want lost", got.Observed, got.Error)
	}
	dom := quantix.VM{UUID: strings.ToUpper(vm.UUID), Name: "web", PowerState: quantix.PowerRunning, VCPUs: 1, MemoryBytes: 512 << 20}
	unmanaged := quantix.VM{UUID: newMachineID(), Name: "legacy", PowerState: quantix.PowerShutoff, VCPUs: 1, MemoryBytes: 1 << 30}
	putManaged(t, v, n, 1, dom, unmanaged)
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedRunning || got.AppliedGeneration != 1 || !got.Converged() {
		t.Errorf("reported running: %+v, want observed running, applied 1, converged", got)
	}
	var l quantix.VMList
	v.Do(t, http.MethodGet, quantix.PathVMs, nil, &l, http.StatusOK)
	for _, iv := range l.VMs {
		if managedWant := iv.Name == "web"; iv.IsManaged != managedWant {
			t.Errorf("inventory %s is_managed = %v, want %v", iv.Name, iv.IsManaged, managedWant)
		}
	}
	dom.PowerState, dom.Error = quantix.PowerShutoff, "image 1234 sha256 mismatch"
	putManaged(t, v, n, 1, dom, unmanaged)
	if got := getVM(t, v, vm.UUID); got.Observed != quantix.ObservedError || got.Error != dom.Error {
		t.Errorf("reported with an error: %s %q, want error with the reason", got.Observed, got.Error)
	}
	putManaged(t, v, n, 1, unmanaged)
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedLost {
		t.Errorf("no longer reported: %s, want lost", got.Observed)
	}
	dom.Error = ""
	dom.PowerState = quantix.PowerRunning
	putManaged(t, v, n, 1, dom, unmanaged)
	// The node goes silent: unknown, never stopped.
	for deadline := time.Now().Add(20 * time.Second); v.Node(t, n.ID).Phase == quantix.PhaseReady; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node still ready 20s after its last heartbeat")
		}
	}
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedUnknown || !strings.Contains(got.Error, "node-a is ") {
		t.Errorf("node silent: %s %q, want unknown naming the node's phase", got.Observed, got.Error)
	}
	v.WaitPhase(t, n.ID, quantix.PhaseDisconnected, 20*time.Second)
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedUnknown {
		t.Errorf("node disconnected: %s, want unknown", got.Observed)
	}
	// Its spec can change meanwhile; the node converges when it is back.
	if code, b := call(t, http.MethodPatch, v.URL+quantix.PathVM("web"), v.AdminToken, `{"vcpus": 2}`); code != http.StatusOK {
		t.Errorf("patch while the node is disconnected: %d %s, want 200", code, b)
	}
	heartbeat(t, v, n, quantix.HeartbeatRequest{AppliedGeneration: 1})
	if got := getVM(t, v, "web"); got.Observed != quantix.ObservedRunning {
		t.Errorf("node back: %s, want running", got.Observed)
	}
}

func TestVMActions(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := startNode(t, v, "node-a", 8<<30)
	mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("web", 512<<20), Power: quantix.WantedStopped})
	act := func(action string, want int) quantix.ManagedVM {
		t.Helper()
		var m quantix.ManagedVM
		code, b := call(t, http.MethodPost, v.URL+quantix.PathVMAction("web"), v.AdminToken, quantix.VMActionRequest{Action: action})
		if code != want {
			t.Fatalf("%s: %d %s, want %d", action, code, b, want)
		}
		if code == http.StatusOK {
			decodeInto(t, b, &m)
		}
		return m
	}
	act(quantix.VMActionReboot, http.StatusConflict)
	if m := act(quantix.VMActionStart, http.StatusOK); m.Wanted != quantix.WantedRunning || m.Generation != 2 {
		t.Errorf("start = wanted %s generation %d, want running 2", m.Wanted, m.Generation)
	}
	if m := act(quantix.VMActionReboot, http.StatusOK); m.RebootCount != 1 {
		t.Errorf("reboot count = %d, want 1", m.RebootCount)
	}
	if m := act(quantix.VMActionForceOff, http.StatusOK); m.Wanted != quantix.WantedStopped || !m.ForceStop {
		t.Errorf("force-off = %+v, want stopped with force_stop", m)
	}
	d := desired(t, v, n, "")
	if d.VMs[0].Power != quantix.WantedStopped || !d.VMs[0].ForceStop || d.VMs[0].RebootCount != 1 {
		t.Errorf("desired after force-off = %+v", d.VMs[0])
	}
	act("suspend", http.StatusBadRequest)
	if code, b := call(t, http.MethodPost, v.URL+quantix.PathVMAction("nope"), v.AdminToken, quantix.VMActionRequest{Action: "start"}); code != http.StatusNotFound {
		t.Errorf("action on an unknown VM: %d %s, want 404", code, b)
	}
	var evs quantix.VMEventList
	v.Do(t, http.MethodGet, quantix.PathVMEvents("web"), nil, &evs, http.StatusOK)
	if len(evs.Events) != 4 || evs.Events[0].Kind != "created" || evs.Events[3].Message != "force-off" {
		t.Errorf("vm events = %+v, want created and the 3 actions that were taken", evs.Events)
	}
}

func TestDeleteNodeWithVMs(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := startNode(t, v, "node-a", 8<<30)
	mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("web", 512<<20)})
	code, b := call(t, http.MethodDelete, v.URL+quantix.PathNode(n.ID), v.AdminToken, nil)
	if code != http.StatusConflict || !strings.Contains(string(b), "web") || !strings.Contains(string(b), "force=1") {
		t.Fatalf("delete node with a VM: %d %s, want 409 naming the VM and ?force=1", code, b)
	}
	if len(v.Nodes(t)) != 1 || len(managed(t, v)) != 1 {
		t.Fatal("a refused node delete changed something")
	}
	v.Do(t, http.MethodDelete, quantix.PathNode(n.ID)+"?force=1", nil, nil, http.StatusNoContent)
	if len(v.Nodes(t)) != 0 || len(managed(t, v)) != 0 {
		t.Errorf("after a forced delete: nodes %v, managed %v; want none", v.Nodes(t), managed(t, v))
	}
}

func uploadImage(t *testing.T, v *vdctest.VDC, query string, data []byte) (int, quantix.Image, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, v.URL+quantix.PathImages+query, bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+v.AdminToken)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var img quantix.Image
	if resp.StatusCode == http.StatusCreated {
		decodeInto(t, b, &img)
	}
	return resp.StatusCode, img, b
}

func TestImages(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{MaxImageBytes: 2 << 20})
	a := startNode(t, v, "node-a", 8<<30)
	b := startNode(t, v, "node-b", 8<<30)
	boot := bytes.Repeat([]byte{0x90}, 512<<10)
	sum := sha256.Sum256(boot)
	hexSum := hex.EncodeToString(sum[:])

	code, img, body := uploadImage(t, v, "?name=boot&format=raw&sha256="+hexSum, boot)
	if code != http.StatusCreated || img.SHA256 != hexSum || img.SizeBytes != int64(len(boot)) || img.Format != quantix.ImageRaw {
		t.Fatalf("upload: %d %s, want 201 with sha256 %s and size %d", code, body, hexSum, len(boot))
	}
	bad := []struct {
		name, query string
		data        []byte
		want        int
		msg         string
	}{
		{"sha mismatch", "?name=x&format=raw&sha256=" + strings.Repeat("0", 64), boot, 400, "sha256 of the"},
		{"too big", "?name=big&format=raw", make([]byte, 2<<20+1), 413, "max_image_bytes"},
		{"format", "?name=x&format=vmdk", boot, 400, "format"},
		{"no name", "?format=raw", boot, 400, "name"},
		{"name taken", "?name=boot&format=raw", boot, 409, "exists"},
		{"empty", "?name=x&format=raw", nil, 400, "empty"},
	}
	for _, tc := range bad {
		code, _, body := uploadImage(t, v, tc.query, tc.data)
		if code != tc.want || !strings.Contains(string(body), tc.msg) {
			t.Errorf("%s: %d %s, want %d naming %s", tc.name, code, body, tc.want, tc.msg)
		}
	}
	var list quantix.ImageList
	v.Do(t, http.MethodGet, quantix.PathImages, nil, &list, http.StatusOK)
	if len(list.Images) != 1 || list.Images[0].ID != img.ID {
		t.Errorf("images after refused uploads = %+v, want only boot", list.Images)
	}
	if files := dirNames(t, v.DataDir); len(files) != 1 {
		t.Errorf("data_dir holds %v, want only the one image (refused uploads leave nothing)", files)
	}

	// A VM on node-a uses it: node-a may download it, node-b may not, and it stays.
	mustCreateVM(t, v, quantix.VMCreate{VMSpec: quantix.VMSpec{Name: "web", VCPUs: 1, MemoryBytes: 64 << 20,
		Disks: []quantix.DiskSpec{{ImageID: img.ID}}}, Node: "node-a"})
	d := desired(t, v, a, "")
	if len(d.Images) != 1 || d.Images[0] != (quantix.DesiredImage{ID: img.ID, Format: "raw", SizeBytes: int64(len(boot)), SHA256: hexSum}) {
		t.Errorf("desired images = %+v, want boot with its sha256", d.Images)
	}
	code, got := call(t, http.MethodGet, v.AgentURL+quantix.PathNodeImage(a.ID, img.ID), a.Secret, nil)
	if gotSum := sha256.Sum256(got); code != http.StatusOK || hex.EncodeToString(gotSum[:]) != hexSum {
		t.Errorf("node-a download: %d, %d bytes, want 200 with the image", code, len(got))
	}
	if code, b := call(t, http.MethodGet, v.AgentURL+quantix.PathNodeImage(b.ID, img.ID), b.Secret, nil); code != http.StatusNotFound {
		t.Errorf("node-b download of an image none of its VMs uses: %d %s, want 404", code, b)
	}
	code, body = call(t, http.MethodDelete, v.URL+quantix.PathImage(img.ID), v.AdminToken, nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "web") {
		t.Errorf("delete an image in use: %d %s, want 409 naming the VM", code, body)
	}
	// A disk of an iso, or a CD-ROM of a disk image, is refused.
	code, body = call(t, http.MethodPost, v.URL+quantix.PathVMs, v.AdminToken, quantix.VMCreate{VMSpec: quantix.VMSpec{
		Name: "cd", VCPUs: 1, MemoryBytes: 64 << 20, CDROM: img.ID}})
	if code != http.StatusBadRequest || !strings.Contains(string(body), "cdrom_image_id") {
		t.Errorf("raw image as cdrom: %d %s, want 400 naming cdrom_image_id", code, body)
	}
	v.Do(t, http.MethodDelete, quantix.PathVM("web"), nil, nil, http.StatusNoContent)
	v.Do(t, http.MethodDelete, quantix.PathImage(img.ID), nil, nil, http.StatusNoContent)
	if files := dirNames(t, v.DataDir); len(files) != 0 {
		t.Errorf("data_dir after the delete holds %v, want nothing", files)
	}
}

func TestVMConsole(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	a := startNode(t, v, "node-a", 8<<30)
	b := startNode(t, v, "node-b", 8<<30)
	vm := mustCreateVM(t, v, quantix.VMCreate{VMSpec: vmSpec("web", 512<<20), Node: "node-a"})
	code, body := call(t, http.MethodGet, v.URL+quantix.PathVMConsole("web"), v.AdminToken, nil)
	if code != http.StatusOK || len(body) != 0 {
		t.Errorf("console before any output: %d %q, want 200 and empty", code, body)
	}
	out := []byte("SeaBIOS\r\nQUANTIX-GUEST-MARKER\r\n")
	if code, body := call(t, http.MethodPut, v.AgentURL+quantix.PathNodeConsole(a.ID, vm.UUID), a.Secret, out); code != http.StatusNoContent {
		t.Fatalf("console put: %d %s", code, body)
	}
	if code, body := call(t, http.MethodGet, v.URL+quantix.PathVMConsole(vm.UUID), v.AdminToken, nil); code != http.StatusOK || !bytes.Equal(body, out) {
		t.Errorf("console = %d %q, want %q", code, body, out)
	}
	if code, body := call(t, http.MethodPut, v.AgentURL+quantix.PathNodeConsole(b.ID, vm.UUID), b.Secret, []byte("spoof")); code != http.StatusNotFound {
		t.Errorf("console put by another node: %d %s, want 404", code, body)
	}
	big := bytes.Repeat([]byte("x"), quantix.MaxConsoleBytes+1)
	if code, body := call(t, http.MethodPut, v.AgentURL+quantix.PathNodeConsole(a.ID, vm.UUID), a.Secret, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("console put over %d bytes: %d %s, want 413", quantix.MaxConsoleBytes, code, body)
	}
	if _, body := call(t, http.MethodGet, v.URL+quantix.PathVMConsole("web"), v.AdminToken, nil); !bytes.Equal(body, out) {
		t.Errorf("console after refused puts = %q, want %q", body, out)
	}
}

// dirNames lists a folder.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// vdctestPool connects to the vDC's database, for checks the API cannot show.
func vdctestPool(t *testing.T, v *vdctest.VDC) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(t.Context(), v.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// TestDesiredAcrossVDCs: a change made through one vDC wakes a long-poll held by
// another on the same database, also after the listening connection was cut.
func TestDesiredAcrossVDCs(t *testing.T) {
	skipShort(t)
	a := vdctest.Start(t, vdctest.Options{})
	b := vdctest.Start(t, vdctest.Options{DatabaseURL: a.DatabaseURL, JoinTokens: []string{a.JoinToken}, AdminToken: a.AdminToken})
	n := startNode(t, a, "node-a", 8<<30)
	poll := func(after int64) <-chan time.Time {
		got := make(chan time.Time, 1)
		go func() {
			d := desired(t, b, n, fmt.Sprintf("?after=%d&wait=20", after))
			if d.Generation == after {
				t.Errorf("long-poll on the second vDC answered generation %d unchanged", d.Generation)
			}
			got <- time.Now()
		}()
		time.Sleep(300 * time.Millisecond)
		return got
	}
	wait := func(got <-chan time.Time, what string) {
		t.Helper()
		changed := time.Now()
		select {
		case at := <-got:
			t.Logf("%s: long-poll on the other vDC answered %v after the change returned", what, at.Sub(changed))
			if at.Sub(changed) > 2*time.Second {
				t.Errorf("%s: answered %v after the change, want within 2s", what, at.Sub(changed))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the other vDC's long-poll did not answer within 10s", what)
		}
	}
	got := poll(0)
	if up, waiting := metricValue(t, b, "qx_vdc_desired_listener_up"), metricValue(t, b, "qx_vdc_desired_waiters"); up != 1 || waiting != 1 {
		t.Errorf("metrics of the second vDC: listener up %v, waiters %v; want 1 and 1", up, waiting)
	}
	mustCreateVM(t, a, quantix.VMCreate{VMSpec: vmSpec("web", 512<<20)})
	wait(got, "create through vDC a")

	// Cut the listening connections: the listeners reconnect and wake again.
	conn := vdctestPool(t, a)
	var cut int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query = 'LISTEN `+store.DesiredChannel+`'`).Scan(&cut); err != nil || cut != 2 {
		t.Fatalf("terminated %d listening connections (%v), want 2 (one per vDC)", cut, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var listening int
		conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND query = 'LISTEN `+store.DesiredChannel+`' AND state = 'idle'`).Scan(&listening)
		if listening == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 listeners back 10s after their connections were cut", listening)
		}
	}
	got = poll(1)
	v2 := quantix.VMActionRequest{Action: quantix.VMActionStop}
	a.Do(t, http.MethodPost, quantix.PathVMAction("web"), v2, nil, http.StatusOK)
	wait(got, "stop after the listener's reconnect")
}
