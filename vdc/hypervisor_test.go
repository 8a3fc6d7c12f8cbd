package vdc_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestHypervisorFacts: what an agent says of its hypervisor (libvirt and QEMU
// versions, accelerator, persistence) is stored from a registration, replaced by a
// heartbeat and by a full state, kept when a heartbeat carries no hypervisor, and
// served by the node API; a bad accelerator is a 400 naming the field.
func TestHypervisorFacts(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	yes, no := true, false
	n := newNode("hv-1")
	req := n.req()
	req.Hypervisor = &quantix.Hypervisor{State: quantix.HypervisorAvailable, URI: "qemu:///system", Version: "9.0.0",
		QEMUVersion: "7.2.22", Accelerator: quantix.AccelTCG, AcceleratorReason: "neither kvm_intel nor kvm_amd is loaded", Persistent: &no}
	code, b := call(t, http.MethodPost, v.AgentURL+quantix.PathRegister, v.JoinToken, req)
	if code != http.StatusCreated {
		t.Fatalf("register: %d %s", code, b)
	}
	var r quantix.RegisterResponse
	decodeInto(t, b, &r)
	n.ID = r.NodeID
	get := func() quantix.Hypervisor { t.Helper(); return v.Node(t, n.ID).Hypervisor }
	if diff := cmp.Diff(*req.Hypervisor, get()); diff != "" {
		t.Errorf("after registration (-sent +stored):\n%s", diff)
	}
	hb := quantix.Hypervisor{State: quantix.HypervisorAvailable, URI: "qemu:///system", Version: "9.0.0",
		QEMUVersion: "7.2.22", Accelerator: quantix.AccelKVM, Persistent: &yes}
	if code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{Hypervisor: &hb}); code != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", code, b)
	}
	if diff := cmp.Diff(hb, get()); diff != "" {
		t.Errorf("after a heartbeat (-sent +stored):\n%s", diff)
	}
	if code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{}); code != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", code, b)
	}
	if diff := cmp.Diff(hb, get()); diff != "" {
		t.Errorf("a heartbeat without hypervisor changed it (-want +stored):\n%s", diff)
	}
	down := quantix.Hypervisor{State: quantix.HypervisorUnavailable, Reason: "connection to libvirt lost", URI: "qemu:///system", Persistent: &yes}
	st := quantix.NodeState{StateHash: quantix.StateHash(nil, nil), Hypervisor: &down}
	if code, b := call(t, http.MethodPut, v.AgentURL+quantix.PathState(n.ID), n.Secret, st); code != http.StatusOK {
		t.Fatalf("PUT state: %d %s", code, b)
	}
	want := down
	if diff := cmp.Diff(want, get()); diff != "" {
		t.Errorf("after a full state (-want +stored):\n%s", diff)
	}
	// Back by heartbeat. Each change of the hypervisor's state is one event that
	// says why; repeating a state records nothing.
	for i := 0; i < 2; i++ {
		if code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{Hypervisor: &hb}); code != http.StatusOK {
			t.Fatalf("heartbeat: %d %s", code, b)
		}
	}
	var hvEvents []string
	for _, e := range v.NodeEvents(t, n.ID) {
		if e.Kind == "hypervisor" {
			hvEvents = append(hvEvents, e.Message)
		}
	}
	wantEvents := []string{
		"hypervisor available -> unavailable: connection to libvirt lost (state)",
		"hypervisor unavailable -> available (heartbeat)",
	}
	slices.Sort(hvEvents)
	if diff := cmp.Diff(wantEvents, hvEvents); diff != "" {
		t.Errorf("hypervisor events (-want +got):\n%s", diff)
	}
	want = hb
	bad := n.req()
	bad.Hypervisor = &quantix.Hypervisor{State: quantix.HypervisorAvailable, Accelerator: "hvf"}
	code, b = call(t, http.MethodPost, v.AgentURL+quantix.PathRegister, v.JoinToken, bad)
	if code != http.StatusBadRequest || !strings.Contains(errMsg(t, b), "hypervisor.accelerator") {
		t.Errorf("bad accelerator: %d %s, want 400 naming hypervisor.accelerator", code, b)
	}
	if diff := cmp.Diff(want, get()); diff != "" {
		t.Errorf("a refused registration changed the node (-want +stored):\n%s", diff)
	}
}
