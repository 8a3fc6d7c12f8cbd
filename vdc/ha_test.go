package vdc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

// haAgent is a simulated node agent for the failover test: it registers, sends
// its full state, and heartbeats its vDC, retrying on errors and 503s as the real
// agent does, and records what the vDC acknowledged.
type haAgent struct {
	n   *node
	vdc *vdctest.VDC
	hc  *http.Client

	mu sync.Mutex
	// registered: the vDC acknowledged the registration; lastAckSent is when the
	// newest acknowledged heartbeat was sent (its transaction started after).
	registered  bool
	lastAckSent time.Time
	acks        []time.Time // when each acknowledged heartbeat's answer came
	fullSyncs   []time.Time // when the vDC asked for the full state
	failures    int
}

func (a *haAgent) do(ctx context.Context, method, path, token string, body, out any) (int, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, method, a.vdc.AgentURL+path, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, rb)
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(rb, out)
	}
	return resp.StatusCode, nil
}

// run registers, then heartbeats every tick until ctx ends.
func (a *haAgent) run(ctx context.Context, token string, tick time.Duration) {
	for ctx.Err() == nil && a.n.ID == "" {
		var r quantix.RegisterResponse
		if _, err := a.do(ctx, http.MethodPost, quantix.PathRegister, token, a.n.req(), &r); err == nil {
			a.n.ID = r.NodeID
			a.mu.Lock()
			a.registered = true
			a.mu.Unlock()
		} else {
			a.fail()
			sleepCtx(ctx, tick)
		}
	}
	hash := quantix.StateHash(nil, nil)
	sendState := true
	for ctx.Err() == nil {
		if sendState {
			if _, err := a.do(ctx, http.MethodPut, quantix.PathState(a.n.ID), a.n.Secret, quantix.NodeState{StateHash: hash}, nil); err != nil {
				a.fail()
				sleepCtx(ctx, tick)
				continue
			}
			sendState = false
		}
		sent := time.Now()
		var hb quantix.HeartbeatResponse
		_, err := a.do(ctx, http.MethodPost, quantix.PathHeartbeat(a.n.ID), a.n.Secret,
			quantix.HeartbeatRequest{ManagementIP: a.n.IP, StateHash: hash}, &hb)
		now := time.Now()
		a.mu.Lock()
		if err == nil {
			a.lastAckSent = sent
			a.acks = append(a.acks, now)
			if hb.FullSync {
				a.fullSyncs = append(a.fullSyncs, now)
				sendState = true
			}
		} else if ctx.Err() == nil {
			a.failures++
		}
		a.mu.Unlock()
		sleepCtx(ctx, tick)
	}
}

