package main

import (
	"bytes"
	"context"
	"sort"
	"strings"
	"testing"
	"time"
)

// BenchmarkKeyToScreen measures the time from a key press written to the pty to
// the screen showing its effect (the mode toggle on the network screen: one
// changed line), through the real program, its renderer and the pty. It reports
// p50 and p99 besides the mean (ns/op).
func BenchmarkKeyToScreen(b *testing.B) {
	e := newEnv(b)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"set-password", "--password-file", e.passwordFile},
		strings.NewReader("s3cret-console\n"), &out, &out); err != nil {
		b.Fatal(err)
	}
	tm := startConsole(b, startOpts{}, e.args("--refresh", "1h")...)
	tm.waitFor(5*time.Second, "Uptime")
	tm.send("n")
	tm.waitFor(3*time.Second, "This needs the console password.")
	tm.send("s3cret-console", keyEnter)
	tm.waitFor(5*time.Second, "> Mode            (*) DHCP")
	want := []string{"> Mode            ( ) DHCP   (*) Static", "> Mode            (*) DHCP   ( ) Static"}
	var lat []time.Duration
	bytes0 := tm.scr.Bytes()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		tm.master.Write([]byte(" "))
		w := want[i%2]
		for !strings.Contains(tm.scr.Text(), w) {
			if time.Since(t0) > 5*time.Second {
				b.Fatalf("screen does not show %q:\n%s", w, framed(tm.scr.Text()))
			}
			time.Sleep(50 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	// Bytes on the wire per key: at 115200 baud (11.5 bytes/ms) this is the serial
	// line's share of the latency.
	b.ReportMetric(float64(tm.scr.Bytes()-bytes0)/float64(len(lat)), "bytes/key")
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}
