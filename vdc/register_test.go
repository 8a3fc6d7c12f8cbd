package vdc_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
}

func TestRegisterAndHeartbeatSmoke(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("Node-1.lab")
	r := mustRegister(t, v, n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
	if r.HeartbeatIntervalSeconds != 2 {
		t.Errorf("heartbeat_interval_seconds = %d, want 2", r.HeartbeatIntervalSeconds)
	}
	code, hb, b := heartbeat(t, v, n, quantix.HeartbeatRequest{})
	if code != http.StatusOK || !hb.FullSync {
		t.Fatalf("heartbeat: %d %s, want 200 with full_sync (no full state yet)", code, b)
	}
	nodes := v.Nodes(t)
	if len(nodes) != 1 {
		t.Fatalf("nodes = %+v, want 1", nodes)
	}
	got := nodes[0]
	if got.ID != n.ID || got.Hostname != "node-1.lab" || got.ManagementIP != "10.0.0.5" || got.Phase != quantix.PhaseReady ||
		got.MachineID != n.MachineID || got.AgentVersion != "test-1" || got.LastHeartbeat == nil ||
		got.CPU == nil || got.CPU.Cores != 2 || got.MemoryBytes != 4<<30 || got.Labels["rack"] != "r1" ||
		got.Hypervisor.State != quantix.HypervisorUnknown {
		t.Errorf("node = %+v", got)
	}
}

// TestRegistrationRules walks every rule of docs/design.md §4 in order on one vDC.
func TestRegistrationRules(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	a := newNode("host-a")
	var id string

	steps := []struct {
		name     string
		do       func() (int, quantix.RegisterResponse, []byte)
		wantCode int
		wantKind string
		wantMsg  string // in the error
		sameID   bool
	}{
		{name: "new hostname without token", wantCode: 401, wantMsg: "needs a valid join token",
			do: func() (int, quantix.RegisterResponse, []byte) { return register(t, v, a, "") }},
		{name: "new hostname with unknown token", wantCode: 401, wantMsg: "not known",
			do: func() (int, quantix.RegisterResponse, []byte) { return register(t, v, a, "not-a-token-0123456789") }},
		{name: "rule 1: new hostname with token", wantCode: 201, wantKind: quantix.RegistrationRegistered,
			do: func() (int, quantix.RegisterResponse, []byte) { return register(t, v, a, v.JoinToken) }},
		{name: "rule 2: same secret, no token, new IP, upper case", wantCode: 200, wantKind: quantix.RegistrationReregistered, sameID: true,
			do: func() (int, quantix.RegisterResponse, []byte) {
				b := *a
				b.Hostname, b.IP = "HOST-A", "10.0.0.99"
				return register(t, v, &b, "")
			}},
		{name: "rule 2: same secret with token does not re-enrol", wantCode: 200, wantKind: quantix.RegistrationReregistered, sameID: true,
			do: func() (int, quantix.RegisterResponse, []byte) { return register(t, v, a, v.JoinToken) }},
		{name: "rule 3 without token: reinstalled machine refused", wantCode: 401, wantMsg: "re-enrolment needs a valid join token",
			do: func() (int, quantix.RegisterResponse, []byte) {
				b := *a
				b.Secret = newSecret()
				return register(t, v, &b, "")
			}},
		{name: "rule 3: same machine, new secret, token", wantCode: 200, wantKind: quantix.RegistrationReenrolled, sameID: true,
			do: func() (int, quantix.RegisterResponse, []byte) {
				a.Secret = newSecret()
				return register(t, v, a, v.JoinToken)
			}},
		{name: "rule 4: other machine, other secret, token", wantCode: 409, wantMsg: "delete node",
			do: func() (int, quantix.RegisterResponse, []byte) {
				b := newNode("host-a")
				return register(t, v, b, v.JoinToken)
			}},
		{name: "rule 4 without token", wantCode: 409, wantMsg: "delete node",
			do: func() (int, quantix.RegisterResponse, []byte) {
				b := newNode("host-a")
				return register(t, v, b, "")
			}},
	}
	for _, s := range steps {
		code, r, b := s.do()
		if code != s.wantCode {
			t.Fatalf("%s: status %d %s, want %d", s.name, code, b, s.wantCode)
		}
		if code >= 300 {
			if msg := errMsg(t, b); !strings.Contains(msg, s.wantMsg) {
				t.Errorf("%s: error %q does not say %q", s.name, msg, s.wantMsg)
			}
			if s.wantCode == 409 && !strings.Contains(string(b), id) {
				t.Errorf("%s: error %s does not name node %s", s.name, b, id)
			}
			continue
		}
		if r.Registration != s.wantKind {
			t.Errorf("%s: registration %q, want %q", s.name, r.Registration, s.wantKind)
		}
		if s.sameID && r.NodeID != id {
			t.Errorf("%s: node_id %s, want the same %s", s.name, r.NodeID, id)
		}
		id = r.NodeID
	}

	// After all that: one row, re-enrolled secret only.
	nodes := v.Nodes(t)
	if len(nodes) != 1 || nodes[0].ID != id || nodes[0].ManagementIP != "10.0.0.5" {
		t.Fatalf("nodes = %+v, want only %s at 10.0.0.5", nodes, id)
	}
	old := *a
	old.Secret = newSecret()
	if code, _, b := heartbeat(t, v, &old, quantix.HeartbeatRequest{}); code != http.StatusUnauthorized {
		t.Errorf("heartbeat with a replaced secret: %d %s, want 401", code, b)
	}
	if code, _, b := heartbeat(t, v, a, quantix.HeartbeatRequest{}); code != http.StatusOK {
		t.Errorf("heartbeat with the re-enrolled secret: %d %s", code, b)
	}
	var kinds []string
	for _, e := range v.NodeEvents(t, id) {
		kinds = append(kinds, e.Kind)
	}
	want := []string{"registered", "reregistered", "reregistered", "reenrolled", "takeover_refused", "takeover_refused"}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Errorf("node history kinds (-want +got):\n%s", diff)
	}
}

