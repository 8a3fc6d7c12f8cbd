package vdc_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestAgentCAOnePerCluster: vDCs starting at once on a fresh database create exactly
// one agent CA, and all serve with its pin.
func TestAgentCAOnePerCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	dbURL := vdctest.Shared(t).NewDatabase(t)
	const n = 6
	stores := make([]*store.Store, n)
	for i := range stores {
		st, err := store.Open(ctx, store.Config{DatabaseURL: dbURL, MaxConns: 2, Timeout: 5 * time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		stores[i] = st
	}
	if _, err := stores[0].Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	pins := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, st := range stores {
		wg.Go(func() {
			<-start
			ca, _, _, err := st.AgentCAs(ctx, func() (store.AgentCA, error) { return vdc.NewAgentCA(time.Now(), time.Hour) })
			pins[i], errs[i] = ca.Pin, err
		})
	}
	close(start)
	wg.Wait()
	for i := range pins {
		if errs[i] != nil || pins[i] != pins[0] || !quantix.ValidPin(pins[i]) {
			t.Errorf("vDC %d: pin %q, %v; want %q like vDC 0", i, pins[i], errs[i], pins[0])
		}
	}
	var rows int
	if err := stores[0].Pool().QueryRow(ctx, `SELECT count(*) FROM agent_ca`).Scan(&rows); err != nil || rows != 1 {
		t.Errorf("agent_ca rows = %d, %v; want 1", rows, err)
	}
}

// TestAgentCAExpiryWarning: a CA with less than agent_ca_warn left is reported by
// the API (for the UI and qx-ctl) and the metrics.
func TestAgentCAExpiryWarning(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := vdctest.Start(t, vdctest.Options{AgentCAWarn: 20 * 365 * 24 * time.Hour})
	var st quantix.AgentCAStatus
	v.Do(t, http.MethodGet, quantix.PathAgentCA, nil, &st, http.StatusOK)
	left := time.Duration(st.ExpiresInSeconds) * time.Second
	if st.Serving.Pin != v.Pin || st.Warning == "" || !strings.Contains(st.Warning, "rotate") ||
		left < 9*365*24*time.Hour || left > 10*365*24*time.Hour+time.Hour {
		t.Errorf("agent CA status %+v (expires in %s), want the pin, about 10 years and a warning", st, left)
	}
	code, b := call(t, http.MethodGet, v.URL+quantix.PathMetrics, "", nil)
	if code != http.StatusOK || !strings.Contains(string(b), "qx_vdc_agent_ca_expiring 1\n") ||
		!strings.Contains(string(b), `qx_vdc_agent_ca_expiry_seconds{pin="`+v.Pin+`"}`) {
		t.Errorf("metrics %d lack the agent CA warning:\n%s", code, b)
	}
	// Without the warning threshold reached: no warning.
	quiet := vdctest.Start(t, vdctest.Options{})
	st = quantix.AgentCAStatus{}
	quiet.Do(t, http.MethodGet, quantix.PathAgentCA, nil, &st, http.StatusOK)
	if st.Warning != "" {
		t.Errorf("a fresh 10-year CA warns: %q", st.Warning)
	}
}

// TestPlainSideRefusesAgents: on the plain side of the port the agent endpoints
// answer 403 naming the lab flag, while admin calls, health checks and browsers'
// redirects work; with agent_plain_http they are served.
func TestPlainSideRefusesAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("plain-side")
	code, b := call(t, http.MethodPost, v.URL+quantix.PathRegister, v.JoinToken, n.req())
	if code != http.StatusForbidden || !strings.Contains(string(b), "agent_plain_http") {
		t.Errorf("plain register: %d %s, want 403 naming agent_plain_http", code, b)
	}
	mustRegister(t, v, n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered) // over TLS
	code, b = call(t, http.MethodPost, v.URL+quantix.PathHeartbeat(n.ID), n.Secret, quantix.HeartbeatRequest{ManagementIP: n.IP})
	if code != http.StatusForbidden {
		t.Errorf("plain heartbeat: %d %s, want 403", code, b)
	}
	if code, b := call(t, http.MethodGet, v.URL+quantix.PathNode(n.ID), v.AdminToken, nil); code != http.StatusOK {
		t.Errorf("plain admin GET: %d %s, want 200", code, b)
	}
	if code, b := call(t, http.MethodGet, v.URL+quantix.PathNodes, "wrong-admin-token", nil); code != http.StatusUnauthorized {
		t.Errorf("plain admin GET with a wrong token: %d %s, want 401", code, b)
	}
	// Heartbeat answers announce the pins.
	var hb quantix.HeartbeatResponse
	code, b = call(t, http.MethodPost, v.AgentURL+quantix.PathHeartbeat(n.ID), n.Secret, quantix.HeartbeatRequest{ManagementIP: n.IP})
	decodeInto(t, b, &hb)
	if code != http.StatusOK || len(hb.AgentCAPins) != 1 || hb.AgentCAPins[0] != v.Pin {
		t.Errorf("TLS heartbeat: %d %+v, want agent_ca_pins [%s]", code, hb, v.Pin)
	}

	lab := vdctest.Start(t, vdctest.Options{PlainAgents: true})
	m := newNode("plain-lab")
	if code, b := call(t, http.MethodPost, lab.URL+quantix.PathRegister, lab.JoinToken, m.req()); code != http.StatusCreated {
		t.Errorf("plain register with agent_plain_http: %d %s, want 201", code, b)
	}
}
