package agent_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
)

// readySignal closes ready when the ready marker is written.
type readySignal struct {
	once  sync.Once
	ready chan struct{}
	kind  string
}

func (r *readySignal) Write(p []byte) (int, error) {
	if strings.Contains(string(p), "QUANTIX: ready service=agent") {
		r.once.Do(func() {
			if i := strings.Index(string(p), "registration="); i >= 0 {
				r.kind = strings.TrimSpace(string(p[i+len("registration="):]))
			}
			close(r.ready)
		})
	}
	return len(p), nil
}

// BenchmarkStartToRegistered measures agent.New + Run until the ready marker,
// against a local vDC (PostgreSQL, fsync on) with libvirt connected: "first" is a
// new host (identity created, join token), "restart" the same host again.
//
//	go test -run '^$' -bench StartToRegistered -benchtime 20x ./agent/
func BenchmarkStartToRegistered(b *testing.B) {
	v := startVDC(b)
	lv := libvirtdtest.Start(b)
	ns := mgmtNS(b, "10.56.0.5/24", "10.56.0.1")
	run := 0 // the testing package calls each sub-benchmark more than once
	for _, mode := range []string{"first", "restart"} {
		b.Run(mode, func(b *testing.B) {
			run++
			cfg := testConfig(b, v, ns, fmt.Sprintf("bench-%s-%d", mode, run))
			cfg.LibvirtURI = lv.URI()
			want := "reregistered"
			if mode == "restart" {
				startOnce(b, cfg) // create the node first
			} else {
				want = "registered"
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := cfg
				if mode == "first" {
					c.Hostname = fmt.Sprintf("bench-first-%d-%d", run, i)
					c.StateDir = b.TempDir()
				}
				b.StartTimer()
				kind, stop := startOnce(b, c)
				b.StopTimer()
				stop()
				if kind != want {
					b.Fatalf("registration=%s, want %s", kind, want)
				}
			}
		})
	}
}

// startOnce starts an agent and returns when it has printed its ready marker.
func startOnce(b *testing.B, cfg agent.Config) (string, func()) {
	sig := &readySignal{ready: make(chan struct{})}
	cfg.Stdout = sig
	svc, err := agent.New(cfg, logger(b, cfg.Hostname))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	select {
	case <-sig.ready:
	case err := <-done:
		b.Fatalf("agent stopped: %v", err)
	case <-time.After(20 * time.Second):
		b.Fatalf("not registered within 20s: %+v", svc.Status())
	}
	return sig.kind, func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run() = %v", err)
		}
	}
}