func TestJoinTokens(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	one := v.NewJoinToken(t, time.Hour, 1)
	if one.Token == "" || one.UsesLeft != 1 || one.ID == "" {
		t.Fatalf("join token = %+v", one)
	}
	a, b := newNode("tok-a"), newNode("tok-b")
	mustRegister(t, v, a, one.Token, 201, quantix.RegistrationRegistered)
	// Re-registration does not need (or consume) the token.
	mustRegister(t, v, a, one.Token, 200, quantix.RegistrationReregistered)
	code, _, body := register(t, v, b, one.Token)
	if code != 401 || !strings.Contains(errMsg(t, body), "no uses left") {
		t.Errorf("second use of a one-use token: %d %s, want 401 naming no uses left", code, body)
	}

	short := v.NewJoinToken(t, time.Second, 5)
	time.Sleep(1100 * time.Millisecond)
	code, _, body = register(t, v, b, short.Token)
	if code != 401 || !strings.Contains(errMsg(t, body), "expired") {
		t.Errorf("expired token: %d %s, want 401 naming expiry", code, body)
	}

	// A 3-use token raced by 10 new hosts admits exactly 3.
	three := v.NewJoinToken(t, time.Hour, 3)
	var wg sync.WaitGroup
	codes := make([]int, 10)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = register(t, v, newNode("race-"+string(rune('a'+i))), three.Token)
		}()
	}
	wg.Wait()
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	if count[201] != 3 || count[401] != 7 {
		t.Errorf("10 registrations with a 3-use token: status counts %v, want 3x201 7x401", count)
	}

	for _, bad := range []struct {
		body string
		msg  string
	}{
		{`{"ttl_seconds": -1}`, "ttl_seconds"},
		{`{"uses": -2}`, "uses"},
		{`{"ttl_seconds": 999999999}`, "ttl_seconds"},
		{`{"usage": 1}`, `unknown field "usage"`},
	} {
		code, b := call(t, http.MethodPost, v.URL+quantix.PathJoinTokens, v.AdminToken, bad.body)
		if code != 400 || !strings.Contains(errMsg(t, b), bad.msg) {
			t.Errorf("POST join-tokens %s: %d %s, want 400 naming %s", bad.body, code, b, bad.msg)
		}
	}
}

