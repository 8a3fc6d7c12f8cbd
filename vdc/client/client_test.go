package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/client"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: needs PostgreSQL and a vDC")
	}
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

// register registers hostname as an agent would and returns its node id and secret.
func register(t *testing.T, v *vdctest.VDC, hostname string) (string, string) {
	t.Helper()
	secret := randHex(32)
	r, err := newClient(t, v.AgentURL, "").Register(context.Background(), v.JoinToken, quantix.RegisterRequest{Hostname: hostname,
		MachineID: newUUID(), NodeSecret: secret, ManagementIP: "10.0.0.7", AgentVersion: "test-1"})
	if err != nil || r.Registration != quantix.RegistrationRegistered {
		t.Fatalf("register %s: %+v, %v", hostname, r, err)
	}
	return r.NodeID, secret
}

func putState(t *testing.T, v *vdctest.VDC, id, secret string, vms []quantix.VM, pools []quantix.StoragePool) {
	t.Helper()
	body, _ := json.Marshal(quantix.NodeState{VMs: vms, StoragePools: pools, StateHash: quantix.StateHash(vms, pools)})
	req, _ := http.NewRequest(http.MethodPut, v.AgentURL+quantix.PathState(id), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := v.AgentClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT state: %s", resp.Status)
	}
}

func newClient(t *testing.T, base, token string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{URL: base, Token: token, HTTPClient: vdctest.ClientFor(base)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

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

func TestAgainstVDC(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	ctx := context.Background()
	c := newClient(t, v.URL+"/", v.AdminToken) // a trailing slash is dropped

	idA, secA := register(t, v, "hv-a")
	idB, _ := register(t, v, "hv-b")
	web := quantix.VM{UUID: newUUID(), Name: "web", PowerState: quantix.PowerRunning, VCPUs: 2, MemoryBytes: 2 << 30}
	pool := quantix.StoragePool{Name: "default", Type: "dir", State: "running", CapacityBytes: 10 << 30}
	putState(t, v, idA, secA, []quantix.VM{web}, []quantix.StoragePool{pool})

	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v.Nodes(t), nodes); diff != "" {
		t.Errorf("Nodes() differs from the API (-api +client):\n%s", diff)
	}

	// Resolution by id and by hostname (any case), and its two failures.
	for _, ref := range []string{idA, strings.ToUpper(idA), "hv-a", "HV-A", " hv-a "} {
		n, err := c.ResolveNode(ctx, ref)
		if err != nil || n.ID != idA {
			t.Errorf("ResolveNode(%q) = %s, %v; want %s", ref, n.ID, err, idA)
		}
	}
	_, err = c.ResolveNode(ctx, "hv")
	var nf *client.NodeNotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, client.ErrNotFound) || !strings.Contains(err.Error(), "did you mean hv-a, hv-b?") {
		t.Errorf("ResolveNode(hv) = %v, want not found suggesting hv-a, hv-b", err)
	}
	// A hostname may look like a UUID: name it after hv-b's id.
	idC, _ := register(t, v, idB)
	_, err = c.ResolveNode(ctx, idB)
	var amb *client.AmbiguousNodeError
	if !errors.As(err, &amb) || !errors.Is(err, client.ErrAmbiguous) || amb.ByID.ID != idB || amb.ByHostname.ID != idC {
		t.Errorf("ResolveNode(%s) = %v, want ambiguous between hv-b and node %s", idB, err, idC)
	}

	d, err := c.NodeDetail(ctx, idA)
	if err != nil {
		t.Fatal(err)
	}
	if d.Node.Hostname != "hv-a" || len(d.VMs) != 1 || d.VMs[0].UUID != web.UUID || len(d.StoragePools) != 1 ||
		d.StoragePools[0].Name != "default" || len(d.Events) == 0 || d.Events[0].Kind != quantix.RegistrationRegistered {
		t.Errorf("NodeDetail(hv-a) = %+v", d)
	}

	n, err := c.SetMaintenance(ctx, idA, true)
	if err != nil || n.Phase != quantix.PhaseMaintenance {
		t.Errorf("SetMaintenance(on) = %s, %v", n.Phase, err)
	}
	if got := v.Node(t, idA).Phase; got != quantix.PhaseMaintenance {
		t.Errorf("phase after SetMaintenance(on) = %s", got)
	}
	if n, err = c.SetMaintenance(ctx, idA, false); err != nil || n.Phase != quantix.PhaseReady {
		t.Errorf("SetMaintenance(off) = %s, %v", n.Phase, err)
	}

	tok, err := c.CreateJoinToken(ctx, quantix.JoinTokenRequest{TTLSeconds: 3600, Uses: 2, Description: "rack 3"})
	if err != nil || tok.Token == "" || tok.UsesLeft != 2 || tok.Description != "rack 3" ||
		time.Until(tok.ExpiresAt) < 59*time.Minute || time.Until(tok.ExpiresAt) > 61*time.Minute {
		t.Errorf("CreateJoinToken = %+v, %v", tok, err)
	}

	if err := c.DeleteNode(ctx, idB); err != nil {
		t.Fatal(err)
	}
	// Errors carry the status and the vDC's message.
	cases := []struct {
		name   string
		call   func() error
		status int
		msg    string
		is     error
	}{
		{"deleted node", func() error { _, err := c.Node(ctx, idB); return err }, 404, "", client.ErrNotFound},
		{"delete twice", func() error { return c.DeleteNode(ctx, idB) }, 404, "", client.ErrNotFound},
		{"bad id", func() error { _, err := c.Node(ctx, "nope"); return err }, 400, `node id "nope"`, nil},
		{"ttl too long", func() error {
			_, err := c.CreateJoinToken(ctx, quantix.JoinTokenRequest{TTLSeconds: 1 << 30})
			return err
		}, 400, "ttl_seconds", nil},
		{"wrong token", func() error { _, err := newClient(t, v.URL, "wrong").Nodes(ctx); return err }, 401, "wrong admin token", client.ErrUnauthorized},
		{"no token", func() error { _, err := newClient(t, v.URL, "").VMs(ctx); return err }, 401, "missing admin token", client.ErrUnauthorized},
	}
	for _, tc := range cases {
		err := tc.call()
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("%s: err = %v, want HTTP %d with message containing %q", tc.name, err, tc.status, tc.msg)
			continue
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%s: %v is not %v", tc.name, err, tc.is)
		}
		if errors.Is(err, client.ErrUnavailable) {
			t.Errorf("%s: %v counts as unavailable", tc.name, err)
		}
		if strings.Contains(err.Error(), v.AdminToken) {
			t.Errorf("%s: error %q shows the admin token", tc.name, err)
		}
	}
}

