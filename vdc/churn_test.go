package vdc_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestChurnNoDeadlocks runs heartbeats (batched, locking rows in id order), the
// phase sweeper (every 100ms, skip locked), maintenance toggles, state PUTs and
// re-registrations on the same nodes at once: every request must succeed and the
// vDC must log no error (a deadlock would abort a whole heartbeat batch).
func TestChurnNoDeadlocks(t *testing.T) {
	skipShort(t)
	log := &syncbuf.Buffer{}
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: 200 * time.Millisecond, Log: log})
	const nodes = 40
	ns := make([]*node, nodes)
	for i := range ns {
		ns[i] = newNode(fmt.Sprintf("churn-%02d", i))
		mustRegister(t, v, ns[i], v.JoinToken, 201, quantix.RegistrationRegistered)
	}
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	report := func(format string, args ...any) {
		select {
		case errs <- fmt.Sprintf(format, args...):
		default:
		}
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				// Half the nodes go silent and flap between phases.
				n := ns[(i*8+w)%nodes]
				if n.Hostname[len(n.Hostname)-1]%2 == 0 {
					continue
				}
				switch i % 10 {
				case 3:
					if code, b := call(t, http.MethodPut, v.AgentURL+quantix.PathState(n.ID), n.Secret, quantix.NodeState{
						VMs: []quantix.VM{{UUID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8", Name: "vm", PowerState: "running"}}}); code != 200 {
						report("state %s: %d %s", n.Hostname, code, b)
					}
				case 7:
					c := *n
					if code, _, b := register(t, v, &c, ""); code != 200 {
						report("re-register %s: %d %s", n.Hostname, code, b)
					}
				default:
					if code, _, b := heartbeat(t, v, n, quantix.HeartbeatRequest{}); code != 200 {
						report("heartbeat %s: %d %s", n.Hostname, code, b)
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			n := ns[i%nodes]
			code, b := call(t, http.MethodPut, v.URL+quantix.PathNode(n.ID)+"/maintenance", v.AdminToken, map[string]bool{"maintenance": i%2 == 0})
			if code != 200 {
				report("maintenance %s: %d %s", n.Hostname, code, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if strings.Contains(log.String(), "level=ERROR") {
		t.Errorf("the vDC logged errors under churn:\n%s", log)
	}
	// The silent half is demoted, and every change is in the history.
	time.Sleep(time.Second)
	changes := 0
	for _, n := range v.Nodes(t) {
		for _, e := range v.NodeEvents(t, n.ID) {
			if e.Kind == "phase" {
				changes++
			}
		}
	}
	if changes < nodes/2 {
		t.Errorf("only %d phase changes recorded for %d nodes, half of them silent", changes, nodes)
	}
}
