package vdc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/netlab"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

// haAgent is a simulated node agent for the failover test: it registers, sends
// its full state, and heartbeats its vDC, retrying on errors and 503s as the real
// agent does, and records what the vDC acknowledged.
type haAgent struct {
	n   *node
	url string // the vDC's
	hc  *http.Client
	// silent: the agent sends nothing (a node gone quiet) until cleared.
	silent atomic.Bool

	mu sync.Mutex
	// registered: the vDC acknowledged the registration; lastAckSent is when the
	// newest acknowledged heartbeat was sent (its transaction started after).
	registered  bool
	lastAckSent time.Time
	acks        []time.Time // when each acknowledged heartbeat's answer came
	fullSyncs   []time.Time // when the vDC asked for the full state
	failures    int
	lastFail    time.Time // when the newest failed request ended
}

func (a *haAgent) do(ctx context.Context, method, path, token string, body, out any) (int, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, method, a.url+path, bytes.NewReader(b))
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
		if a.silent.Load() {
			sleepCtx(ctx, tick)
			continue
		}
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
			a.lastFail = now
		}
		a.mu.Unlock()
		sleepCtx(ctx, tick)
	}
}

func (a *haAgent) fail() {
	a.mu.Lock()
	a.failures++
	a.lastFail = time.Now()
	a.mu.Unlock()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// haCluster is two vDC processes on one database URL and agents heartbeating
// them, half on each.
type haCluster struct {
	vdcs   []*vdctest.VDC
	agents []*haAgent
	iv     time.Duration
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startHA starts two vDCs on dbURL and n agents, and waits until every agent
// registered and heartbeats.
func startHA(t *testing.T, dbURL string, n int, iv, tick time.Duration) *haCluster {
	t.Helper()
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
	c := &haCluster{vdcs: []*vdctest.VDC{vdctest.Start(t, opts), vdctest.Start(t, opts)}, iv: iv}
	// The agent CA is cluster-wide: both vDCs serve certificates agents trust by one pin.
	if c.vdcs[0].Pin == "" || c.vdcs[0].Pin != c.vdcs[1].Pin {
		t.Fatalf("agent CA pins %q and %q, want one cluster-wide pin", c.vdcs[0].Pin, c.vdcs[1].Pin)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.agents = make([]*haAgent, n)
	for i := range c.agents {
		v := c.vdcs[i%2]
		c.agents[i] = &haAgent{n: newNode(fmt.Sprintf("ha-%02d", i)), url: v.AgentURL,
			hc: &http.Client{Timeout: 10 * time.Second, Transport: v.AgentClient().Transport}}
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.agents[i].run(ctx, opts.JoinTokens[0], tick) }()
	}
	t.Cleanup(c.stop)
	waitAgents(t, c.agents, "registered and heartbeating", 30*time.Second, func(a *haAgent) bool { return a.registered && len(a.acks) >= 3 })
	time.Sleep(2 * iv)
	return c
}

// waitAgents waits until ok holds for every agent (called under the agent's lock).
func waitAgents(t *testing.T, as []*haAgent, what string, timeout time.Duration, ok func(*haAgent) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := 0
		for _, a := range as {
			a.mu.Lock()
			if ok(a) {
				n++
			}
			a.mu.Unlock()
		}
		if n == len(as) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d agents %s after %v", n, len(as), what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the agents (idempotent).
func (c *haCluster) stop() {
	c.cancel()
	c.wg.Wait()
}

// failures counts the agents' failed requests so far.
func (c *haCluster) failures() int {
	n := 0
	for _, a := range c.agents {
		a.mu.Lock()
		n += a.failures
		a.mu.Unlock()
	}
	return n
}

// waitResumed waits until every agent has a heartbeat acknowledged after since and
// logs how long after since the first, the median and the last agent got one.
func (c *haCluster) waitResumed(t *testing.T, what string, since time.Time, timeout time.Duration) {
	t.Helper()
	var firstAfter []time.Duration
	deadline := time.Now().Add(timeout)
	for {
		firstAfter = firstAfter[:0]
		for _, a := range c.agents {
			a.mu.Lock()
			for _, at := range a.acks {
				if at.After(since) {
					firstAfter = append(firstAfter, at.Sub(since))
					break
				}
			}
			a.mu.Unlock()
		}
		if len(firstAfter) == len(c.agents) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d agents heartbeating %v after %s", len(firstAfter), len(c.agents), timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(firstAfter, func(i, j int) bool { return firstAfter[i] < firstAfter[j] })
	n := len(firstAfter)
	t.Logf("%s to the first acknowledged heartbeat: first agent %s, median %s, last %s", what,
		firstAfter[0].Round(10*time.Millisecond), firstAfter[n/2].Round(10*time.Millisecond),
		firstAfter[n-1].Round(10*time.Millisecond))
}

// check stops the agents and checks what the writable server of dbURL holds: every
// acknowledged registration and heartbeat, no node demoted, and each node asked
// for its full state fullSyncs times after since (once per database failover: the
// cluster's epoch, not one per vDC).
func (c *haCluster) check(t *testing.T, dbURL string, since time.Time, fullSyncs int) {
	t.Helper()
	c.stop()
	dbctx, dbcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dbcancel()
	conn, err := pgx.Connect(dbctx, dbURL) // finds the writable one
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(dbctx)
	for _, a := range c.agents {
		a.mu.Lock()
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
			if f.After(since) {
				after++
			}
		}
		if after != fullSyncs {
			t.Errorf("%s: asked for its full state %d times after the failover, want %d (full syncs at %v)", a.n.Hostname, after, fullSyncs, a.fullSyncs)
		}
		a.mu.Unlock()
	}
	rows, err := conn.Query(dbctx, `SELECT hostname || ': ' || message FROM node_events
		WHERE kind = 'phase' AND message NOT LIKE '% -> ready%' ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	demoted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(demoted) != 0 {
		t.Errorf("nodes demoted for the control plane's failover: %v", demoted)
	}
	var epochs int
	if err := conn.QueryRow(dbctx, `SELECT count(DISTINCT state_epoch) FROM nodes`).Scan(&epochs); err != nil || epochs != 1 {
		t.Errorf("nodes' state epochs: %d distinct (%v), want 1: the cluster's current one", epochs, err)
	}
	t.Logf("%d agents, %d failed requests in all (refused or 503 while no primary was writable)", len(c.agents), c.failures())
}

// checkNeverUsed checks that p is a standby no vDC has a session on.
func checkNeverUsed(t *testing.T, p *vdctest.Postgres) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.AdminURL())
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
	const iv = time.Second
	r := vdctest.StartReplicated(t, true)
	dbURL, err := vdctest.MultiHostURL(r.Primary.NewDatabase(t), r.Primary, r.Standby)
	if err != nil {
		t.Fatal(err)
	}
	c := startHA(t, dbURL, 24, iv, 200*time.Millisecond)

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
	c.waitResumed(t, "promotion", promoted, 30*time.Second)
	time.Sleep(4 * iv)

	// The read-only trap: the old primary's address, first in the URL, comes back
	// as a standby. New connections skip it (target_session_attrs=read-write) and
	// nothing fails.
	r.RejoinOldPrimary(t)
	for _, v := range c.vdcs { // fresh connections must choose again
		v.Restart(t)
	}
	// A request racing a restart may meet the closing connection; count from when
	// every agent has a heartbeat acknowledged by the restarted vDCs.
	c.waitResumed(t, "the vDCs' restart", time.Now(), 30*time.Second)
	f0 := c.failures()
	time.Sleep(4 * iv)
	if f := c.failures() - f0; f != 0 {
		t.Errorf("%d failed requests with the old primary's address back as a standby, want 0", f)
	}
	checkNeverUsed(t, r.Standby)
	c.check(t, dbURL, killed, 1)
}

// TestFailoverPatroni (docs/design.md §17): the same two vDCs and agents on a
// two-member Patroni cluster (etcd, synchronous_mode, failsafe_mode), through the
// faults a site meets: the primary's postgres killed with SIGKILL, etcd stopped,
// and the primary's machine hung (its Patroni frozen with SIGSTOP, then reset by
// its watchdog). The vDCs follow whichever server Patroni makes the primary, lose
// nothing acknowledged, demote no node, and ask each node for its full state once
// per change of timeline.
func TestFailoverPatroni(t *testing.T) {
	skipShort(t)
	const iv = time.Second
	pc := vdctest.StartPatroni(t, 2)
	leader, err := pc.WaitLeader(nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dbURL, err := pc.URL(leader.Postgres(pc).NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	tl0 := timeline(t, dbURL)
	c := startHA(t, dbURL, 16, iv, 200*time.Millisecond)
	start := time.Now()

	// 1. kill -9 of the primary's postgres: Patroni brings it back (or fails over).
	killed := time.Now()
	if err := leader.KillPostgres(); err != nil {
		t.Fatal(err)
	}
	c.waitResumed(t, "kill -9 of the primary's postgres", killed, 60*time.Second)
	if err := pc.WaitReplicas(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * iv)

	// 2. etcd stopped for longer than the leader key lives: failsafe_mode keeps the
	// primary, so the control plane carries on without a single failed request.
	pc.StopEtcd()
	f0 := c.failures()
	stopped := time.Now()
	time.Sleep(2 * vdctest.PatroniTTL * time.Second)
	if f := c.failures() - f0; f != 0 {
		t.Errorf("%d failed requests while etcd was stopped for %s, want 0 (failsafe_mode)", f, time.Since(stopped).Round(time.Second))
	}
	if err := pc.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * vdctest.PatroniLoopWait * time.Second)

	// 3. The primary's machine hangs: its Patroni stops (SIGSTOP) while its postgres
	// runs on, and its watchdog resets the machine before the leader key expires
	// (Patroni's safety margin; here the reset kills Patroni and postgres). The
	// synchronous standby takes over when the key expires; the machine reboots and
	// its Patroni brings the old primary back as a replica (pg_rewind).
	leader, err = pc.WaitLeader(nil, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	time.Sleep((vdctest.PatroniTTL - vdctest.PatroniSafetyMargin) * time.Second)
	if err := leader.Reset(); err != nil {
		t.Fatal(err)
	}
	reset := time.Now()
	next, err := pc.WaitLeader(leader, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s frozen; %s leads %s later", leader.Name, next.Name, time.Since(frozen).Round(100*time.Millisecond))
	c.waitResumed(t, "the hung primary's reset", reset, 60*time.Second)
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	if err := pc.WaitReplicas(90 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, leader.Log())
	}
	for _, v := range c.vdcs { // fresh connections must choose again
		v.Restart(t)
	}
	c.waitResumed(t, "the vDCs' restart", time.Now(), 30*time.Second)
	f0 = c.failures()
	time.Sleep(4 * iv)
	if f := c.failures() - f0; f != 0 {
		t.Errorf("%d failed requests with the old primary back as a replica, want 0", f)
	}
	checkNeverUsed(t, leader.Postgres(pc))
	tl1 := timeline(t, dbURL)
	t.Logf("timeline %d -> %d", tl0, tl1)
	c.check(t, dbURL, start, tl1-tl0)
}

// timeline is the WAL timeline of the writable server of dbURL.
func timeline(t *testing.T, dbURL string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tl int
	if err := conn.QueryRow(ctx, `SELECT timeline_id FROM pg_control_checkpoint()`).Scan(&tl); err != nil {
		t.Fatal(err)
	}
	return tl
}

// TestFrozenVDC (docs/design.md §17): two vDCs on one database, one of them a
// process frozen (SIGSTOP) for longer than the liveness interval and resumed, again
// and again, while nodes go silent and come back. Every phase change is recorded
// exactly once, and the frozen vDC's stall grants no liveness grace that would
// hold back the demotion of nodes that really went silent.
func TestFrozenVDC(t *testing.T) {
	skipShort(t)
	const (
		iv     = time.Second
		agents = 9
		rounds = 3
	)
	bin := vdctest.BuildVDC(t)
	opts := vdctest.Options{DatabaseURL: vdctest.Shared(t).NewDatabase(t), HeartbeatInterval: iv,
		JoinTokens: []string{"frozen-join-" + newSecret()}, AdminToken: "frozen-admin-" + newSecret()}
	running := vdctest.Start(t, opts)
	frozen := vdctest.StartProcess(t, bin, opts)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	as := make([]*haAgent, agents)
	for i := range as {
		as[i] = &haAgent{n: newNode(fmt.Sprintf("frozen-%d", i)), url: running.AgentURL,
			hc: &http.Client{Timeout: 10 * time.Second, Transport: running.AgentClient().Transport}}
		wg.Add(1)
		go func() { defer wg.Done(); as[i].run(ctx, opts.JoinTokens[0], 200*time.Millisecond) }()
	}
	defer func() { cancel(); wg.Wait() }()
	// Past the start grace of both vDCs, every node ready.
	time.Sleep(4 * iv)
	for _, a := range as {
		running.WaitPhase(t, a.n.ID, quantix.PhaseReady, 10*time.Second)
	}
	quiet := as[:3] // a third: no mass silence
	for round := range rounds {
		for _, a := range quiet {
			a.silent.Store(true)
		}
		silenced := time.Now()
		// The frozen vDC stalls for 1.5 intervals at a time, with 0.3 s between,
		// until the quiet nodes are disconnected.
		for {
			if err := frozen.Freeze(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * iv / 2)
			if err := frozen.Thaw(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			n := 0
			for _, a := range quiet {
				if running.Node(t, a.n.ID).Phase == quantix.PhaseDisconnected {
					n++
				}
			}
			if n == len(quiet) {
				break
			}
			if time.Since(silenced) > 20*iv {
				t.Fatalf("round %d: %d of %d silent nodes disconnected after %s (a grace from the frozen vDC?)",
					round, n, len(quiet), time.Since(silenced).Round(100*time.Millisecond))
			}
		}
		t.Logf("round %d: silent nodes disconnected %s after they went quiet (3 intervals is the rule)", round,
			time.Since(silenced).Round(100*time.Millisecond))
		for _, a := range quiet {
			a.silent.Store(false)
		}
		for _, a := range quiet {
			running.WaitPhase(t, a.n.ID, quantix.PhaseReady, 10*time.Second)
		}
	}
	cancel()
	wg.Wait()
	for i, a := range as {
		var got []string
		for _, ev := range running.NodeEvents(t, a.n.ID) {
			if ev.Kind == "phase" {
				change, _, _ := strings.Cut(ev.Message, " (")
				got = append(got, change)
			}
		}
		var want []string
		if i < len(quiet) {
			for range rounds {
				want = append(want, "ready -> not_ready", "not_ready -> disconnected", "disconnected -> ready")
			}
		}
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Errorf("%s: phase history %q, want %q", a.n.Hostname, got, want)
		}
	}
}

// nsDialer dials from inside ns (sockets stay in the namespace they were made in).
func nsDialer(ns *netlab.NS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// TestPartitionPrimary (docs/design.md §17): a network partition between a vDC and
// its PostgreSQL primary (100% silent loss on the link, both ways): the vDC
// notices within its database_timeout and answers 503 instead of hanging; when the
// link heals, heartbeats resume, nothing acknowledged is lost and no node is
// demoted for the control plane's trouble. The vDC (a qx-vdc process) and the
// agents' connections live in one network namespace, PostgreSQL in another.
func TestPartitionPrimary(t *testing.T) {
	skipShort(t)
	const (
		iv       = time.Second
		deadline = 2 * time.Second // database_timeout
		agents   = 8
	)
	pair := netlab.NewPair(t, "qxpart")
	pair.Client.Addr(pair.Client.Link("eth0"), "10.77.0.2/24")
	if err := pair.Client.Handle.LinkSetUp(pair.Client.Link("eth0")); err != nil {
		t.Fatal(err)
	}
	fromVDC := nsDialer(pair.Client)
	pg, err := vdctest.RunPostgres(vdctest.PostgresConfig{Host: netlab.Gateway, Dial: fromVDC,
		Start: func(cmd *exec.Cmd) error { return pair.Far.Do(cmd.Start) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	dbURL := pg.NewDatabase(t)
	opts := vdctest.Options{DatabaseURL: dbURL, HeartbeatInterval: iv, DatabaseTimeout: deadline,
		JoinTokens: []string{"part-join-" + newSecret()}, AdminToken: "part-admin-" + newSecret(),
		StartCmd: func(cmd *exec.Cmd) error { return pair.Client.Do(cmd.Start) }}
	v := vdctest.StartProcess(t, vdctest.BuildVDC(t), opts)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	as := make([]*haAgent, agents)
	for i := range as {
		tr := v.AgentTransport()
		tr.DialContext = fromVDC
		as[i] = &haAgent{n: newNode(fmt.Sprintf("part-%d", i)), url: v.URL, hc: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
		wg.Add(1)
		go func() { defer wg.Done(); as[i].run(ctx, opts.JoinTokens[0], 200*time.Millisecond) }()
	}
	defer func() { cancel(); wg.Wait() }()
	waitAgents(t, as, "heartbeating", 30*time.Second, func(a *haAgent) bool { return len(a.acks) >= 3 })
	time.Sleep(4 * iv) // past the start grace

	// tc netem is not in every kernel (not in this machine's); an iptables DROP of
	// everything arriving on the link, in both namespaces, is the same 100% silent
	// loss both ways (a DROP on OUTPUT would not be silent: the sender gets EPERM).
	partition := func(op string) {
		t.Helper()
		for _, side := range []struct{ ns, dev string }{{pair.Client.Name, "eth0"}, {pair.Far.Name, "gw0"}} {
			args := []string{"netns", "exec", side.ns, "iptables", op, "INPUT", "-i", side.dev, "-j", "DROP"}
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s (run make deps: apt-get install iptables)", strings.Join(args, " "), err, out)
			}
		}
	}
	f0 := make([]int, agents)
	for i, a := range as {
		a.mu.Lock()
		f0[i] = a.failures
		a.mu.Unlock()
	}
	partition("-I")
	cut := time.Now()
	// Every agent gets an answer saying the vDC cannot serve it (503), within the
	// deadline of a request in flight plus one heartbeat tick.
	var detected []time.Duration
	for len(detected) < agents {
		detected = detected[:0]
		for i, a := range as {
			a.mu.Lock()
			if a.failures > f0[i] {
				detected = append(detected, a.lastFail.Sub(cut))
			}
			a.mu.Unlock()
		}
		if time.Since(cut) > 30*time.Second {
			t.Fatalf("%d of %d agents saw a failed request 30s into the partition", len(detected), agents)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(detected, func(i, j int) bool { return detected[i] < detected[j] })
	t.Logf("partition to each agent's first failed request (database_timeout %s): first %s, median %s, last %s",
		deadline, detected[0].Round(10*time.Millisecond), detected[agents/2].Round(10*time.Millisecond),
		detected[agents-1].Round(10*time.Millisecond))
	if last := detected[agents-1]; last > deadline+time.Second {
		t.Errorf("the partition took %s to show, want at most database_timeout %s + 1s", last.Round(10*time.Millisecond), deadline)
	}
	time.Sleep(3 * iv) // long enough that every node's heartbeat is too old for ready
	partition("-D")
	healed := time.Now()
	waitAgents(t, as, "heartbeating after the partition healed", 60*time.Second, func(a *haAgent) bool {
		return len(a.acks) > 0 && a.acks[len(a.acks)-1].After(healed)
	})
	t.Logf("every agent heartbeating again %s after the partition healed", time.Since(healed).Round(10*time.Millisecond))
	time.Sleep(2 * iv)
	cancel()
	wg.Wait()

	conn, err := pg.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, a := range as {
		var lastHB time.Time
		err := conn.QueryRow(context.Background(), `SELECT last_heartbeat FROM nodes WHERE id = $1`, a.n.ID).Scan(&lastHB)
		switch {
		case err != nil:
			t.Errorf("%s: acknowledged registration missing: %v", a.n.Hostname, err)
		case lastHB.Before(a.lastAckSent):
			t.Errorf("%s: last_heartbeat %v is older than the last acknowledged heartbeat (sent %v)", a.n.Hostname, lastHB, a.lastAckSent)
		}
	}
	rows, err := conn.Query(context.Background(), `SELECT hostname || ': ' || message FROM node_events
		WHERE kind = 'phase' AND message NOT LIKE '% -> ready%' ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	demoted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(demoted) != 0 {
		t.Errorf("nodes demoted for a partition between the vDC and its database: %v", demoted)
	}
}
