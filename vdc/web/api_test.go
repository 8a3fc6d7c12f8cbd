package web_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

// agent is a registered simulated node.
type agent struct {
	ID, Hostname, Secret string
}

// registerAgent registers hostname through the real plain API with the join token.
func registerAgent(t testing.TB, v *vdctest.VDC, client *http.Client, hostname string) agent {
	t.Helper()
	a := agent{Hostname: hostname, Secret: randHex(32)}
	req := quantix.RegisterRequest{Hostname: hostname, MachineID: randHex(8), NodeSecret: a.Secret,
		ManagementIP: "10.1.2.3", AgentVersion: "0.9.1", MemoryBytes: 64 << 30,
		CPU:        &quantix.CPUInfo{Model: "AMD EPYC 7302P", Sockets: 1, Cores: 16, Threads: 32},
		Hypervisor: &quantix.Hypervisor{State: quantix.HypervisorAvailable, Version: "9.0.0", URI: "qemu:///system"}}
	var res quantix.RegisterResponse
	agentCall(t, client, http.MethodPost, v.AgentURL+quantix.PathRegister, v.JoinToken, req, &res, http.StatusCreated)
	a.ID = res.NodeID
	return a
}

func (a agent) heartbeat(t testing.TB, v *vdctest.VDC, client *http.Client) {
	t.Helper()
	cpu, mem := 23.5, int64(20<<30)
	agentCall(t, client, http.MethodPost, v.AgentURL+quantix.PathHeartbeat(a.ID), a.Secret,
		quantix.HeartbeatRequest{ManagementIP: "10.1.2.3", CPUPercent: &cpu, MemoryUsedBytes: &mem}, nil, http.StatusOK)
}

func (a agent) putState(t testing.TB, v *vdctest.VDC, client *http.Client, vms []quantix.VM, pools []quantix.StoragePool) {
	t.Helper()
	st := quantix.NodeState{VMs: vms, StoragePools: pools, StateHash: quantix.StateHash(vms, pools)}
	agentCall(t, client, http.MethodPut, v.AgentURL+quantix.PathState(a.ID), a.Secret, st, nil, http.StatusOK)
}

