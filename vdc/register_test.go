package vdc_test

import (
	"net/http"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestRegisterAndHeartbeatSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	v := vdctest.Start(t, vdctest.Options{})
	n := newNode("Node-1.lab")
	r := mustRegister(t, v, n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
	if r.HeartbeatIntervalSeconds != 2 {
		t.Errorf("heartbeat_interval_seconds = %d, want 2", r.HeartbeatIntervalSeconds)
	}
	code, hb, b := heartbeat(t, v, n, quantix.HeartbeatRequest{})
	if code != http.StatusOK || !hb.FullSync {
		t.Fatalf("heartbeat: %d %s, want 200 with full_sync", code, b)
	}
	nodes := v.Nodes(t)
	if len(nodes) != 1 || nodes[0].Hostname != "node-1.lab" || nodes[0].ManagementIP != "10.0.0.5" || nodes[0].Phase != quantix.PhaseReady {
		t.Fatalf("nodes = %+v", nodes)
	}
}
