package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/client"
)

// longPollWait is the wait of the simulated agents' desired-state long-polls.
const longPollWait = 20

// desiredLoad gives every node o.desiredVMs managed VMs, holds one desired-state
// long-poll per node open (as agents do) while measure runs, then measures how fast
// a change wakes a waiting long-poll and how many desired-state fetches per second
// the vDC answers.
func desiredLoad(ctx context.Context, c *client.Client, nodes, all []*simNode, send func(*simNode) error, o options,
	out io.Writer, measure func()) error {
	// Outside the measured heartbeat phase the nodes still heartbeat, or they would
	// stop being ready (and placeable) during the minutes of creates.
	stopBeats := keepAlive(all, send)
	defer func() { stopBeats() }()
	total := len(nodes) * o.desiredVMs
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	// Creates serialize on the placement lock; a few workers keep it busy.
	parallel(total, min(o.conns, 8), func(k int) {
		_, err := c.CreateVM(ctx, quantix.VMCreate{VMSpec: quantix.VMSpec{Name: fmt.Sprintf("vm-%06d", k), VCPUs: 1, MemoryBytes: 64 << 20,
			Disks: []quantix.DiskSpec{{SizeBytes: 1 << 30}}, NICs: []quantix.NICSpec{{Network: quantix.NetworkManagement}}},
			Node: nodes[k%len(nodes)].id})
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
	})
	took := time.Since(start)
	fmt.Fprintf(out, "created %d managed VMs (%d per node) through the API in %.1fs (%.0f/s), failures %d\n",
		total, o.desiredVMs, took.Seconds(), float64(total)/took.Seconds(), failed.Load())
	if e := firstErr.Load(); e != nil {
		return fmt.Errorf("create vms: %s", e)
	}

	lp, err := client.New(client.Config{URL: c.URL(), UserAgent: "qx-vdc-load-longpoll", HTTPClient: &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: len(nodes) + 1, TLSClientConfig: o.tlsCfg}}})
	if err != nil {
		return err
	}
	pollCtx, stopPolls := context.WithCancel(ctx)
	var polls, pollErrs atomic.Int64
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var gen int64
			for pollCtx.Err() == nil {
				d, err := lp.Desired(pollCtx, n.id, n.req.NodeSecret, gen, longPollWait)
				if err != nil {
					if pollCtx.Err() == nil {
						pollErrs.Add(1)
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				polls.Add(1)
				gen = d.Generation
			}
		}()
	}
	time.Sleep(time.Second) // every node fetched once and waits
	fmt.Fprintln(out)
	stopBeats()
	measure()
	stopBeats = keepAlive(all, send)
	wake, err := wakeLatency(ctx, c, lp, nodes[0])
	stopPolls()
	wg.Wait()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  long-polls answered during it: %d (the first fetch of each node included), errors %d\n", polls.Load(), pollErrs.Load())
	fmt.Fprintf(out, "long-poll wake-up after a change (VM action returned -> long-poll answered), %d samples: p50 %.2f ms, max %.2f ms\n\n",
		len(wake), ms(wake[len(wake)/2]), ms(wake[len(wake)-1]))
	return fetches(ctx, lp, nodes, o, out)
}

// wakeLatency measures how long a waiting long-poll of n takes to answer after a
// power action on one of its VMs returned.
func wakeLatency(ctx context.Context, c, lp *client.Client, n *simNode) ([]time.Duration, error) {
	d, err := lp.Desired(ctx, n.id, n.req.NodeSecret, 0, 0)
	if err != nil || len(d.VMs) == 0 {
		return nil, fmt.Errorf("desired of %s: %v (%d VMs)", n.req.Hostname, err, len(d.VMs))
	}
	var lat []time.Duration
	for i := range 20 {
		answered := make(chan time.Time, 1)
		go func() {
			lp.Desired(ctx, n.id, n.req.NodeSecret, d.Generation, longPollWait)
			answered <- time.Now()
		}()
		time.Sleep(50 * time.Millisecond) // the poll waits
		action := quantix.VMActionStop
		if i%2 == 1 {
			action = quantix.VMActionStart
		}
		if _, err := c.VMAction(ctx, d.VMs[0].UUID, action); err != nil {
			return nil, err
		}
		done := time.Now()
		select {
		case at := <-answered:
			lat = append(lat, at.Sub(done))
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("long-poll of %s did not answer within 10s of a change", n.req.Hostname)
		}
		d.Generation++
	}
	slices.Sort(lat)
	return lat, nil
}

// fetches measures full desired-state fetches (no wait) in a closed loop.
func fetches(ctx context.Context, lp *client.Client, nodes []*simNode, o options, out io.Writer) error {
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs atomic.Int64
		size atomic.Int64
		next atomic.Int64
		wg   sync.WaitGroup
	)
	workers := min(o.conns, 32)
	dur := max(o.duration/2, time.Second)
	start := time.Now()
	end := start.Add(dur)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				n := nodes[int(next.Add(1)-1)%len(nodes)]
				t0 := time.Now()
				d, err := lp.Desired(ctx, n.id, n.req.NodeSecret, 0, 0)
				if err != nil {
					errs.Add(1)
					continue
				}
				b, _ := json.Marshal(d)
				size.Store(int64(len(b)))
				mu.Lock()
				lat = append(lat, time.Since(t0))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(lat) == 0 {
		return fmt.Errorf("desired fetches: none answered, %d errors", errs.Load())
	}
	slices.Sort(lat)
	fmt.Fprintf(out, "desired-state fetches: closed loop, %d workers, %s, %d VMs per answer (%d bytes of JSON)\n",
		workers, elapsed.Round(time.Millisecond), o.desiredVMs, size.Load())
	fmt.Fprintf(out, "  answered %d (%.0f fetches/s), errors %d, latency p50 %.2f ms, p99 %.2f ms\n\n", len(lat),
		float64(len(lat))/elapsed.Seconds(), errs.Load(), ms(lat[len(lat)/2]), ms(lat[min(len(lat)-1, len(lat)*99/100)]))
	return nil
}

// keepAlive heartbeats every node every 2 s until the returned function is called.
func keepAlive(nodes []*simNode, send func(*simNode) error) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				parallel(len(nodes), 8, func(i int) { send(nodes[i]) })
			}
		}
	}()
	return func() { close(stop); <-done }
}