func (a *haAgent) fail() {
	a.mu.Lock()
	a.failures++
	a.mu.Unlock()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// TestFailoverStreamingStandby (docs/design.md §17): a primary with a synchronous
// streaming standby, two vDC processes on a multi-host database URL
// (target_session_attrs=read-write), and agents heartbeating both. The primary is
// stopped the immediate way (pg_ctl stop -m immediate) and the standby promoted:
// every acknowledged registration and heartbeat is on the new primary, no node is
// demoted, each node is asked for its full state exactly once (one new epoch for
// the whole cluster), and heartbeats resume within seconds of the promotion.
func TestFailoverStreamingStandby(t *testing.T) {
	skipShort(t)
	const (
		agents = 24
		iv     = time.Second
		tick   = 200 * time.Millisecond
	)
	r := vdctest.StartReplicated(t, true)
	dbURL, err := vdctest.MultiHostURL(r.Primary.NewDatabase(t), r.Primary, r.Standby)
	if err != nil {
		t.Fatal(err)
	}
	// The vDCs' logs go to a buffer, shown when the test fails: a failover makes
	// many lines.
	logs := &syncbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vDC logs:\n%s", logs.String())
		}
	})
	opts := vdctest.Options{DatabaseURL: dbURL, HeartbeatInterval: iv, JoinTokens: []string{"ha-join-" + newSecret()},
		AdminToken: "ha-admin-" + newSecret(), Log: logs}
	vdcs := []*vdctest.VDC{vdctest.Start(t, opts), vdctest.Start(t, opts)}
	// The agent CA is cluster-wide: both vDCs serve certificates agents trust by one pin.
	if vdcs[0].Pin == "" || vdcs[0].Pin != vdcs[1].Pin {
		t.Fatalf("agent CA pins %q and %q, want one cluster-wide pin", vdcs[0].Pin, vdcs[1].Pin)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	as := make([]*haAgent, agents)
	for i := range as {
		as[i] = &haAgent{n: newNode(fmt.Sprintf("ha-%02d", i)), vdc: vdcs[i%2],
			hc: vdcs[i%2].AgentClient()}
		wg.Add(1)
		go func() { defer wg.Done(); as[i].run(ctx, opts.JoinTokens[0], tick) }()
	}
	defer func() { cancel(); wg.Wait() }()
	// Steady state: every agent registered, its state in, heartbeating.
	deadline := time.Now().Add(30 * time.Second)
	for {
		steady := 0
		for _, a := range as {
			a.mu.Lock()
			if a.registered && len(a.acks) >= 3 {
				steady++
			}
			a.mu.Unlock()
		}
		if steady == agents {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d agents heartbeating after 30s", steady, agents)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * iv)

	killed := time.Now()
	r.KillPrimary(t)
	// The time an operator or Patroni takes to decide: longer than 2 intervals, so
	// every node's last heartbeat is old enough for not_ready when the database is
	// back; only the cluster's grace keeps them ready.
	time.Sleep(5 * iv / 2)
	promoteStart := time.Now()
	r.Promote(t)
	promoted := time.Now()
	t.Logf("primary stopped (immediate); standby promoted %s later (pg_promote took %s)",
		promoted.Sub(killed).Round(10*time.Millisecond), promoted.Sub(promoteStart).Round(10*time.Millisecond))

	// Heartbeats resume; let every agent run a few intervals on the new primary.
	var firstAfter []time.Duration
	deadline = time.Now().Add(30 * time.Second)
	for {
		firstAfter = firstAfter[:0]
		for _, a := range as {
			a.mu.Lock()
			for _, at := range a.acks {
				if at.After(promoted) {
					firstAfter = append(firstAfter, at.Sub(promoted))
					break
				}
			}
			a.mu.Unlock()
		}
		if len(firstAfter) == agents {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d agents heartbeating 30s after the promotion", len(firstAfter), agents)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(firstAfter, func(i, j int) bool { return firstAfter[i] < firstAfter[j] })
	t.Logf("promotion to the first acknowledged heartbeat: first agent %s, median %s, last %s",
		firstAfter[0].Round(10*time.Millisecond), firstAfter[agents/2].Round(10*time.Millisecond),
		firstAfter[agents-1].Round(10*time.Millisecond))
	time.Sleep(4 * iv)

	// The read-only trap: the old primary's address, first in the URL, comes back
	// as a standby. New connections skip it (target_session_attrs=read-write) and
	// nothing fails.
	failuresBefore := func() int {
		n := 0
		for _, a := range as {
			a.mu.Lock()
			n += a.failures
			a.mu.Unlock()
		}
		return n
	}
	r.RejoinOldPrimary(t)
	for _, v := range vdcs { // fresh connections must choose again
		v.Restart(t)
	}
	f0 := failuresBefore()
	time.Sleep(4 * iv)
	if f := failuresBefore() - f0; f != 0 {
		t.Errorf("%d failed requests with the old primary's address back as a standby, want 0", f)
	}
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, r.Standby.AdminURL())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var recovery bool
		var sessions int
		if err := c.QueryRow(ctx, `SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_activity WHERE usename = $1)`,
			vdctest.Role).Scan(&recovery, &sessions); err != nil {
			t.Fatal(err)
		}
		if !recovery || sessions != 0 {
			t.Errorf("the old primary's address: in recovery %v, %d vDC sessions; want a standby the vDCs never use", recovery, sessions)
		}
	}()
	cancel()
	wg.Wait()

	// What the new primary holds.
	dbctx, dbcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dbcancel()
	conn, err := pgx.Connect(dbctx, dbURL) // finds the writable one
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(dbctx)
	failures := 0
	for _, a := range as {
		a.mu.Lock()
		failures += a.failures
		var lastHB time.Time
		err := conn.QueryRow(dbctx, `SELECT last_heartbeat FROM nodes WHERE id = $1`, a.n.ID).Scan(&lastHB)
		switch {
		case err != nil:
			t.Errorf("%s (%s): acknowledged registration missing after the failover: %v", a.n.Hostname, a.n.ID, err)
		case lastHB.Before(a.lastAckSent):
			t.Errorf("%s: last_heartbeat %v is older than the last acknowledged heartbeat (sent %v)", a.n.Hostname, lastHB, a.lastAckSent)
		}
		var after int
		for _, f := range a.fullSyncs {
			if f.After(killed) {
				after++
			}
		}
		if after != 1 {
			t.Errorf("%s: asked for its full state %d times after the failover, want once (full syncs at %v)", a.n.Hostname, after, a.fullSyncs)
		}
		a.mu.Unlock()
	}
	var demoted []string
	rows, err := conn.Query(dbctx, `SELECT hostname || ': ' || message FROM node_events
		WHERE kind = 'phase' AND message NOT LIKE '% -> ready%' ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	demoted, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(demoted) != 0 {
		t.Errorf("nodes demoted for the control plane's failover: %v", demoted)
	}
	var epochs int
	if err := conn.QueryRow(dbctx, `SELECT count(DISTINCT state_epoch) FROM nodes`).Scan(&epochs); err != nil || epochs != 1 {
		t.Errorf("nodes' state epochs: %d distinct (%v), want 1: the cluster's new one", epochs, err)
	}
	t.Logf("%d agents, %d failed requests in all (refused or 503 while no primary was writable)", agents, failures)
}
