package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

// BenchmarkLargeRegistry runs qx-ctl against a real vDC holding 10,000 nodes:
//
//	go test -run '^$' -bench LargeRegistry -benchtime 20x ./vdc/cmd/qx-ctl/
func BenchmarkLargeRegistry(b *testing.B) {
	const nodes = 10000
	v := vdctest.Start(b, vdctest.Options{HeartbeatInterval: time.Minute, Log: io.Discard})
	b.Setenv(envURL, v.URL)
	b.Setenv(envToken, v.AdminToken)
	b.Setenv(envTokenFile, "")

	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	var failed sync.Once
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				body := fmt.Sprintf(`{"hostname":"node-%05d","machine_id":"m-%d","node_secret":"%s","management_ip":"10.%d.%d.%d","agent_version":"bench","memory_bytes":%d}`,
					i, i, randHex(32), i/62500, i/250%250, i%250+1, int64(16)<<30)
				req, _ := http.NewRequest(http.MethodPost, v.AgentURL+quantix.PathRegister, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+v.JoinToken)
				resp, err := v.AgentClient().Do(req)
				if err == nil {
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != http.StatusCreated {
					failed.Do(func() { b.Errorf("register node-%05d: %v %v", i, err, resp) })
				}
			}
		}()
	}
	for i := 0; i < nodes; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	b.Logf("registered %d nodes in %s", nodes, time.Since(start).Round(time.Millisecond))

	for _, bc := range []struct {
		name string
		args []string
	}{
		{"nodes-list-table", []string{"nodes", "list"}},
		{"nodes-list-json", []string{"nodes", "list", "-o", "json"}},
		{"nodes-list-search", []string{"nodes", "list", "--search", "node-0999"}},
		{"nodes-show-by-hostname", []string{"nodes", "show", "node-05000"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var out bytes.Buffer
			for b.Loop() {
				out.Reset()
				var errb bytes.Buffer
				if code := run(context.Background(), bc.args, strings.NewReader(""), &out, &errb); code != 0 {
					b.Fatalf("qx-ctl %q: exit %d: %s", bc.args, code, errb.String())
				}
			}
			b.ReportMetric(float64(out.Len()), "output-bytes")
		})
	}
}