func TestTransportErrors(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	ctx := context.Background()

	// Nothing listens: unavailable, a *TransportError.
	_, err := newClient(t, closedPort(t), v.AdminToken).Nodes(ctx)
	var te *client.TransportError
	if !errors.As(err, &te) || !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("closed port: %v, want an unavailable transport error", err)
	}

	// A proxy whose vDC is gone answers 502: unavailable too.
	dead, _ := url.Parse(closedPort(t))
	proxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(dead))
	defer proxy.Close()
	_, err = newClient(t, proxy.URL, v.AdminToken).Nodes(ctx)
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadGateway || !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("proxy to nothing: %v, want HTTP 502 counted as unavailable", err)
	}

	// TLS: the vDC behind a TLS front with its own certificate. Unknown authority
	// is a TLS error, not "unavailable"; with the CA file it works.
	front := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(mustURL(t, v.URL)))
	defer front.Close()
	_, err = newClient(t, front.URL, v.AdminToken).Nodes(ctx)
	if !client.IsTLSError(err) || errors.Is(err, client.ErrUnavailable) {
		t.Errorf("unknown certificate: %v, want a TLS error not counted as unavailable", err)
	}
	caFile := t.TempDir() + "/ca.pem"
	writePEM(t, caFile, front.Certificate().Raw)
	tlsCfg, err := client.TLSConfig(caFile, false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{URL: front.URL, Token: v.AdminToken,
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Nodes(ctx); err != nil {
		t.Errorf("with --ca-cert: %v", err)
	}
	if _, err := client.TLSConfig(t.TempDir()+"/missing.pem", false); err == nil {
		t.Errorf("TLSConfig(missing file) = nil error")
	}
	notPEM := t.TempDir() + "/x.pem"
	writeFile(t, notPEM, "not a certificate")
	if _, err := client.TLSConfig(notPEM, false); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("TLSConfig(not PEM) = %v, want no PEM certificate", err)
	}

	// A server that accepts and never answers: the context deadline ends the wait.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = newClient(t, "http://"+l.Addr().String(), v.AdminToken).Nodes(tctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("silent server: %v, want a deadline counted as unavailable", err)
	}
}