func TestConcurrentRegistrationsOneRow(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("storm")
	const N = 100
	var wg sync.WaitGroup
	type result struct {
		code int
		r    quantix.RegisterResponse
		body []byte
	}
	res := make([]result, N)
	start := make(chan struct{})
	for i := range N {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c := *n
			res[i].code, res[i].r, res[i].body = register(t, v, &c, v.JoinToken)
		}()
	}
	close(start)
	wg.Wait()
	ids := map[string]bool{}
	created := 0
	for _, r := range res {
		switch {
		case r.code == 201 && r.r.Registration == quantix.RegistrationRegistered:
			created++
		case r.code == 200 && r.r.Registration == quantix.RegistrationReregistered:
		default:
			t.Fatalf("concurrent registration: %d %s", r.code, r.body)
		}
		ids[r.r.NodeID] = true
	}
	if created != 1 || len(ids) != 1 {
		t.Errorf("%d registrations: %d created, %d node ids; want 1 and 1", N, created, len(ids))
	}
	if nodes := v.Nodes(t); len(nodes) != 1 {
		t.Errorf("%d rows after %d concurrent registrations of one hostname, want 1", len(nodes), N)
	}

	// Twenty different machines racing for one new hostname: one wins, the rest
	// are refused with 409 naming the winner.
	var winners sync.Map
	codes := make([]int, 20)
	bodies := make([][]byte, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, r, b := register(t, v, newNode("contested"), v.JoinToken)
			codes[i], bodies[i] = c, b
			if c == 201 {
				winners.Store(r.NodeID, true)
			}
		}()
	}
	wg.Wait()
	var winner string
	n201 := 0
	winners.Range(func(k, _ any) bool { winner = k.(string); n201++; return true })
	if n201 != 1 {
		t.Fatalf("contested hostname: %d winners, want 1 (codes %v)", n201, codes)
	}
	for i, c := range codes {
		if c != 201 && (c != 409 || !strings.Contains(string(bodies[i]), winner)) {
			t.Errorf("contested hostname loser: %d %s, want 409 naming %s", c, bodies[i], winner)
		}
	}
}

func TestManagementIPForms(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("ipforms")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	for _, tc := range []struct{ in, want string }{
		{"10.0.0.7", "10.0.0.7"},
		{"10.0.0.8:8080", "10.0.0.8"},
		{"[2001:db8::5]:8443", "2001:db8::5"},
		{"2001:db8::6", "2001:db8::6"},
		{"[2001:db8::7]", "2001:db8::7"},
		{"::ffff:10.0.0.9", "10.0.0.9"},
		{"fe80::1%eth0", "fe80::1"},
	} {
		code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{ManagementIP: tc.in})
		if code != 200 {
			t.Errorf("heartbeat management_ip %q: %d %s", tc.in, code, b)
			continue
		}
		if got := v.Node(t, n.ID).ManagementIP; got != tc.want {
			t.Errorf("heartbeat management_ip %q stored %q, want %q", tc.in, got, tc.want)
		}
		c := *n
		c.IP = tc.in
		mustRegister(t, v, &c, "", 200, quantix.RegistrationReregistered)
		if got := v.Node(t, n.ID).ManagementIP; got != tc.want {
			t.Errorf("register management_ip %q stored %q, want %q", tc.in, got, tc.want)
		}
	}
	// An address change is recorded in the history.
	found := false
	for _, e := range v.NodeEvents(t, n.ID) {
		if e.Kind == "management_ip" && strings.Contains(e.Message, "10.0.0.7 -> 10.0.0.8") {
			found = true
		}
	}
	if !found {
		t.Errorf("no management_ip event for 10.0.0.7 -> 10.0.0.8 in %+v", v.NodeEvents(t, n.ID))
	}
}

// nodeSnapshot ignores nothing: bad input must leave the row exactly as it was.
func nodeSnapshot(t *testing.T, v *vdctest.VDC) []quantix.Node { return v.Nodes(t) }

