// Command qx-vdc-load measures the vDC on this machine: it starts a durable
// PostgreSQL 15 (fsync on) and a real qx-vdc process, runs a registration storm with
// a duplicate check, drives N simulated nodes heartbeating (open loop at a target
// rate, or closed loop at full speed) reporting heartbeats/s with p50/p99 latency,
// and runs pgbench's single-row UPDATE against the same server for comparison. With
// --desired-vms it then gives every node that many managed VMs and a desired-state
// long-poll held open, as agents do, measures the heartbeats again in the same run,
// and measures desired-state fetches. The simulated agents talk TLS with the agent
// CA pin, as agents do; --transport plain runs the same over plain HTTP
// (agent_plain_http) to compare what TLS costs (pair the two runs).
//
// --vdcs N runs N qx-vdc processes on the one database (node i heartbeats to vDC
// i mod N) and reports each; --standby async|sync gives the PostgreSQL a streaming
// standby made with pg_basebackup, synchronous or not. Figures from separate runs on
// a shared machine differ more than what is measured, so --compare runs a pair in
// one invocation: "vdcs" (one vDC, then all of them, on the same database) or
// "sync" (an asynchronous standby, then a synchronous one).
//
//	go build -o /tmp/qx-vdc ./vdc/cmd/qx-vdc
//	go run ./vdc/cmd/qx-vdc-load --qx-vdc /tmp/qx-vdc --nodes 10000 --rate 10000 --duration 20s
//	go run ./vdc/cmd/qx-vdc-load --qx-vdc /tmp/qx-vdc --nodes 100 --desired-vms 50 --rate 0 --storm 0
//	go run ./vdc/cmd/qx-vdc-load --qx-vdc /tmp/qx-vdc --compare vdcs --nodes 2000 --rate 0 --storm 0 --duration 10s
//	go run ./vdc/cmd/qx-vdc-load --qx-vdc /tmp/qx-vdc --standby async --compare sync --nodes 2000 --rate 0 --storm 0 --duration 10s
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/client"
	"github.com/quantix/quantix/vdc/vdctest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qx-vdc-load:", err)
		os.Exit(1)
	}
}

