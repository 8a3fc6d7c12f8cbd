package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

// lab is a real vDC on a fresh database with qx-ctl pointed at it through the
// environment, as an operator's shell would be.
type lab struct {
	t      *testing.T
	v      *vdctest.VDC
	vdcLog *syncbuf.Buffer

	seen syncbuf.Buffer // everything qx-ctl printed, checked for the admin token
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: needs PostgreSQL and a vDC")
	}
	log := &syncbuf.Buffer{}
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute, Log: log})
	l := &lab{t: t, v: v, vdcLog: log}
	t.Setenv(envURL, v.URL)
	t.Setenv(envToken, v.AdminToken)
	t.Setenv(envTokenFile, "")
	t.Cleanup(func() {
		if strings.Contains(l.seen.String(), v.AdminToken) {
			t.Errorf("qx-ctl printed the admin token")
		}
		if strings.Contains(log.String(), v.AdminToken) {
			t.Errorf("the vDC log holds the admin token")
		}
		if t.Failed() {
			t.Logf("vDC log:\n%s", log.String())
		}
	})
	return l
}

// result is one qx-ctl run.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%sstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs qx-ctl's run with stdin not a terminal.
func (l *lab) ctl(args ...string) result {
	return l.ctlIn(strings.NewReader(""), args...)
}

func (l *lab) ctlIn(stdin io.Reader, args ...string) result {
	l.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, args, stdin, &out, &errb)
	l.record(out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

func (l *lab) record(s ...string) {
	for _, x := range s {
		l.seen.WriteString(x)
	}
}

// must runs qx-ctl and fails the test unless it exits 0.
func (l *lab) must(args ...string) result {
	l.t.Helper()
	r := l.ctl(args...)
	if r.code != 0 {
		l.t.Fatalf("qx-ctl %q: %s", args, r)
	}
	return r
}

// decodeStrict decodes s into v refusing unknown fields: the JSON output is exactly
// the quantix types.
func decodeStrict(t *testing.T, s string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %T from %q: %v", v, s, err)
	}
}

// agentNode is a simulated agent: it registers, heartbeats and reports state
// through the real API, as qx-node does.
type agentNode struct {
	Hostname, ID, Secret, MachineID, IP string
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newUUID() string {
	h := randHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// call sends body with a bearer token and decodes the answer into out (unless nil);
// it returns the status.
func call(t *testing.T, method, url, bearer string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := vdctest.ClientFor(url).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, url, data, err)
		}
	}
	return resp.StatusCode
}

// register registers a new node with joinToken ("" = the lab's static token) and
// fails unless the vDC answers want.
func (l *lab) register(hostname, ip, joinToken string, want int) *agentNode {
	l.t.Helper()
	if joinToken == "" {
		joinToken = l.v.JoinToken
	}
	n := &agentNode{Hostname: hostname, Secret: randHex(32), MachineID: newUUID(), IP: ip}
	var r quantix.RegisterResponse
	code := call(l.t, http.MethodPost, l.v.AgentURL+quantix.PathRegister, joinToken, quantix.RegisterRequest{
		Hostname: hostname, MachineID: n.MachineID, NodeSecret: n.Secret, ManagementIP: ip, AgentVersion: "test-1",
		CPU: &quantix.CPUInfo{Model: "qemu64", Sockets: 1, Cores: 4, Threads: 4}, MemoryBytes: 8 << 30,
		Labels:     map[string]string{"rack": "r-" + hostname},
		Hypervisor: &quantix.Hypervisor{State: quantix.HypervisorAvailable, URI: "qemu:///system", Version: "9.0.0"},
	}, &r)
	if code != want {
		l.t.Fatalf("register %s: HTTP %d, want %d", hostname, code, want)
	}
	n.ID = r.NodeID
	return n
}

// heartbeat sends one heartbeat and returns the status.
func (l *lab) heartbeat(n *agentNode, cpu float64, memUsed int64) int {
	l.t.Helper()
	return call(l.t, http.MethodPost, l.v.AgentURL+quantix.PathHeartbeat(n.ID), n.Secret,
		quantix.HeartbeatRequest{ManagementIP: n.IP, CPUPercent: &cpu, MemoryUsedBytes: &memUsed}, nil)
}

// putState reports the node's full state.
func (l *lab) putState(n *agentNode, vms []quantix.VM, pools []quantix.StoragePool) {
	l.t.Helper()
	st := quantix.NodeState{VMs: vms, StoragePools: pools, StateHash: quantix.StateHash(vms, pools)}
	if code := call(l.t, http.MethodPut, l.v.AgentURL+quantix.PathState(n.ID), n.Secret, st, nil); code != http.StatusOK {
		l.t.Fatalf("PUT state of %s: HTTP %d", n.Hostname, code)
	}
}

