package vdc_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

// BenchmarkHeartbeats drives heartbeats of 1000 registered nodes through the real
// HTTP API against PostgreSQL (the shared test server: fsync off; qx-vdc-load
// measures with a durable server). It reports heartbeats/s and p50/p99 latency.
// The os variant carries a NodeOS with A/B slots in every heartbeat, as agents
// do: unchanged, it writes no OS column (only its hash is compared).
func BenchmarkHeartbeats(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchHeartbeats(b, nil) })
	b.Run("os", func(b *testing.B) {
		benchHeartbeats(b, &quantix.NodeOS{Image: quantix.ImageQuantixOS, Version: "1.0.0", Slots: &quantix.SlotsStatus{
			Booted: "a", State: quantix.SlotGood, Order: []string{"a", "b"}, Next: "a",
			Slots: []quantix.SlotInfo{{Slot: "a", Good: true, Image: quantix.ImageQuantixOS, Version: "1.0.0"}, {Slot: "b"}}}})
	})
}

func benchHeartbeats(b *testing.B, nodeOS *quantix.NodeOS) {
	v := vdctest.Start(b, vdctest.Options{HeartbeatInterval: time.Minute, Log: io.Discard})
	const nodes = 1000
	type sim struct {
		n    *node
		body []byte
	}
	sims := make([]sim, nodes)
	for i := range sims {
		n := newNode("bench-" + string(rune('a'+i%26)) + "-" + itoa(i))
		mustRegister(b, v, n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
		body, _ := json.Marshal(quantix.HeartbeatRequest{ManagementIP: n.IP, OS: nodeOS})
		sims[i] = sim{n, body}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, TLSClientConfig: quantix.PinnedTLS([]string{v.Pin}, nil)}}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			s := sims[int(next.Add(1))%nodes]
			req, _ := http.NewRequest(http.MethodPost, v.AgentURL+quantix.PathHeartbeat(s.n.ID), bytes.NewReader(s.body))
			req.Header.Set("Authorization", "Bearer "+s.n.Secret)
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("heartbeat: %d", resp.StatusCode)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "heartbeats/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
	if hb, batches := metricValue(b, v, "qx_vdc_heartbeats_total"), metricValue(b, v, "qx_vdc_heartbeat_batches_total"); batches > 0 {
		b.ReportMetric(hb/batches, "heartbeats/statement")
	}
}

// metricValue reads one unlabelled metric from /metrics.
func metricValue(t testing.TB, v *vdctest.VDC, name string) float64 {
	t.Helper()
	_, body := call(t, http.MethodGet, v.URL+quantix.PathMetrics, "", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
