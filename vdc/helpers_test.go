package vdc_test

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

func newSecret() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newMachineID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// node is a simulated agent identity.
type node struct {
	Hostname, MachineID, Secret, IP string
	ID                              string
	Memory                          int64 // 0: 4 GiB
}

func newNode(hostname string) *node {
	return &node{Hostname: hostname, MachineID: newMachineID(), Secret: newSecret(), IP: "10.0.0.5"}
}

func (n *node) req() quantix.RegisterRequest {
	return quantix.RegisterRequest{Hostname: n.Hostname, MachineID: n.MachineID, NodeSecret: n.Secret,
		ManagementIP: n.IP, AgentVersion: "test-1", CPU: &quantix.CPUInfo{Model: "qemu", Sockets: 1, Cores: 2, Threads: 2},
		MemoryBytes: cmp.Or(n.Memory, 4<<30), Labels: map[string]string{"rack": "r1"}}
}

// call sends body (marshalled unless it is []byte or string) with a bearer token and
// returns the status and the raw answer.
func call(t testing.TB, method, url, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := vdctest.ClientFor(url).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func decodeInto(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func errMsg(t testing.TB, b []byte) string {
	t.Helper()
	var e quantix.Error
	decodeInto(t, b, &e)
	if e.Error == "" {
		t.Fatalf("error body %s has no error message", b)
	}
	return e.Error
}

// register registers n with token and returns status and response.
func register(t testing.TB, v *vdctest.VDC, n *node, token string) (int, quantix.RegisterResponse, []byte) {
	t.Helper()
	code, b := call(t, http.MethodPost, v.AgentURL+quantix.PathRegister, token, n.req())
	var r quantix.RegisterResponse
	if code < 300 {
		decodeInto(t, b, &r)
		n.ID = r.NodeID
	}
	return code, r, b
}

func mustRegister(t testing.TB, v *vdctest.VDC, n *node, token string, wantCode int, wantKind string) quantix.RegisterResponse {
	t.Helper()
	code, r, b := register(t, v, n, token)
	if code != wantCode || r.Registration != wantKind {
		t.Fatalf("register %s: %d %s, want %d %s", n.Hostname, code, b, wantCode, wantKind)
	}
	return r
}

func heartbeat(t testing.TB, v *vdctest.VDC, n *node, req quantix.HeartbeatRequest) (int, quantix.HeartbeatResponse, []byte) {
	t.Helper()
	if req.ManagementIP == "" {
		req.ManagementIP = n.IP
	}
	code, b := call(t, http.MethodPost, v.AgentURL+quantix.PathHeartbeat(n.ID), n.Secret, req)
	var r quantix.HeartbeatResponse
	if code == http.StatusOK {
		decodeInto(t, b, &r)
	}
	return code, r, b
}