// fleet is the registry most tests start from.
type fleet struct {
	a, b, c *agentNode
	web, db quantix.VM
	old     quantix.VM // on hv-b, then lost
	evil    quantix.VM // on hv-b, a name full of control characters
}

const evilName = "evil\x1b[31m\tname\n"

// seed registers hv-a (2 VMs, a pool, a heartbeat with load), hv-b (a VM and a
// pool that went missing, so lost, and a VM with a hostile name) and hv-c (nothing).
func (l *lab) seed() fleet {
	l.t.Helper()
	f := fleet{
		web:  quantix.VM{UUID: newUUID(), Name: "web", PowerState: quantix.PowerRunning, VCPUs: 2, MemoryBytes: 2 << 30},
		db:   quantix.VM{UUID: newUUID(), Name: "db", PowerState: quantix.PowerShutoff, VCPUs: 4, MemoryBytes: 6 << 30},
		old:  quantix.VM{UUID: newUUID(), Name: "old", PowerState: quantix.PowerRunning, VCPUs: 1, MemoryBytes: 1 << 30},
		evil: quantix.VM{UUID: newUUID(), Name: evilName, PowerState: quantix.PowerPaused, VCPUs: 1, MemoryBytes: 512 << 20},
	}
	// Registered out of order: tables sort by hostname.
	f.c = l.register("hv-c", "10.0.0.13", "", http.StatusCreated)
	f.a = l.register("hv-a", "10.0.0.11", "", http.StatusCreated)
	f.b = l.register("hv-b", "10.0.0.12", "", http.StatusCreated)
	if code := l.heartbeat(f.a, 12.4, 3<<29); code != http.StatusOK { // 1.5 GiB used
		l.t.Fatalf("heartbeat hv-a: HTTP %d", code)
	}
	images := quantix.StoragePool{Name: "images", Type: "dir", Path: "/var/lib/quantix/images", State: "running", CapacityBytes: 100 << 30, AvailableBytes: 40 << 30}
	scratch := quantix.StoragePool{Name: "scratch", Type: "dir", Path: "/scratch", State: "running", CapacityBytes: 10 << 30, AvailableBytes: 10 << 30}
	l.putState(f.a, []quantix.VM{f.web, f.db}, []quantix.StoragePool{{Name: "default", Type: "dir", Path: "/var/lib/libvirt/images",
		State: "running", CapacityBytes: 50 << 30, AvailableBytes: 20 << 30}})
	l.putState(f.b, []quantix.VM{f.old, f.evil}, []quantix.StoragePool{images, scratch})
	l.putState(f.b, []quantix.VM{f.evil}, []quantix.StoragePool{images}) // old and scratch are lost
	return f
}

// agesRE matches the ages in tables, which move between two runs.
var agesRE = regexp.MustCompile(`\b\d+[smhd] ago\b`)

func stripAges(s string) string { return agesRE.ReplaceAllString(s, "N ago") }

// closedPort returns a loopback URL nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// tableRows splits a table into its header and rows of cells, using the header's
// column starts: it fails t when a row's cells do not start where the header's do.
func tableRows(t *testing.T, out string) (header []string, rows [][]string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("no table in %q", out)
	}
	head := lines[0]
	var starts []int
	for i := 0; i < len(head); i++ {
		if head[i] != ' ' && (i == 0 || (i >= 2 && head[i-1] == ' ' && head[i-2] == ' ')) {
			starts = append(starts, i)
		}
	}
	cut := func(line string) []string {
		var cells []string
		for k, s := range starts {
			end := len(line)
			if k+1 < len(starts) && starts[k+1] <= len(line) {
				end = starts[k+1]
			}
			if s >= len(line) {
				t.Fatalf("row %q ends before column %d of header %q", line, k, head)
			}
			if line[s] == ' ' || (s > 0 && line[s-1] != ' ') {
				t.Fatalf("row %q: column %d does not start at offset %d like header %q", line, k, s, head)
			}
			cells = append(cells, strings.TrimSpace(line[s:end]))
		}
		return cells
	}
	header = cut(head)
	for _, line := range lines[1:] {
		rows = append(rows, cut(line))
	}
	return header, rows
}

// column returns the cells of column name.
func column(t *testing.T, header []string, rows [][]string, name string) []string {
	t.Helper()
	for i, h := range header {
		if h == name {
			var out []string
			for _, r := range rows {
				out = append(out, r[i])
			}
			return out
		}
	}
	t.Fatalf("no column %q in %q", name, header)
	return nil
}