type options struct {
	qxVDC       string
	nodes       int
	storm       int
	rate        int
	duration    time.Duration
	conns       int
	inflight    int
	pgbench     string
	pgbenchTime time.Duration
	vdcLog      string
	writers     int
	transport   string
	// tlsCfg trusts the vDC's agent CA (nil over plain HTTP).
	tlsCfg     *tls.Config
	desiredVMs int
	vdcs       int
	standby    string
	compare    string
	rounds     int
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("qx-vdc-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.qxVDC, "qx-vdc", "qx-vdc", "qx-vdc `binary` to run")
	fs.IntVar(&o.nodes, "nodes", 10000, "simulated nodes heartbeating")
	fs.IntVar(&o.storm, "storm", 10000, "nodes in the registration storm (each registered twice at once)")
	fs.IntVar(&o.rate, "rate", 10000, "target heartbeats per second (open loop); 0: closed loop, as fast as possible")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "heartbeat phase length")
	fs.IntVar(&o.conns, "conns", 256, "HTTP connections to the vDC")
	fs.IntVar(&o.inflight, "inflight", 2048, "most heartbeats in flight at once (open loop); closed loop uses --conns workers")
	fs.StringVar(&o.pgbench, "pgbench-clients", "8,32", "pgbench client counts to run (\"\": skip pgbench)")
	fs.DurationVar(&o.pgbenchTime, "pgbench-time", 10*time.Second, "pgbench run length per client count")
	fs.StringVar(&o.vdcLog, "vdc-log", "", "write the qx-vdc log to this `file` (default: discard)")
	fs.IntVar(&o.writers, "heartbeat-writers", 0, "qx-vdc's heartbeat_writers (0: its default)")
	fs.StringVar(&o.transport, "transport", "tls", "agents' requests over \"tls\" (pinned, as agents) or \"plain\" HTTP (agent_plain_http)")
	fs.IntVar(&o.desiredVMs, "desired-vms", 0, "then create this many managed VMs per heartbeat node, hold a desired-state long-poll per node "+
		"and measure the heartbeats again (against the run without VMs), then desired-state fetches/s")
	fs.IntVar(&o.vdcs, "vdcs", 1, "qx-vdc processes on the one database; node i heartbeats to vDC i mod N")
	fs.StringVar(&o.standby, "standby", "none", "a streaming standby of the PostgreSQL made with pg_basebackup: \"none\", \"async\" or \"sync\" "+
		"(synchronous_standby_names = '*': every commit waits for the standby)")
	fs.IntVar(&o.rounds, "rounds", 1, "with --compare: pairs of phases to run, the order alternating (AB, BA, AB, ...)")
	fs.StringVar(&o.compare, "compare", "", "measure a pair in the same run, one phase after the other: \"vdcs\" (all heartbeats to one vDC, "+
		"then spread over --vdcs, at least 2) or \"sync\" (an asynchronous standby, then a synchronous one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	bin, err := exec.LookPath(o.qxVDC)
	if err != nil {
		return fmt.Errorf("qx-vdc binary: %w (build it: go build -o /tmp/qx-vdc ./vdc/cmd/qx-vdc)", err)
	}

	fmt.Fprintf(stdout, "machine: %d CPUs, load average %s; PostgreSQL 15 durable (fsync on, synchronous_commit on); agents over %s; %d qx-vdc; standby %s\n",
		numCPU(), loadAvg(), o.transport, o.vdcs, o.standby)
	defer func() { fmt.Fprintf(stdout, "load average at the end: %s\n", loadAvg()) }()
	pgCfg := vdctest.PostgresConfig{Durable: true, MaxConnections: 300}
	var pg *vdctest.Postgres
	var repl *vdctest.Replicated
	if o.standby == "none" {
		if pg, err = vdctest.RunPostgres(pgCfg); err != nil {
			return err
		}
		defer pg.Stop()
	} else {
		// pg_basebackup on this machine, the standby on its own port and folder.
		if repl, err = vdctest.RunReplicated(pgCfg, o.standby == "sync"); err != nil {
			return err
		}
		defer repl.Stop()
		pg = repl.Primary
		fmt.Fprintf(stdout, "standby: port %d, %s (pid %d)\n", repl.Standby.Port, repl.Standby.Dir, repl.Standby.Pid())
	}
	dbURL, err := pg.CreateDatabase(ctx)
	if err != nil {
		return err
	}
	joinToken, adminToken := "load-join-"+secret(), "load-admin-"+secret()
	var vdcs []*vdcProc
	defer func() {
		for _, v := range vdcs {
			v.stop()
		}
	}()
	var pins []string
	// One after the other: the first migrates the database and stores the admin
	// token, which is the cluster's; the others are given the same one.
	for i := range o.vdcs {
		v, err := startVDC(ctx, bin, i, pg.Dir, dbURL, joinToken, adminToken, o)
		if err != nil {
			return fmt.Errorf("qx-vdc %d: %w", i+1, err)
		}
		vdcs = append(vdcs, v)
		if !slices.Contains(pins, v.pin) {
			pins = append(pins, v.pin)
		}
		fmt.Fprintf(stdout, "qx-vdc %d: %s (pid %d), vdc.toml: %q\n", i+1, v.url, v.cmd.Process.Pid, v.toml)
	}
	fmt.Fprintln(stdout)
	if o.transport == "tls" {
		o.tlsCfg = quantix.PinnedTLS(pins, nil)
	}
	for _, v := range vdcs {
		if v.client, err = client.New(client.Config{URL: v.agentURL(o), Token: adminToken, UserAgent: "qx-vdc-load/" + quantix.Version,
			HTTPClient: &http.Client{Transport: &http.Transport{MaxIdleConns: o.conns, MaxIdleConnsPerHost: o.conns, MaxConnsPerHost: o.conns,
				IdleConnTimeout: time.Minute, TLSClientConfig: o.tlsCfg}, Timeout: 30 * time.Second}}); err != nil {
			return err
		}
	}
	c := vdcs[0].client

	if o.storm > 0 {
		if err := storm(ctx, c, joinToken, dbURL, o, stdout); err != nil {
			return err
		}
	}
	if o.nodes > 0 {
		cpu := func() cpuSample {
			s := cpuSample{pg: cpuTime(pg.Pid(), true)}
			for _, v := range vdcs {
				s.vdc = append(s.vdc, cpuTime(v.cmd.Process.Pid, false))
			}
			if repl != nil {
				s.standby = cpuTime(repl.Standby.Pid(), true)
			}
			return s
		}
		// Like pgbench, start the measured phase from a settled database: vacuumed
		// and checkpointed after the bulk inserts, so autovacuum and a checkpoint do
		// not land in the middle of it by chance.
		settle := func() error { return settleDB(ctx, pg.AdminURL(), dbURL) }
		if err := heartbeats(ctx, vdcs, repl, joinToken, o, cpu, settle, stdout); err != nil {
			return err
		}
	}
	for i, v := range vdcs {
		fmt.Fprintf(stdout, "qx-vdc %d peak RSS: %s\n", i+1, v.peakRSS())
	}
	if repl != nil {
		if err := reportStandby(ctx, pg.AdminURL(), stdout); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout)
	if o.pgbench != "" {
		for _, v := range vdcs {
			v.stop() // pgbench gets the machine to itself, as the vDC had
		}
		switch {
		case o.compare == "sync":
			// The same pair for the yardstick: asynchronous, then synchronous.
			for _, sync := range []bool{false, true} {
				if err := repl.SetSync(sync); err != nil {
					return err
				}
				if err := pgbench(ctx, pg, o, standbyLabel(repl), stdout); err != nil {
					return err
				}
			}
		case repl != nil:
			return pgbench(ctx, pg, o, standbyLabel(repl), stdout)
		default:
			return pgbench(ctx, pg, o, "", stdout)
		}
	}
	return nil
}

// standbyLabel says in pgbench's heading what the standby is.
func standbyLabel(r *vdctest.Replicated) string {
	if r.Sync {
		return ", synchronous standby"
	}
	return ", asynchronous standby"
}

// check refuses flag values the run cannot honour, saying which values it takes.
func (o *options) check() error {
	if o.transport != "tls" && o.transport != "plain" {
		return fmt.Errorf("--transport %q: want tls or plain", o.transport)
	}
	if o.vdcs < 1 {
		return fmt.Errorf("--vdcs %d: want at least 1 qx-vdc", o.vdcs)
	}
	if !slices.Contains([]string{"none", "async", "sync"}, o.standby) {
		return fmt.Errorf("--standby %q: want none, async or sync", o.standby)
	}
	switch o.compare {
	case "":
	case "vdcs":
		if o.vdcs < 2 {
			o.vdcs = 2
		}
	case "sync":
		if o.standby == "none" {
			return errors.New("--compare sync needs a standby: add --standby async (the first phase is asynchronous, the second synchronous)")
		}
	default:
		return fmt.Errorf("--compare %q: want vdcs or sync (or leave it out)", o.compare)
	}
	if o.rounds < 1 {
		return fmt.Errorf("--rounds %d: want at least 1 pair of phases", o.rounds)
	}
	if o.compare != "" && o.desiredVMs > 0 {
		return errors.New("--compare and --desired-vms each compare phases of their own: run them separately")
	}
	if o.compare != "" && o.nodes == 0 {
		return errors.New("--compare measures heartbeats: give --nodes more than 0")
	}
	return nil
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return bytes.Count(b, []byte("\nprocessor")) + 1
}

// loadAvg is the 1/5/15-minute load average: other work on the machine skews
// every figure, so the output says how busy it was.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

func secret() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func machineID() string {
	s := secret()
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

type vdcProc struct {
	cmd    *exec.Cmd
	url    string // https://: agents' TLS
	pin    string // the agent CA pin
	toml   string // its vdc.toml
	client *client.Client
	once   sync.Once
	done   chan struct{}
}

// agentURL is where the simulated agents reach v: its TLS URL, or the same port
// in plain HTTP with --transport plain.
func (v *vdcProc) agentURL(o options) string {
	if o.transport == "plain" {
		return "http://" + strings.TrimPrefix(v.url, "https://")
	}
	return v.url
}

// startVDC starts qx-vdc number i (from 0) on dbURL with a listen port and a data
// folder (under base) of its own.
func startVDC(ctx context.Context, bin string, i int, base, dbURL, joinToken, adminToken string, o options) (*vdcProc, error) {
	dir := filepath.Join(base, fmt.Sprintf("vdc-%d", i+1))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "vdc.toml")
	// The UI's HTTPS listener and its generated certificate stay on loopback and in
	// the throwaway folder, never on the host's :8443 and /quantix.
	toml := fmt.Sprintf("ui_listen = \"127.0.0.1:0\"\nsecrets_file = %q\ndata_dir = %q\n", filepath.Join(dir, "secrets.toml"), dir)
	if o.transport == "plain" {
		toml += "agent_plain_http = true\n" // the lab flag: plain-HTTP agents for comparison
	}
	if o.writers > 0 {
		toml += fmt.Sprintf("heartbeat_writers = %d\ndatabase_max_conns = %d\n", o.writers, max(16, o.writers+4))
	}
	if err := os.WriteFile(conf, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	logPath := o.vdcLog
	if logPath != "" && i > 0 {
		logPath += "." + strconv.Itoa(i+1)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "serve", "--config", conf, "--listen", addr, "--database-url", dbURL,
		"--join-token", joinToken, "--admin-token", adminToken, "--heartbeat-interval", "10s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Stderr = io.Discard
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd.Stderr = f
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &vdcProc{cmd: cmd, toml: toml, done: make(chan struct{})}
	ready := make(chan quantix.Marker, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m, ok := quantix.ParseMarker(sc.Text()); ok && m.Kind == quantix.MarkerReady {
				select {
				case ready <- m:
				default:
				}
			}
		}
	}()
	go func() { cmd.Wait(); close(p.done) }()
	select {
	case m := <-ready:
		p.url, p.pin = m.Get("url"), m.Get("agent_ca_pin")
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("qx-vdc exited before it was ready (%v); see --vdc-log", cmd.ProcessState)
	case <-time.After(60 * time.Second):
		p.stop()
		return nil, errors.New("qx-vdc not ready after 60s")
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// peakRSS reads VmHWM of the running qx-vdc.
func (p *vdcProc) peakRSS() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func (p *vdcProc) stop() {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
}

type simNode struct {
	req quantix.RegisterRequest
	id  string
	hb  []byte // the whole heartbeat request, prebuilt
	// control marks the nodes without VMs that --desired-vms heartbeats in the
	// same phase as those with VMs, for a comparison under the same machine load.
	control bool
	vdc     int // the vDC it heartbeats to (an index), unless the phase says otherwise
}

func newSimNode(prefix string, i int) *simNode {
	ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
	if i%2 == 1 {
		ip += ":9000" // as seen on a socket: the vDC strips the port
	}
	n := &simNode{req: quantix.RegisterRequest{Hostname: fmt.Sprintf("%s-%06d.load", prefix, i), MachineID: machineID(),
		NodeSecret: secret(), ManagementIP: ip, AgentVersion: "load", MemoryBytes: 1 << 40}}
	return n
}

func registerNode(ctx context.Context, c *client.Client, token string, n *simNode) (quantix.RegisterResponse, error) {
	r, err := c.Register(ctx, token, n.req)
	if err != nil {
		return r, fmt.Errorf("register %s: %w", n.req.Hostname, err)
	}
	return r, nil
}

// parallel runs f(i) for i in [0,n) on workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// storm registers every node twice at the same moment (the agent retrying while
// its first request is in flight) and checks one row and one node_id per hostname.
func storm(ctx context.Context, c *client.Client, token, dbURL string, o options, out io.Writer) error {
	nodes := make([]*simNode, o.storm)
	for i := range nodes {
		nodes[i] = newSimNode("storm", i)
	}
	ids := make([][2]string, o.storm)
	regs := make([][2]string, o.storm)
	var failures atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	parallel(o.storm*2, o.conns, func(k int) {
		i, j := k/2, k%2
		r, err := registerNode(ctx, c, token, nodes[i])
		if err != nil {
			failures.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
		ids[i][j], regs[i][j] = r.NodeID, r.Registration
	})
	elapsed := time.Since(start)
	mismatched, created := 0, 0
	for i := range ids {
		if ids[i][0] != ids[i][1] {
			mismatched++
		}
		for _, r := range regs[i] {
			// The client checked that "registered" came with 201 Created.
			if r == quantix.RegistrationRegistered {
				created++
			}
		}
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var rows, distinct int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT hostname) FROM nodes WHERE hostname LIKE 'storm-%'`).Scan(&rows, &distinct); err != nil {
		return err
	}
	fmt.Fprintf(out, "registration storm: %d nodes x 2 concurrent registrations = %d requests in %.2fs (%.0f/s), %d connections\n",
		o.storm, 2*o.storm, elapsed.Seconds(), float64(2*o.storm)/elapsed.Seconds(), o.conns)
	fmt.Fprintf(out, "  rows %d, distinct hostnames %d, 201 Created %d, node_id mismatches between the two calls %d, failed requests %d\n",
		rows, distinct, created, mismatched, failures.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(out, "  first failure: %s\n", e)
	}
	if rows != o.storm || distinct != o.storm || created != o.storm || mismatched != 0 || failures.Load() != 0 {
		return fmt.Errorf("registration storm: duplicates or failures (see above)")
	}
	fmt.Fprintf(out, "  no duplicates\n\n")
	return nil
}

func heartbeats(ctx context.Context, vdcs []*vdcProc, repl *vdctest.Replicated, token string, o options,
	cpu func() cpuSample, settle func() error, out io.Writer) error {
	c := vdcs[0].client
	all := make([]*simNode, o.nodes)
	for i := range all {
		all[i] = newSimNode("hb", i)
	}
	if o.desiredVMs > 0 {
		for i := range o.nodes {
			n := newSimNode("control", i)
			n.control = true
			all = append(all, n)
		}
	}
	for i, n := range all {
		n.vdc = i % len(vdcs)
	}
	nodes := all // registered and warmed up; the phases use the first o.nodes
	regStart := time.Now()
	var regErr atomic.Value
	parallel(len(nodes), o.conns, func(i int) {
		r, err := registerNode(ctx, c, token, nodes[i])
		if err != nil {
			regErr.CompareAndSwap(nil, err)
			return
		}
		nodes[i].id = r.NodeID
	})
	if e := regErr.Load(); e != nil {
		return e.(error)
	}
	fmt.Fprintf(out, "registered %d heartbeat nodes in %.1fs\n", len(nodes), time.Since(regStart).Seconds())
	var pools []*connPool
	for _, v := range vdcs {
		pool, err := newConnPool(v.agentURL(o), o.conns, o.tlsCfg)
		if err != nil {
			return err
		}
		defer pool.close()
		pools = append(pools, pool)
	}
	for _, n := range nodes {
		body, _ := json.Marshal(quantix.HeartbeatRequest{ManagementIP: n.req.ManagementIP, StateHash: quantix.StateHash(nil, nil)})
		// Every vDC listens on 127.0.0.1: one request serves for all of them.
		n.hb = rawRequest(pools[0].addr, quantix.PathHeartbeat(n.id), n.req.NodeSecret, body)
	}

	// send heartbeats n to vDC t (an index into vdcs).
	send := func(n *simNode, t int) error {
		code, b, err := pools[t].do(n.hb)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("heartbeat %s to qx-vdc %d: %d %s", n.req.Hostname, t+1, code, b)
		}
		return err
	}
	spread := func(n *simNode) int { return n.vdc }
	sendSpread := func(n *simNode) error { return send(n, n.vdc) }
	// Warm up connections and every vDC's secret cache: one heartbeat per node to
	// each vDC, so a phase that sends all of them to one vDC starts warm too.
	for t := range vdcs {
		parallel(len(nodes), o.conns, func(i int) { send(nodes[i], t) })
	}
	if err := settle(); err != nil {
		return err
	}
	ph := phase{vdcs: vdcs, send: send, route: spread, o: o, cpu: cpu}

	if o.desiredVMs > 0 || o.compare != "" {
		// The first phase of a run is the slowest (cold caches, a young heap):
		// warm up before the phase the one with VMs is compared to.
		warm := ph
		warm.o.duration = max(o.duration/4, time.Second)
		warm.measure(ctx, nodes, ", warm-up (not compared)", out)
		if err := settle(); err != nil {
			return err
		}
	}
	nodes = all[:o.nodes]
	switch o.compare {
	case "vdcs":
		one := ph
		one.route = func(*simNode) int { return 0 }
		return comparePhases(out, o.rounds, fmt.Sprintf("%d vDCs against 1", len(vdcs)), settle,
			func() (hbResult, error) {
				return one.measure(ctx, nodes, fmt.Sprintf(", all to qx-vdc 1 (of %d running)", len(vdcs)), out), nil
			},
			func() (hbResult, error) {
				return ph.measure(ctx, nodes, fmt.Sprintf(", node i to qx-vdc i mod %d", len(vdcs)), out), nil
			})
	case "sync":
		withSync := func(sync bool, label string) func() (hbResult, error) {
			return func() (hbResult, error) {
				if err := repl.SetSync(sync); err != nil {
					return hbResult{}, err
				}
				return ph.measure(ctx, nodes, label, out), nil
			}
		}
		err := comparePhases(out, o.rounds, "synchronous standby against asynchronous", settle,
			withSync(false, ", asynchronous standby"), withSync(true, ", synchronous standby (every commit waits for it)"))
		if err == nil {
			err = repl.SetSync(o.standby == "sync") // as asked, for pgbench and the report at the end
		}
		return err
	}
	base := ph.measure(ctx, nodes, "", out)
	if o.desiredVMs == 0 {
		return nil
	}
	// Heartbeats alternate between a node with VMs and a control node without.
	var mixed []*simNode
	for i := range o.nodes {
		mixed = append(mixed, all[i], all[o.nodes+i])
	}
	return desiredLoad(ctx, c, nodes, all, sendSpread, o, out, func() {
		if err := settle(); err != nil {
			fmt.Fprintf(out, "settle: %v\n", err)
		}
		with := ph.measure(ctx, nodes, fmt.Sprintf(", %d managed VMs per node, one desired long-poll per node held open", o.desiredVMs), out)
		fmt.Fprintf(out, "  against no VMs (the phase before, so the machine's other load differs): heartbeats/s %+.1f%%, p99 %+.1f%%\n\n",
			100*(with.rate/base.rate-1), 100*(float64(with.p99)/float64(base.p99)-1))
		ph.measure(ctx, mixed, fmt.Sprintf(" (%d with %d VMs and a long-poll each, %d control nodes without, alternating)", o.nodes, o.desiredVMs, o.nodes), out)
	})
}

// comparePhases measures a and b rounds times, a before b in odd rounds and b
// before a in even ones (so a drift of the machine's other load favours neither),
// settling the database before each phase, and prints each round's pair.
func comparePhases(out io.Writer, rounds int, what string, settle func() error, a, b func() (hbResult, error)) error {
	phases := [2]func() (hbResult, error){a, b}
	for r := range rounds {
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		var res [2]hbResult
		for _, k := range order {
			if err := settle(); err != nil {
				return err
			}
			var err error
			if res[k], err = phases[k](); err != nil {
				return err
			}
		}
		compared(out, fmt.Sprintf("%s, round %d of %d", what, r+1, rounds), res[0], res[1])
	}
	return nil
}

// compared prints how phase b differs from phase a.
func compared(out io.Writer, what string, a, b hbResult) {
	fmt.Fprintf(out, "%s (same run, phase after phase, so the machine's other load may differ): heartbeats/s %.0f -> %.0f (%+.1f%%), "+
		"p50 %.2f -> %.2f ms, p99 %.2f -> %.2f ms, CPU per heartbeat qx-vdc %.0f -> %.0f µs, postgres %.0f -> %.0f µs, "+
		"heartbeats per statement %.1f -> %.1f\n\n",
		what, a.rate, b.rate, 100*(b.rate/a.rate-1), ms(a.p50), ms(b.p50), ms(a.p99), ms(b.p99), a.vdcCPU, b.vdcCPU, a.pgCPU, b.pgCPU, a.batch, b.batch)
}

// cpuSample is the CPU time used so far by each qx-vdc, the PostgreSQL primary
// and the standby (0 without one), children included for PostgreSQL.
type cpuSample struct {
	vdc         []time.Duration
	pg, standby time.Duration
}

// phase is how a heartbeat phase sends: route picks the vDC of a node, send
// heartbeats it there.
type phase struct {
	vdcs  []*vdcProc
	send  func(n *simNode, vdc int) error
	route func(n *simNode) int
	o     options
	cpu   func() cpuSample
}

// hbResult is one heartbeat measurement.
type hbResult struct {
	rate          float64
	p50, p99      time.Duration
	vdcCPU, pgCPU float64 // µs per heartbeat, every qx-vdc together
	batch         float64 // heartbeats per SQL statement (0: no metrics)
}

// measure runs the heartbeat phase once and prints it.
func (ph phase) measure(ctx context.Context, nodes []*simNode, label string, out io.Writer) hbResult {
	o := ph.o
	var (
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, 1<<20)
		groups   [2][]time.Duration // latencies of nodes with VMs, of control nodes
		perVDC   = make([][]time.Duration, len(ph.vdcs))
		vdcErrs  = make([]atomic.Int64, len(ph.vdcs))
		errs     atomic.Int64
		firstErr atomic.Value
		sent     atomic.Int64
		wg       sync.WaitGroup
		mode     string
	)
	send := func(n *simNode) (int, error) {
		t := ph.route(n)
		return t, ph.send(n, t)
	}
	record := func(n *simNode, t int, d time.Duration, err error) {
		if err != nil {
			errs.Add(1)
			vdcErrs[t].Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
			return
		}
		g := 0
		if n.control {
			g = 1
		}
		mu.Lock()
		lat = append(lat, d)
		groups[g] = append(groups[g], d)
		perVDC[t] = append(perVDC[t], d)
		mu.Unlock()
	}
	hb0, st0 := ph.batching(ctx)
	cpu0 := ph.cpu()
	selfCPU0 := cpuTime(os.Getpid(), false)
	start := time.Now()
	end := start.Add(o.duration)
	if o.rate > 0 {
		mode = fmt.Sprintf("open loop at %d/s target, at most %d in flight", o.rate, o.inflight)
		// A fixed set of senders, one per connection, takes heartbeats as they
		// fall due: no goroutine per heartbeat, so the generator stays cheap.
		type job struct {
			due time.Time
			n   *simNode
		}
		jobs := make(chan job, o.inflight)
		for range o.conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range jobs {
					t, err := send(j.n)
					// Latency from the due time: a late start counts against the vDC.
					record(j.n, t, time.Since(j.due), err)
				}
			}()
		}
		period := time.Second / time.Duration(o.rate)
		for k := 0; ; k++ {
			due := start.Add(time.Duration(k) * period)
			if due.After(end) || ctx.Err() != nil {
				break
			}
			// Sleep in steps of at least a millisecond: sleeping per heartbeat
			// would cost the generator more than the heartbeats.
			if d := time.Until(due); d > time.Millisecond {
				time.Sleep(d)
			}
			n := nodes[k%len(nodes)]
			select {
			case jobs <- job{due, n}:
				sent.Add(1)
			default:
				// The vDC cannot keep up: count it as an error, do not wait.
				errs.Add(1)
				vdcErrs[ph.route(n)].Add(1)
				firstErr.CompareAndSwap(nil, "more than --inflight heartbeats outstanding")
			}
		}
		close(jobs)
		wg.Wait()
	} else {
		mode = fmt.Sprintf("closed loop, %d workers", o.conns)
		var next atomic.Int64
		for range o.conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && ctx.Err() == nil {
					n := nodes[int(next.Add(1)-1)%len(nodes)]
					t0 := time.Now()
					sent.Add(1)
					t, err := send(n)
					record(n, t, time.Since(t0), err)
				}
			}()
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	cpu1 := ph.cpu()
	selfCPU1 := cpuTime(os.Getpid(), false)
	slices.Sort(lat)
	pctOf := func(lat []time.Duration, p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	pct := func(p float64) time.Duration { return pctOf(lat, p) }
	var vdcCPU time.Duration
	for i := range cpu1.vdc {
		vdcCPU += cpu1.vdc[i] - cpu0.vdc[i]
	}
	res := hbResult{rate: float64(len(lat)) / elapsed.Seconds(), p50: pct(0.50), p99: pct(0.99)}
	fmt.Fprintf(out, "heartbeats: %d nodes%s, %s, %s\n", len(nodes), label, mode, elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "  acknowledged %d (%.0f heartbeats/s), errors %d\n", len(lat), res.rate, errs.Load())
	fmt.Fprintf(out, "  latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
		ms(pct(0.50)), ms(pct(0.99)), ms(pct(1)))
	per := func(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(max(n, 1)) }
	cores := func(d time.Duration) float64 { return d.Seconds() / elapsed.Seconds() }
	if n := len(lat); n > 0 {
		res.vdcCPU, res.pgCPU = per(vdcCPU, n), per(cpu1.pg-cpu0.pg, n)
		standby := ""
		if sb := cpu1.standby - cpu0.standby; cpu1.standby > 0 {
			standby = fmt.Sprintf(", standby postgres %.0f µs (%.2f cores)", per(sb, n), cores(sb))
		}
		fmt.Fprintf(out, "  CPU per heartbeat: qx-vdc %.0f µs, postgres %.0f µs, this load generator %.0f µs (%.2f, %.2f and %.2f cores busy)%s\n",
			res.vdcCPU, res.pgCPU, per(selfCPU1-selfCPU0, n),
			cores(vdcCPU), cores(cpu1.pg-cpu0.pg), cores(selfCPU1-selfCPU0), standby)
	}
	if len(ph.vdcs) > 1 {
		for t, l := range perVDC {
			slices.Sort(l)
			d := cpu1.vdc[t] - cpu0.vdc[t]
			cpu := fmt.Sprintf("CPU %.0f µs per heartbeat (%.2f cores)", per(d, len(l)), cores(d))
			if len(l) == 0 {
				cpu = fmt.Sprintf("CPU %.2f cores", cores(d))
			}
			fmt.Fprintf(out, "  qx-vdc %d: acknowledged %d (%.0f heartbeats/s), errors %d, latency p50 %.2f ms, p99 %.2f ms, %s\n",
				t+1, len(l), float64(len(l))/elapsed.Seconds(), vdcErrs[t].Load(), ms(pctOf(l, 0.5)), ms(pctOf(l, 0.99)), cpu)
		}
	}
	// Metrics are a side note: without them the line is left out.
	if hb1, st1 := ph.batching(ctx); st1 > st0 {
		res.batch = (hb1 - hb0) / (st1 - st0)
		fmt.Fprintf(out, "  heartbeats per SQL statement: %.1f in this phase, every qx-vdc together\n", res.batch)
	}
	if len(groups[0]) > 0 && len(groups[1]) > 0 {
		slices.Sort(groups[0])
		slices.Sort(groups[1])
		vm50, vm99, c50, c99 := pctOf(groups[0], 0.5), pctOf(groups[0], 0.99), pctOf(groups[1], 0.5), pctOf(groups[1], 0.99)
		fmt.Fprintf(out, "  same phase: nodes with VMs p50 %.2f ms, p99 %.2f ms (%d); control nodes p50 %.2f ms, p99 %.2f ms (%d): p50 %+.1f%%, p99 %+.1f%%\n",
			ms(vm50), ms(vm99), len(groups[0]), ms(c50), ms(c99), len(groups[1]),
			100*(float64(vm50)/float64(c50)-1), 100*(float64(vm99)/float64(c99)-1))
	}
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(out, "  first error: %s\n", e)
	}
	fmt.Fprintln(out)
	return res
}

// batching sums the heartbeats and the heartbeat statements of every vDC so far
// (their metrics; 0 where one is unreadable).
func (ph phase) batching(ctx context.Context) (heartbeats, statements float64) {
	for _, v := range ph.vdcs {
		m, _ := v.client.Metrics(ctx)
		heartbeats, statements = heartbeats+m["qx_vdc_heartbeats_total"], statements+m["qx_vdc_heartbeat_batches_total"]
	}
	return heartbeats, statements
}

// reportStandby prints the standby's state and how far behind it replays, as the
// primary sees it (pg_stat_replication).
func reportStandby(ctx context.Context, adminURL string, out io.Writer) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var state, syncState, lag string
	var behind int64
	err = conn.QueryRow(ctx, `SELECT state, sync_state, coalesce(replay_lag::text, 'none (idle)'),
		pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication`).Scan(&state, &syncState, &lag, &behind)
	if err != nil {
		return fmt.Errorf("pg_stat_replication: %w", err)
	}
	fmt.Fprintf(out, "standby at the end: state %s, sync_state %s, replay lag %s, %d bytes of WAL not yet replayed\n", state, syncState, lag, behind)
	return nil
}

// settleDB vacuums and analyzes the vDC's database and forces a checkpoint.
func settleDB(ctx context.Context, adminURL, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// cpuTime is the user+system CPU time of pid, plus its children's when withChildren
// (PostgreSQL's backends are children of the postmaster).
func cpuTime(pid int, withChildren bool) time.Duration {
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	read := func(p string) (ppid int, t time.Duration) {
		b, err := os.ReadFile("/proc/" + p + "/stat")
		if err != nil {
			return -1, 0
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		ppid, _ = strconv.Atoi(f[1])
		u, _ := strconv.Atoi(f[11])
		s, _ := strconv.Atoi(f[12])
		return ppid, time.Duration(u+s) * tick
	}
	_, total := read(strconv.Itoa(pid))
	if withChildren {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if e.Name()[0] < '0' || e.Name()[0] > '9' {
				continue
			}
			if ppid, t := read(e.Name()); ppid == pid {
				total += t
			}
		}
	}
	return total
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
var latRE = regexp.MustCompile(`latency average = ([0-9.]+) ms`)

// pgbench runs a single-row UPDATE (one statement, one commit) on the same server.
func pgbench(ctx context.Context, pg *vdctest.Postgres, o options, label string, out io.Writer) error {
	bin := filepath.Join(vdctest.PostgresBinDir, "pgbench")
	dbURL, err := pg.CreateDatabase(ctx)
	if err != nil {
		return err
	}
	env := append(os.Environ(), "PGPASSWORD="+pg.Password)
	common := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", vdctest.Role}
	dbName := dbURL[strings.LastIndex(dbURL, "/")+1 : strings.Index(dbURL, "?")]
	init := exec.CommandContext(ctx, bin, append(common, "-i", "-q", "-s", "10", dbName)...)
	init.Env = env
	if b, err := init.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w\n%s", err, b)
	}
	script := filepath.Join(os.TempDir(), "qx-vdc-load-update.sql")
	os.WriteFile(script, []byte("\\set aid random(1, 100000 * :scale)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n"), 0o644)
	defer os.Remove(script)
	fmt.Fprintf(out, "pgbench single-row UPDATE, same server%s, scale 10, %s per run:\n", label, o.pgbenchTime)
	for _, cs := range strings.Split(o.pgbench, ",") {
		clients, err := strconv.Atoi(strings.TrimSpace(cs))
		if err != nil {
			return fmt.Errorf("--pgbench-clients %q: %w", o.pgbench, err)
		}
		cmd := exec.CommandContext(ctx, bin, append(common, "-n", "-f", script, "-c", strconv.Itoa(clients),
			"-j", "2", "-T", strconv.Itoa(int(o.pgbenchTime.Seconds())), dbName)...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("pgbench: %w\n%s", err, b)
		}
		tps, lat := tpsRE.FindSubmatch(b), latRE.FindSubmatch(b)
		if tps == nil || lat == nil {
			return fmt.Errorf("pgbench output not understood:\n%s", b)
		}
		fmt.Fprintf(out, "  %3d clients: %s TPS, latency average %s ms\n", clients, tps[1], lat[1])
	}
	return nil
}