func TestBadInputChangesNothing(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	n := newNode("victim")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	before := nodeSnapshot(t, v)
	events := len(v.NodeEvents(t, n.ID))

	huge := `{"management_ip":"10.0.0.5","state_hash":"` + strings.Repeat("a", quantix.MaxRequestBytes) + `"}`
	reg := func(mut func(m map[string]any)) map[string]any {
		m := map[string]any{"hostname": n.Hostname, "machine_id": n.MachineID, "node_secret": n.Secret,
			"management_ip": "10.0.0.66", "agent_version": "evil"}
		mut(m)
		return m
	}
	cases := []struct {
		name     string
		method   string
		path     string
		token    string
		body     any
		wantCode int
		wantMsg  string
	}{
		{"register invalid ip", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["management_ip"] = "300.1.2.3" }), 400, "management_ip"},
		{"register ip garbage", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["management_ip"] = "node.example" }), 400, "management_ip"},
		{"register ip bad port", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["management_ip"] = "10.0.0.1:99999" }), 400, "management_ip"},
		{"register ip unspecified", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["management_ip"] = "0.0.0.0" }), 400, "management_ip"},
		{"register ip empty", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["management_ip"] = "" }), 400, "management_ip"},
		{"register empty hostname", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["hostname"] = "" }), 400, "hostname"},
		{"register oversized hostname", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["hostname"] = strings.Repeat("a.", 127) + "b" }), 400, "hostname"},
		{"register oversized label", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["hostname"] = strings.Repeat("a", 64) }), 400, "hostname"},
		{"register hostname underscore", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["hostname"] = "victim_2" }), 400, "hostname"},
		{"register unknown field", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["node_id"] = "x" }), 400, `unknown field "node_id"`},
		{"register wrong type", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["memory_bytes"] = "lots" }), 400, "memory_bytes"},
		{"register short secret", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["node_secret"] = "abc" }), 400, "node_secret"},
		{"register empty machine_id", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["machine_id"] = "" }), 400, "machine_id"},
		{"register NUL in agent_version", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["agent_version"] = "a\x00b" }), 400, "agent_version"},
		{"register negative memory", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["memory_bytes"] = -1 }), 400, "memory_bytes"},
		{"register bad hypervisor", "POST", quantix.PathRegister, v.JoinToken, reg(func(m map[string]any) { m["hypervisor"] = map[string]string{"state": "great"} }), 400, "hypervisor.state"},
		{"register not JSON", "POST", quantix.PathRegister, v.JoinToken, "{hostname:", 400, "JSON"},
		{"register empty body", "POST", quantix.PathRegister, v.JoinToken, "", 400, "empty"},
		{"register array body", "POST", quantix.PathRegister, v.JoinToken, "[1]", 400, "want an object"},
		{"register two values", "POST", quantix.PathRegister, v.JoinToken, `{"hostname":"x"} {}`, 400, "more than one"},
		{"register over 1 MiB", "POST", quantix.PathRegister, v.JoinToken, `{"hostname":"` + strings.Repeat("a", quantix.MaxRequestBytes) + `"}`, 413, "larger than 1048576"},
		{"register new host with a wrong join token", "POST", quantix.PathRegister, "wrong-token-0123456789", reg(func(m map[string]any) { m["hostname"] = "intruder"; m["node_secret"] = newSecret() }), 401, "join token is not known"},
		{"register new host without a join token", "POST", quantix.PathRegister, "", reg(func(m map[string]any) { m["hostname"] = "intruder"; m["node_secret"] = newSecret() }), 401, "needs a valid join token"},
		{"register new host with the admin token", "POST", quantix.PathRegister, v.AdminToken, reg(func(m map[string]any) { m["hostname"] = "intruder"; m["node_secret"] = newSecret() }), 401, "join token is not known"},
		{"re-enrol with a wrong join token", "POST", quantix.PathRegister, "wrong-token-0123456789", reg(func(m map[string]any) { m["node_secret"] = newSecret() }), 401, "re-enrolment needs a valid join token"},
		{"register wrong secret other machine", "POST", quantix.PathRegister, "wrong-token-0123456789", reg(func(m map[string]any) { m["node_secret"] = newSecret(); m["machine_id"] = "other" }), 409, n.ID},
		{"heartbeat wrong secret", "POST", quantix.PathHeartbeat(n.ID), newSecret(), quantix.HeartbeatRequest{ManagementIP: "10.0.0.66"}, 401, "wrong node_secret"},
		{"heartbeat no secret", "POST", quantix.PathHeartbeat(n.ID), "", quantix.HeartbeatRequest{ManagementIP: "10.0.0.66"}, 401, "missing node secret"},
		{"heartbeat admin token is not a node secret", "POST", quantix.PathHeartbeat(n.ID), v.AdminToken, quantix.HeartbeatRequest{ManagementIP: "10.0.0.66"}, 401, "wrong node_secret"},
		{"heartbeat invalid ip", "POST", quantix.PathHeartbeat(n.ID), n.Secret, quantix.HeartbeatRequest{ManagementIP: "10.0.0"}, 400, "management_ip"},
		{"heartbeat unknown field", "POST", quantix.PathHeartbeat(n.ID), n.Secret, `{"management_ip":"10.0.0.66","uptime":3}`, 400, `unknown field "uptime"`},
		{"heartbeat negative cpu", "POST", quantix.PathHeartbeat(n.ID), n.Secret, `{"management_ip":"10.0.0.66","cpu_percent":-3}`, 400, "cpu_percent"},
		{"heartbeat over 1 MiB", "POST", quantix.PathHeartbeat(n.ID), n.Secret, huge, 413, "larger than"},
		{"heartbeat bad node id", "POST", quantix.PathHeartbeat("not-a-uuid"), n.Secret, quantix.HeartbeatRequest{ManagementIP: "10.0.0.66"}, 400, "not a UUID"},
		{"heartbeat unknown node", "POST", quantix.PathHeartbeat(newMachineID()), n.Secret, quantix.HeartbeatRequest{ManagementIP: "10.0.0.66"}, 404, "register again"},
		{"state wrong secret", "PUT", quantix.PathState(n.ID), newSecret(), quantix.NodeState{}, 401, "wrong node_secret"},
		{"state bad vm uuid", "PUT", quantix.PathState(n.ID), n.Secret, quantix.NodeState{VMs: []quantix.VM{{UUID: "x", Name: "a", PowerState: "running"}}}, 400, "vms[0].uuid"},
		{"state bad power state", "PUT", quantix.PathState(n.ID), n.Secret, quantix.NodeState{VMs: []quantix.VM{{UUID: newMachineID(), Name: "a", PowerState: "flying"}}}, 400, "vms[0].power_state"},
		{"state bad hash", "PUT", quantix.PathState(n.ID), n.Secret, quantix.NodeState{StateHash: "abc"}, 400, "state_hash"},
		{"events empty", "POST", quantix.PathEvents(n.ID), n.Secret, quantix.NodeEvents{}, 400, "events is empty"},
		{"events bad kind", "POST", quantix.PathEvents(n.ID), n.Secret, `{"events":[{"kind":"disk","action":"upsert"}]}`, 400, "events[0].kind"},
		{"admin no token", "GET", quantix.PathNodes, "", nil, 401, "missing admin token"},
		{"admin wrong token", "GET", quantix.PathNodes, "nope", nil, 401, "wrong admin token"},
		{"admin node secret is not admin", "DELETE", quantix.PathNode(n.ID), n.Secret, nil, 401, "wrong admin token"},
		{"admin join token is not admin", "POST", quantix.PathJoinTokens, v.JoinToken, quantix.JoinTokenRequest{}, 401, "wrong admin token"},
		{"maintenance missing field", "PUT", quantix.PathNode(n.ID) + "/maintenance", v.AdminToken, `{}`, 400, "maintenance is missing"},
		{"delete unknown node", "DELETE", quantix.PathNode(newMachineID()), v.AdminToken, nil, 404, "not found"},
		{"unknown endpoint", "GET", "/api/v1/nope", "", nil, 404, "no such endpoint"},
	}
	for _, tc := range cases {
		code, b := call(t, tc.method, v.AgentURL+tc.path, tc.token, tc.body)
		if code != tc.wantCode {
			t.Errorf("%s: status %d %s, want %d", tc.name, code, b, tc.wantCode)
			continue
		}
		if msg := errMsg(t, b); !strings.Contains(msg, tc.wantMsg) {
			t.Errorf("%s: error %q does not name %q", tc.name, msg, tc.wantMsg)
		}
	}
	after := nodeSnapshot(t, v)
	if diff := cmp.Diff(before, after, cmpopts.EquateApproxTime(0)); diff != "" {
		t.Errorf("bad input changed the registry (-before +after):\n%s", diff)
	}
	// Only the two refused takeovers were recorded.
	if got := len(v.NodeEvents(t, n.ID)); got != events+1 {
		t.Errorf("history grew from %d to %d events, want only the refused takeover", events, got)
	}
	if len(v.VMs(t)) != 0 {
		t.Errorf("bad state PUTs stored VMs: %+v", v.VMs(t))
	}
}

func TestDeletedNode(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("gone")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	if code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{}); code != 200 {
		t.Fatalf("heartbeat: %d %s", code, b)
	}
	v.DeleteNode(t, n.ID)
	code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{})
	if code != http.StatusNotFound || !strings.Contains(errMsg(t, b), "register again") {
		t.Errorf("heartbeat of a deleted node: %d %s, want 404 telling it to register again", code, b)
	}
	if code, b := call(t, http.MethodPut, v.AgentURL+quantix.PathState(n.ID), n.Secret, quantix.NodeState{}); code != 404 {
		t.Errorf("state PUT of a deleted node: %d %s, want 404", code, b)
	}
	v.Do(t, http.MethodGet, quantix.PathNode(n.ID), nil, nil, http.StatusNotFound)
	// Its history stays, ending with the deletion.
	evs := v.NodeEvents(t, n.ID)
	if len(evs) == 0 || evs[len(evs)-1].Kind != "deleted" {
		t.Errorf("history of a deleted node = %+v, want it to end with deleted", evs)
	}
	// The agent registers again: a new node (new id) with a join token.
	old := n.ID
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	if n.ID == old {
		t.Errorf("re-registration after delete kept node_id %s", old)
	}
}
