package vdc_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

func phaseEvents(t *testing.T, v *vdctest.VDC, id string) []string {
	t.Helper()
	var out []string
	for _, e := range v.NodeEvents(t, id) {
		if e.Kind == "phase" {
			out = append(out, e.Message)
		}
	}
	return out
}

// TestPhaseTransitions uses a 1s interval: ready up to 2s after the last
// heartbeat, not_ready up to 3s, disconnected after. Ages come from PostgreSQL's
// clock, so the test waits real time instead of faking it.
func TestPhaseTransitions(t *testing.T) {
	skipShort(t)
	const iv = time.Second
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: iv})
	// Past the start grace (3 intervals) before anything may be demoted.
	time.Sleep(3 * iv)
	n := newNode("flappy")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	if got := v.Node(t, n.ID).Phase; got != quantix.PhaseReady {
		t.Fatalf("phase after registration = %s, want ready", got)
	}
	v.WaitPhase(t, n.ID, quantix.PhaseNotReady, 10*iv)
	v.WaitPhase(t, n.ID, quantix.PhaseDisconnected, 10*iv)
	if code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{}); code != 200 {
		t.Fatalf("heartbeat: %d %s", code, b)
	}
	if got := v.Node(t, n.ID).Phase; got != quantix.PhaseReady {
		t.Fatalf("phase after a heartbeat = %s, want ready", got)
	}

	// Maintenance sticks through heartbeats and silence.
	if got := v.SetMaintenance(t, n.ID, true).Phase; got != quantix.PhaseMaintenance {
		t.Fatalf("phase after maintenance on = %s", got)
	}
	heartbeat(t, v, n, quantix.HeartbeatRequest{})
	time.Sleep(4 * iv)
	if got := v.Node(t, n.ID).Phase; got != quantix.PhaseMaintenance {
		t.Fatalf("phase in maintenance after silence = %s, want maintenance", got)
	}
	// Out of maintenance the phase follows the (old) heartbeat at once.
	if got := v.SetMaintenance(t, n.ID, false).Phase; got != quantix.PhaseDisconnected {
		t.Errorf("phase after maintenance off with an old heartbeat = %s, want disconnected", got)
	}
	mustRegister(t, v, n, "", 200, quantix.RegistrationReregistered)
	if got := v.Node(t, n.ID).Phase; got != quantix.PhaseReady {
		t.Errorf("phase after re-registration = %s, want ready", got)
	}

	want := []string{"ready -> not_ready", "not_ready -> disconnected", "disconnected -> ready (heartbeat)",
		"ready -> maintenance", "maintenance -> disconnected", "disconnected -> ready (reregistered)"}
	got := phaseEvents(t, v, n.ID)
	if len(got) != len(want) {
		t.Fatalf("phase events = %q, want %d like %q", got, len(want), want)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("phase event %d = %q, want %q...", i, got[i], want[i])
		}
	}

	// /metrics counts nodes by phase from the database.
	code, b := call(t, http.MethodGet, v.URL+quantix.PathMetrics, "", nil)
	if code != 200 || !strings.Contains(string(b), `qx_vdc_nodes{phase="ready"} 1`) {
		t.Errorf("/metrics: %d\n%s", code, b)
	}
}

// TestRestartGrace: after a vDC restart no node is demoted for 3 intervals, and
// no node is asked for a full state again (the epoch is the database's).
func TestRestartGrace(t *testing.T) {
	skipShort(t)
	const iv = time.Second
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: iv})
	n := newNode("survivor")
	mustRegister(t, v, n, v.JoinToken, 201, quantix.RegistrationRegistered)
	if code, b := call(t, http.MethodPut, v.AgentURL+quantix.PathState(n.ID), n.Secret, quantix.NodeState{}); code != 200 {
		t.Fatalf("state: %d %s", code, b)
	}
	if _, hb, _ := heartbeat(t, v, n, quantix.HeartbeatRequest{StateHash: quantix.StateHash(nil, nil)}); hb.FullSync {
		t.Fatalf("full_sync after a full state with the same hash")
	}
	v.Stop(t)
	time.Sleep(2500 * time.Millisecond) // the last heartbeat is now older than 2 intervals
	restarted := time.Now()
	v.Restart(t)
	// Grace: still ready well past the 2-interval age, until 3 intervals after start.
	// The grace ends 3 intervals after the new process read the database clock,
	// which is after `restarted`: a phase read that returned before 2.9s is inside.
	checked := 0
	for time.Since(restarted) < 2500*time.Millisecond {
		p := v.Node(t, n.ID).Phase
		if at := time.Since(restarted); at < 2900*time.Millisecond && p != quantix.PhaseReady {
			t.Fatalf("phase %s %.1fs after restart, within the grace, want ready", p, at.Seconds())
		}
		checked++
		time.Sleep(200 * time.Millisecond)
	}
	if checked < 3 {
		t.Fatalf("only %d phase checks inside the grace period; the machine is too slow for this test", checked)
	}
	v.WaitPhase(t, n.ID, quantix.PhaseDisconnected, 4*iv)
	// Heartbeating again: ready. The epoch is the database's, not the process's
	// (docs/design.md §17): a vDC restart costs no full state; a failover does.
	code, hb, b := heartbeat(t, v, n, quantix.HeartbeatRequest{StateHash: quantix.StateHash(nil, nil)})
	if code != 200 || hb.FullSync {
		t.Errorf("first heartbeat after restart: %d %s, want no full_sync (same database, same epoch)", code, b)
	}
	if p := v.Node(t, n.ID).Phase; p != quantix.PhaseReady {
		t.Errorf("phase after heartbeat = %s", p)
	}
}