func agentCall(t testing.TB, client *http.Client, method, url, bearer string, body, out any, want int) {
	t.Helper()
	code, b := rawCall(t, client, method, url, bearer, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, code, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
}

func rawCall(t testing.TB, client *http.Client, method, url, bearer string, body any) (int, []byte) {
	t.Helper()
	if c := vdctest.ClientFor(url); c != http.DefaultClient {
		client = c // an agent endpoint: TLS with the pin, as agents do
	}
	var rd io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	r, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := client.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func vmUUID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// TestNodesPagination: GET /api/v1/nodes's phase, q, limit and offset; the
// unparameterized call still returns every node without the page fields.
func TestNodesPagination(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	c := http.DefaultClient
	var ids []string
	for i := range 25 {
		a := registerAgent(t, v, c, fmt.Sprintf("rack%d-node%02d.lab", i%3, i))
		ids = append(ids, a.ID)
	}
	for _, id := range ids[:4] {
		v.SetMaintenance(t, id, true)
	}
	// rack1_ is not a wildcard: "_" is matched literally.
	registerAgent(t, v, c, "rack1x.lab")

	var all quantix.NodeList
	code, raw := rawCall(t, c, http.MethodGet, v.URL+quantix.PathNodes, v.AdminToken, nil)
	json.Unmarshal(raw, &all)
	if code != 200 || len(all.Nodes) != 26 || all.Total != nil || all.Counts != nil || strings.Contains(string(raw), `"total"`) {
		t.Errorf("unparameterized GET nodes: %d, %d nodes, total %v, counts %v; want every node and no page fields", code, len(all.Nodes), all.Total, all.Counts)
	}

	cases := []struct {
		query     string
		want      int // nodes in the page
		total     int
		first     string
		ready     int
		maint     int
		notReady0 bool
	}{
		{"limit=10", 10, 26, "rack0-node00.lab", 22, 4, true},
		{"limit=10&offset=20", 6, 26, "rack2-node08.lab", 22, 4, true},
		{"limit=10&offset=100", 0, 26, "", 22, 4, true},
		{"phase=maintenance", 4, 4, "rack0-node00.lab", 22, 4, true},
		{"phase=ready&limit=5", 5, 22, "rack0-node06.lab", 22, 4, true},
		{"q=RACK1", 9, 9, "rack1-node01.lab", 8, 1, true},
		{"q=rack1_", 0, 0, "", 0, 0, true},
		{"q=node1&phase=ready", 10, 10, "rack0-node12.lab", 10, 0, true},
		{"phase=disconnected", 0, 0, "", 22, 4, true},
	}
	for _, tc := range cases {
		var l quantix.NodeList
		agentCall(t, c, http.MethodGet, v.URL+quantix.PathNodes+"?"+tc.query, v.AdminToken, nil, &l, http.StatusOK)
		first := ""
		if len(l.Nodes) > 0 {
			first = l.Nodes[0].Hostname
		}
		if len(l.Nodes) != tc.want || l.Total == nil || *l.Total != tc.total || first != tc.first ||
			l.Counts[quantix.PhaseReady] != tc.ready || l.Counts[quantix.PhaseMaintenance] != tc.maint || len(l.Counts) != 4 {
			tot := -1
			if l.Total != nil {
				tot = *l.Total
			}
			t.Errorf("GET nodes?%s: %d nodes, total %d, first %q, counts %v; want %d, %d, %q, ready %d maintenance %d",
				tc.query, len(l.Nodes), tot, first, l.Counts, tc.want, tc.total, tc.first, tc.ready, tc.maint)
		}
		for i := 1; i < len(l.Nodes); i++ {
			if l.Nodes[i-1].Hostname >= l.Nodes[i].Hostname {
				t.Errorf("GET nodes?%s: not in hostname order at %d", tc.query, i)
			}
		}
	}
	for _, bad := range []struct{ query, want string }{
		{"phase=sleeping", "phase"},
		{"limit=0", "limit"},
		{"limit=1001", "limit"},
		{"offset=-1", "offset"},
		{"limit=ten", "limit"},
		{"phse=ready", `unknown query parameter \"phse\"`},
		{"q=" + strings.Repeat("a", 254), "q is 254 bytes"},
		{"limit=1&limit=2", "given 2 times"},
	} {
		code, b := rawCall(t, c, http.MethodGet, v.URL+quantix.PathNodes+"?"+bad.query, v.AdminToken, nil)
		if code != http.StatusBadRequest || !strings.Contains(string(b), bad.want) {
			t.Errorf("GET nodes?%s: %d %s, want 400 naming %q", bad.query, code, b, bad.want)
		}
	}
	// The TLS listener serves the same API to bearer clients.
	var l quantix.NodeList
	agentCall(t, v.HTTPSClient(t), http.MethodGet, v.UIURL+quantix.PathNodes+"?phase=maintenance", v.AdminToken, nil, &l, http.StatusOK)
	if len(l.Nodes) != 4 {
		t.Errorf("GET nodes over HTTPS: %d nodes, want 4", len(l.Nodes))
	}
}

// TestInventoryFilters: node_id, lost, limit and offset on /vms and /storage-pools.
func TestInventoryFilters(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	c := http.DefaultClient
	a := registerAgent(t, v, c, "inv-a")
	b := registerAgent(t, v, c, "inv-b")
	var vms []quantix.VM
	for i := range 5 {
		vms = append(vms, quantix.VM{UUID: vmUUID(i), Name: "vm" + strconv.Itoa(i), PowerState: quantix.PowerRunning, VCPUs: 2, MemoryBytes: 2 << 30})
	}
	pools := []quantix.StoragePool{{Name: "default", Type: "dir", State: "running", CapacityBytes: 100 << 30, AvailableBytes: 50 << 30},
		{Name: "fast", Type: "logical", State: "running"}}
	a.putState(t, v, c, vms, pools)
	a.putState(t, v, c, vms[:3], pools[:1]) // vm3, vm4 and pool "fast" are lost
	b.putState(t, v, c, []quantix.VM{{UUID: vmUUID(9), Name: "other", PowerState: quantix.PowerShutoff}}, nil)

	cases := []struct {
		query     string
		vms       []string
		vmTotal   string
		pools     []string
		poolTotal string
	}{
		{"", []string{"vm0", "vm1", "vm2", "vm3", "vm4", "other"}, "6", []string{"default", "fast"}, "2"},
		{"node_id=" + a.ID, []string{"vm0", "vm1", "vm2", "vm3", "vm4"}, "5", []string{"default", "fast"}, "2"},
		{"node_id=" + strings.ToUpper(b.ID), []string{"other"}, "1", nil, "0"},
		{"lost=true", []string{"vm3", "vm4"}, "2", []string{"fast"}, "1"},
		{"lost=false&node_id=" + a.ID, []string{"vm0", "vm1", "vm2"}, "3", []string{"default"}, "1"},
		{"limit=2&offset=2", []string{"vm2", "vm3"}, "6", nil, "2"},
		{"limit=2", []string{"vm0", "vm1"}, "6", []string{"default", "fast"}, "2"},
	}
	for _, tc := range cases {
		var vl quantix.VMList
		resp := getWithHeader(t, v, quantix.PathVMs+"?"+tc.query, &vl)
		var names []string
		for _, x := range vl.VMs {
			names = append(names, x.Name)
			if x.Lost != (x.Name == "vm3" || x.Name == "vm4") {
				t.Errorf("vm %s lost = %v", x.Name, x.Lost)
			}
		}
		if strings.Join(names, ",") != strings.Join(tc.vms, ",") || resp.Get("X-Total-Count") != tc.vmTotal {
			t.Errorf("GET vms?%s = %v (total %s), want %v (%s)", tc.query, names, resp.Get("X-Total-Count"), tc.vms, tc.vmTotal)
		}
		var pl quantix.PoolList
		resp = getWithHeader(t, v, quantix.PathPools+"?"+tc.query, &pl)
		names = nil
		for _, x := range pl.StoragePools {
			names = append(names, x.Name)
		}
		if strings.Join(names, ",") != strings.Join(tc.pools, ",") || resp.Get("X-Total-Count") != tc.poolTotal {
			t.Errorf("GET storage-pools?%s = %v (total %s), want %v (%s)", tc.query, names, resp.Get("X-Total-Count"), tc.pools, tc.poolTotal)
		}
	}
	// The newest events of a node, oldest first.
	all := v.NodeEvents(t, a.ID)
	var tail struct {
		Events []quantix.NodeEvent `json:"events"`
	}
	agentCall(t, c, http.MethodGet, v.URL+quantix.PathNode(a.ID)+"/events?limit=2", v.AdminToken, nil, &tail, http.StatusOK)
	if len(all) < 3 || len(tail.Events) != 2 || tail.Events[0].ID != all[len(all)-2].ID || tail.Events[1].ID != all[len(all)-1].ID {
		t.Errorf("events?limit=2 = %+v, want the last 2 of %+v", tail.Events, all)
	}
	if code, body := rawCall(t, c, http.MethodGet, v.URL+quantix.PathNode(a.ID)+"/events?limit=0", v.AdminToken, nil); code != http.StatusBadRequest {
		t.Errorf("events?limit=0: %d %s, want 400", code, body)
	}
	for _, bad := range []string{"node_id=nope", "lost=maybe", "limit=0", "host=a"} {
		if code, body := rawCall(t, c, http.MethodGet, v.URL+quantix.PathVMs+"?"+bad, v.AdminToken, nil); code != http.StatusBadRequest {
			t.Errorf("GET vms?%s: %d %s, want 400", bad, code, body)
		}
	}
}

func getWithHeader(t testing.TB, v *vdctest.VDC, path string, out any) http.Header {
	t.Helper()
	r, _ := http.NewRequest(http.MethodGet, v.URL+path, nil)
	r.Header.Set("Authorization", "Bearer "+v.AdminToken)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(b, out) != nil {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return resp.Header
}