func TestParseURL(t *testing.T) {
	cases := []struct{ in, want, err string }{
		{in: "http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{in: "https://vdc.example:8443/", want: "https://vdc.example:8443"},
		{in: "https://proxy.example/quantix/", want: "https://proxy.example/quantix"},
		{in: "", err: "empty"},
		{in: "vdc.example:8080", err: "http:// or https://"},
		{in: "ftp://vdc.example", err: "http:// or https://"},
		{in: "http://", err: "no host"},
		{in: "http://admin:hunter2@vdc.example", err: "must not hold credentials"},
		{in: "http://vdc.example/?x=1", err: "query"},
	}
	for _, tc := range cases {
		got, err := client.ParseURL(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseURL(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("ParseURL(%q) error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestFindNode(t *testing.T) {
	a := quantix.Node{ID: "11111111-1111-1111-1111-111111111111", Hostname: "web1"}
	b := quantix.Node{ID: "22222222-2222-2222-2222-222222222222", Hostname: "web2"}
	twin := quantix.Node{ID: "33333333-3333-3333-3333-333333333333", Hostname: a.ID} // hostname = a's id
	nodes := []quantix.Node{a, b, twin}
	cases := []struct {
		ref  string
		want string // node id, or the error text
		err  error
	}{
		{ref: "web1", want: a.ID},
		{ref: "WEB2", want: b.ID},
		{ref: b.ID, want: b.ID},
		{ref: strings.ToUpper(b.ID), want: b.ID},
		{ref: twin.ID, want: twin.ID},
		{ref: a.ID, want: `is the id of node web1 and the hostname of node ` + twin.ID, err: client.ErrAmbiguous},
		{ref: "web", want: `no node with id or hostname "web" (did you mean web1, web2?)`, err: client.ErrNotFound},
		{ref: "db1", want: `no node with id or hostname "db1"`, err: client.ErrNotFound},
		{ref: "web1.example", want: "no node", err: client.ErrNotFound},
	}
	for _, tc := range cases {
		got, err := client.FindNode(nodes, tc.ref)
		if tc.err != nil {
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("FindNode(%q) = %v, %v; want %v containing %q", tc.ref, got.ID, err, tc.err, tc.want)
			}
			continue
		}
		if err != nil || got.ID != tc.want {
			t.Errorf("FindNode(%q) = %s, %v; want %s", tc.ref, got.ID, err, tc.want)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writePEM(t *testing.T, path string, der []byte) {
	t.Helper()
	writeFile(t, path, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
}

// TestNodeSide covers what tools acting as nodes and lab tests use: readiness,
// registration with a join token (new, again, refused) and the metrics.
func TestNodeSide(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute})
	ctx := context.Background()
	c := newClient(t, v.AgentURL, "")
	if err := c.Readyz(ctx); err != nil {
		t.Fatalf("Readyz: %v", err)
	}
	req := quantix.RegisterRequest{Hostname: "hv-reg", MachineID: newUUID(), NodeSecret: randHex(32),
		ManagementIP: "10.0.0.7:9000", AgentVersion: "test-1"}
	r, err := c.Register(ctx, v.JoinToken, req)
	if err != nil || r.Registration != quantix.RegistrationRegistered || r.NodeID == "" {
		t.Fatalf("Register(new) = %+v, %v; want registered", r, err)
	}
	again, err := c.Register(ctx, v.JoinToken, req)
	if err != nil || again.Registration != quantix.RegistrationReregistered || again.NodeID != r.NodeID {
		t.Errorf("Register(same secret) = %+v, %v; want reregistered as %s", again, err, r.NodeID)
	}
	if n := v.Node(t, r.NodeID); n.ManagementIP != "10.0.0.7" {
		t.Errorf("management_ip = %q, want the port stripped", n.ManagementIP)
	}
	other := req
	other.MachineID, other.NodeSecret = newUUID(), randHex(32)
	_, err = c.Register(ctx, v.JoinToken, other)
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, r.NodeID) {
		t.Errorf("Register(other machine) = %v, want 409 naming node %s", err, r.NodeID)
	}
	if _, err := c.Register(ctx, "wrong-token", quantix.RegisterRequest{Hostname: "hv-new", MachineID: newUUID(),
		NodeSecret: randHex(32), ManagementIP: "10.0.0.8", AgentVersion: "test-1"}); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("Register(wrong join token) = %v, want unauthorized", err)
	}

	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatalf("Metrics: no unlabelled samples")
	}
	for name := range m {
		if strings.ContainsAny(name, "{# ") {
			t.Errorf("Metrics holds %q: labelled samples and comments are not unlabelled samples", name)
		}
	}
}

// TestRegisterStatusMismatch: an answer whose status contradicts its registration
// (a proxy, or a vDC bug) is an error, not a count the caller gets wrong.
func TestRegisterStatusMismatch(t *testing.T) {
	for _, tc := range []struct {
		status int
		reg    string
		ok     bool
	}{
		{http.StatusCreated, quantix.RegistrationRegistered, true},
		{http.StatusOK, quantix.RegistrationReregistered, true},
		{http.StatusOK, quantix.RegistrationRegistered, false},
		{http.StatusCreated, quantix.RegistrationReregistered, false},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != quantix.PathRegister || r.Header.Get("Authorization") != "Bearer join" {
				http.Error(w, "wrong request", http.StatusBadRequest)
				return
			}
			w.WriteHeader(tc.status)
			json.NewEncoder(w).Encode(quantix.RegisterResponse{NodeID: "n1", Registration: tc.reg})
		}))
		_, err := newClient(t, srv.URL, "admin").Register(context.Background(), "join", quantix.RegisterRequest{Hostname: "h"})
		srv.Close()
		if (err == nil) != tc.ok {
			t.Errorf("HTTP %d with %q: err = %v, want ok %v", tc.status, tc.reg, err, tc.ok)
		}
	}
}

func TestMetricsParse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "# HELP a_total A.\n# TYPE a_total counter\na_total 12\nb{x=\"1\"} 3\nc 1.5e3\n\n")
	}))
	defer srv.Close()
	m, err := newClient(t, srv.URL, "").Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]float64{"a_total": 12, "c": 1500}, m); diff != "" {
		t.Errorf("Metrics (-want +got):\n%s", diff)
	}
}
