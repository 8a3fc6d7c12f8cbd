package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
	"github.com/quantix/quantix/tests/netlab"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestDesiredVMsWiring runs the whole agent against a real vDC behind a front that
// also serves the desired-state endpoints (the vDC side of docs/design.md §14 is
// built elsewhere): the agent fetches the desired VMs, reports the applied
// generation in its heartbeats and full state, and a VM it cannot converge (an
// image whose bytes do not match its sha256) reaches the vDC as a VM with an error.
func TestDesiredVMsWiring(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, a vDC and libvirtd")
	}
	v := startPlainVDC(t)
	lv := libvirtdtest.Start(t)
	vmID := uuid.NewString()
	image := []byte("not the bytes the sha256 below describes")
	desired := quantix.NodeDesired{
		Generation: 7,
		VMs: []quantix.DesiredVM{{UUID: vmID, Power: quantix.WantedRunning, Generation: 1,
			Spec: quantix.VMSpec{Name: "vm-x", VCPUs: 1, MemoryBytes: 16 << 20, Disks: []quantix.DiskSpec{{ImageID: "img-x"}}}}},
		Images: []quantix.DesiredImage{{ID: "img-x", Format: quantix.ImageRaw, SizeBytes: int64(len(image)), SHA256: strings.Repeat("ab", 32)}},
	}
	var mu sync.Mutex
	var applied []int64 // applied_generation of every heartbeat
	var vmErrors []string
	record := func(body []byte) {
		var x struct {
			Applied *int64 `json:"applied_generation"`
			VMs     []quantix.VM
			Events  []quantix.StateEvent
		}
		json.Unmarshal(body, &x)
		mu.Lock()
		defer mu.Unlock()
		for _, vm := range x.VMs {
			if vm.UUID == vmID {
				vmErrors = append(vmErrors, vm.Error)
			}
		}
		for _, ev := range x.Events {
			if ev.VM != nil && ev.VM.UUID == vmID {
				vmErrors = append(vmErrors, ev.VM.Error)
			}
		}
	}
	cfg := frontedConfig(t, v, mgmtNS(t, "10.54.0.5/24", "10.54.0.1"), "node-vms", func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		switch {
		case strings.HasSuffix(r.URL.Path, "/desired"):
			json.NewEncoder(w).Encode(desired)
			return true
		case strings.HasSuffix(r.URL.Path, "/images/img-x"):
			w.Write(image)
			return true
		}
		if strings.HasSuffix(r.URL.Path, "/heartbeat") {
			var hb quantix.HeartbeatRequest
			json.Unmarshal(body, &hb)
			mu.Lock()
			applied = append(applied, hb.AppliedGeneration)
			mu.Unlock()
		}
		record(body)
		return false
	})
	cfg.LibvirtURI = lv.URI()
	cfg.ImagesDir = t.TempDir()
	cfg.ConsoleDir = t.TempDir()
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)
	eventually(t, 20*time.Second, "applied generation 7 in a heartbeat and the VM's error in the inventory", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		gotGen := len(applied) > 0 && applied[len(applied)-1] == 7
		gotErr := false
		for _, e := range vmErrors {
			gotErr = gotErr || strings.Contains(e, "image img-x: sha256 mismatch")
		}
		return gotGen && gotErr, fmt.Sprintf("heartbeats said %v; vm errors sent %q", applied, vmErrors)
	})
	for _, x := range v.VMs(t) {
		if x.UUID == vmID {
			t.Logf("the vDC lists %s as power %q error %q", vmID, x.PowerState, x.Error)
		}
	}
}

// TestAddressChangeEndsLongPoll: the desired long-poll held when the management
// address changes ends at the next heartbeat and is opened again (from the new
// address), instead of waiting out its wait on a connection of the old one.
func TestAddressChangeEndsLongPoll(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startPlainVDC(t)
	ended := make(chan time.Time, 16)
	var mu sync.Mutex
	polls := 0
	ns := mgmtNS(t, "10.54.0.5/24", "10.54.0.1")
	cfg := frontedConfig(t, v, ns, "node-poll", func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if !strings.HasSuffix(r.URL.Path, "/desired") {
			return false
		}
		mu.Lock()
		polls++
		mu.Unlock()
		if r.URL.Query().Get("wait") == "" {
			json.NewEncoder(w).Encode(quantix.NodeDesired{Generation: 1})
			return true
		}
		<-r.Context().Done() // held until the agent gives up
		ended <- time.Now()
		return true
	})
	cfg.DesiredWait = 50 * time.Second
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)
	eventually(t, 10*time.Second, "a long-poll held", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return polls >= 2, fmt.Sprintf("%d desired requests", polls)
	})
	moved := time.Now()
	ns.Readdress(ns.Link("uplink0"), "10.54.0.5/24", "10.54.0.1", "10.54.9.9/24", "10.54.9.1")
	select {
	case at := <-ended:
		t.Logf("the held long-poll ended %s after the address change (heartbeat interval 1 s)", at.Sub(moved).Round(10*time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatalf("the long-poll was still held 10 s after the address change")
	}
	eventually(t, 10*time.Second, "a new long-poll", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return polls >= 3, fmt.Sprintf("%d desired requests", polls)
	})
}

// frontedConfig is one agent's Config (hostname, its management address in ns)
// that reaches the plain vDC v through an in-test front: serve answers the
// requests it takes (true); the others, their body intact, go on to v.
func frontedConfig(t testing.TB, v *vdctest.VDC, ns *netlab.NS, hostname string, serve func(w http.ResponseWriter, r *http.Request, body []byte) bool) agent.Config {
	target, err := url.Parse(v.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if !serve(w, r, body) {
			rp.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(front.Close)
	cfg := testConfig(t, v, ns, hostname)
	cfg.ControlPlane = front.URL
	cfg.InsecurePlainHTTP = true
	return cfg
}

// startPlainVDC is a vDC that takes agents on plain HTTP (agent_plain_http), for
// tests that put a plain in-test front between the agent and the vDC.
func startPlainVDC(t testing.TB) *vdctest.VDC {
	opts := vdctest.Options{HeartbeatInterval: time.Second, JoinTokens: []string{"agent-test-token"}, PlainAgents: true}
	if !testing.Verbose() {
		opts.Log = io.Discard
	}
	return vdctest.Start(t, opts)
}
