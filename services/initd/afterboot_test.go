package initd

import (
	"context"
	"testing"
	"time"
)

// TestSupervisorAfterBoot: an after_boot service does not hold up AllReady (boot-
// complete), does not start before StartAfterBoot, and starts after it.
func TestSupervisorAfterBoot(t *testing.T) {
	modes := map[string]string{"network": "ready", "libvirtd": "ready"}
	s, console, events, _ := newSup(t, modes, nil, []string{"network", "libvirtd"}, nil)
	s.svcs["libvirtd"].spec.AfterBoot = true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-s.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("AllReady waits for the after_boot service; events %v; console:\n%s", readEvents(t, events), console.String())
	}
	time.Sleep(300 * time.Millisecond)
	if ev := readEvents(t, events); index(ev, "libvirtd start") >= 0 {
		t.Fatalf("the after_boot service started before StartAfterBoot: %v", ev)
	}
	s.StartAfterBoot()
	s.StartAfterBoot() // twice is harmless
	select {
	case <-s.Ready("libvirtd"):
	case <-time.After(20 * time.Second):
		t.Fatalf("after_boot service not ready after StartAfterBoot; events %v", readEvents(t, events))
	}
}
