package vdc_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

func putState(t *testing.T, v *vdctest.VDC, n *node, vms []quantix.VM, pools []quantix.StoragePool) quantix.StateAck {
	t.Helper()
	st := quantix.NodeState{VMs: vms, StoragePools: pools, StateHash: quantix.StateHash(vms, pools)}
	code, b := call(t, http.MethodPut, v.AgentURL+quantix.PathState(n.ID), n.Secret, st)
	if code != 200 {
		t.Fatalf("PUT state: %d %s", code, b)
	}
	var ack quantix.StateAck
	decodeInto(t, b, &ack)
	if ack.StateHash != st.StateHash || ack.FullSync {
		t.Fatalf("PUT state ack = %+v, want hash %s and no full_sync", ack, st.StateHash)
	}
	return ack
}

func vmsByName(t *testing.T, v *vdctest.VDC) map[string]quantix.InventoryVM {
	t.Helper()
	out := map[string]quantix.InventoryVM{}
	for _, vm := range v.VMs(t) {
		out[vm.Name] = vm
	}
	return out
}

func TestStateReconciliation(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	n := newNode("hv1")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	web := quantix.VM{UUID: newMachineID(), Name: "web", PowerState: quantix.PowerRunning, VCPUs: 2, MemoryBytes: 2 << 30}
	db := quantix.VM{UUID: newMachineID(), Name: "db", PowerState: quantix.PowerShutoff, VCPUs: 4, MemoryBytes: 8 << 30}
	pool := quantix.StoragePool{Name: "default", Type: "dir", Path: "/var/lib/quantix/images", State: "running", CapacityBytes: 100 << 30, AllocationBytes: 40 << 30, AvailableBytes: 60 << 30}

	// Heartbeats ask for a full state until one arrives.
	if _, hb, _ := heartbeat(t, v, n, quantix.HeartbeatRequest{}); !hb.FullSync {
		t.Fatalf("heartbeat before any state: full_sync false")
	}
	ack := putState(t, v, n, []quantix.VM{web, db}, []quantix.StoragePool{pool})
	if _, hb, _ := heartbeat(t, v, n, quantix.HeartbeatRequest{StateHash: ack.StateHash}); hb.FullSync {
		t.Errorf("heartbeat with the stored hash: full_sync true")
	}
	if _, hb, _ := heartbeat(t, v, n, quantix.HeartbeatRequest{StateHash: strings.Repeat("0", 64)}); !hb.FullSync {
		t.Errorf("heartbeat with another hash: full_sync false")
	}
	vms := vmsByName(t, v)
	if len(vms) != 2 || vms["web"].NodeID != n.ID || vms["web"].Hostname != "hv1" || vms["web"].VCPUs != 2 ||
		vms["web"].Origin != "discovered" || vms["web"].IsManaged || vms["web"].Lost {
		t.Fatalf("vms = %+v", vms)
	}
	if got := v.Node(t, n.ID).VMCount; got != 2 {
		t.Errorf("vm_count = %d, want 2", got)
	}
	pools := v.Pools(t)
	if len(pools) != 1 || pools[0].Name != "default" || pools[0].AvailableBytes != 60<<30 || pools[0].AllocationBytes != 40<<30 || pools[0].State != "running" {
		t.Fatalf("pools = %+v", pools)
	}

	// db disappears from the full state: lost with reason and time, not deleted.
	web.PowerState = quantix.PowerPaused
	putState(t, v, n, []quantix.VM{web}, []quantix.StoragePool{pool})
	vms = vmsByName(t, v)
	if len(vms) != 2 {
		t.Fatalf("vms after db went missing = %+v, want both rows", vms)
	}
	if d := vms["db"]; !d.Lost || d.LostAt == nil || d.LostReason != store.LostMissingFromState {
		t.Errorf("missing vm = %+v, want lost with reason %q", d, store.LostMissingFromState)
	}
	if w := vms["web"]; w.Lost || w.PowerState != quantix.PowerPaused {
		t.Errorf("reported vm = %+v, want paused and not lost", w)
	}
	if got := v.Node(t, n.ID).VMCount; got != 1 {
		t.Errorf("vm_count = %d, want 1 (lost VMs do not count)", got)
	}
	// It comes back: found again.
	putState(t, v, n, []quantix.VM{web, db}, nil)
	vms = vmsByName(t, v)
	if d := vms["db"]; d.Lost || d.LostAt != nil || d.LostReason != "" {
		t.Errorf("reappeared vm = %+v, want not lost", d)
	}
	if p := v.Pools(t); len(p) != 1 || !p[0].Lost {
		t.Errorf("pool missing from the full state = %+v, want lost", p)
	}

	// Events: remove web, add cache, bring the pool back; the hash matches.
	cache := quantix.VM{UUID: newMachineID(), Name: "cache", PowerState: quantix.PowerRunning, VCPUs: 1, MemoryBytes: 1 << 30}
	evs := quantix.NodeEvents{Events: []quantix.StateEvent{
		{Kind: quantix.EventKindVM, Action: quantix.EventActionRemoved, At: time.Now(), VM: &quantix.VM{UUID: web.UUID}},
		{Kind: quantix.EventKindVM, Action: quantix.EventActionUpsert, At: time.Now(), VM: &cache},
		{Kind: quantix.EventKindStoragePool, Action: quantix.EventActionUpsert, At: time.Now(), StoragePool: &pool},
	}, StateHash: quantix.StateHash([]quantix.VM{db, cache}, []quantix.StoragePool{pool})}
	code, b := call(t, http.MethodPost, v.AgentURL+quantix.PathEvents(n.ID), n.Secret, evs)
	var eack quantix.StateAck
	if code != 200 {
		t.Fatalf("events: %d %s", code, b)
	}
	decodeInto(t, b, &eack)
	if eack.FullSync || eack.StateHash != evs.StateHash {
		t.Errorf("events ack = %+v, want hash %s without full_sync", eack, evs.StateHash)
	}
	vms = vmsByName(t, v)
	if w := vms["web"]; !w.Lost || w.LostReason != store.LostRemovedOnHost {
		t.Errorf("removed vm = %+v, want lost %q", w, store.LostRemovedOnHost)
	}
	if c := vms["cache"]; c.Lost || c.VCPUs != 1 {
		t.Errorf("added vm = %+v", c)
	}
	if p := v.Pools(t); len(p) != 1 || p[0].Lost {
		t.Errorf("pool after upsert event = %+v, want found", p)
	}
	if _, hb, _ := heartbeat(t, v, n, quantix.HeartbeatRequest{StateHash: evs.StateHash}); hb.FullSync {
		t.Errorf("heartbeat with the post-events hash: full_sync true")
	}

	// Events the vDC's view does not match (the agent's hash says otherwise): full sync.
	evs = quantix.NodeEvents{Events: []quantix.StateEvent{
		{Kind: quantix.EventKindStoragePool, Action: quantix.EventActionRemoved, StoragePool: &quantix.StoragePool{Name: "default"}},
	}, StateHash: strings.Repeat("f", 64)}
	code, b = call(t, http.MethodPost, v.AgentURL+quantix.PathEvents(n.ID), n.Secret, evs)
	decodeInto(t, b, &eack)
	if code != 200 || !eack.FullSync {
		t.Errorf("events with a mismatching hash: %d %s, want full_sync", code, b)
	}

	// The history tells the story.
	var kinds []string
	for _, e := range v.NodeEvents(t, n.ID) {
		if strings.HasPrefix(e.Kind, "vm_") || strings.HasPrefix(e.Kind, "pool_") {
			kinds = append(kinds, e.Kind)
		}
	}
	want := "vm_lost vm_found pool_lost vm_lost pool_found pool_lost"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("inventory history = %q, want %q", got, want)
	}
}
