// Command qx-vdc-load measures the vDC on this machine: it starts a durable
// PostgreSQL 15 (fsync on) and a real qx-vdc process, runs a registration storm with
// a duplicate check, drives N simulated nodes heartbeating (open loop at a target
// rate, or closed loop at full speed) reporting heartbeats/s with p50/p99 latency,
// and runs pgbench's single-row UPDATE against the same server for comparison. With
// --desired-vms it then gives every node that many managed VMs and a desired-state
// long-poll held open, as agents do, measures the heartbeats again in the same run,
// and measures desired-state fetches. The simulated agents talk TLS with the agent
// CA pin, as agents do; --transport plain runs the same over plain HTTP
// (agent_plain_http) to compare what TLS costs (farm-bench --vs pairs the two runs).
//
//	go build -o /tmp/qx-vdc ./vdc/cmd/qx-vdc
//	go run ./vdc/cmd/qx-vdc-load --qx-vdc /tmp/qx-vdc --nodes 10000 --rate 10000 --duration 20s
//	go run ./vdc/cmd/qx-vdc-load --qx-vdc /tmp/qx-vdc --nodes 100 --desired-vms 50 --rate 0 --storm 0
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.transport != "tls" && o.transport != "plain" {
		return fmt.Errorf("--transport %q: want tls or plain", o.transport)
	}
	bin, err := exec.LookPath(o.qxVDC)
	if err != nil {
		return fmt.Errorf("qx-vdc binary: %w (build it: go build -o /tmp/qx-vdc ./vdc/cmd/qx-vdc)", err)
	}

	fmt.Fprintf(stdout, "machine: %d CPUs, load average %s; PostgreSQL 15 durable (fsync on, synchronous_commit on); agents over %s\n", numCPU(), loadAvg(), o.transport)
	defer func() { fmt.Fprintf(stdout, "load average at the end: %s\n", loadAvg()) }()
	pg, err := vdctest.RunPostgres(vdctest.PostgresConfig{Durable: true, MaxConnections: 300})
	if err != nil {
		return err
	}
	defer pg.Stop()
	dbURL, err := pg.CreateDatabase(ctx)
	if err != nil {
		return err
	}
	joinToken, adminToken := "load-join-"+secret(), "load-admin-"+secret()
	conf := filepath.Join(pg.Dir, "vdc.toml")
	// The UI's HTTPS listener and its generated certificate stay on loopback and in
	// the throwaway folder, never on the host's :8443 and /quantix.
	toml := fmt.Sprintf("ui_listen = \"127.0.0.1:0\"\nsecrets_file = %q\ndata_dir = %q\n", filepath.Join(pg.Dir, "secrets.toml"), pg.Dir)
	if o.transport == "plain" {
		toml += "agent_plain_http = true\n" // the lab flag: plain-HTTP agents for comparison
	}
	if o.writers > 0 {
		toml += fmt.Sprintf("heartbeat_writers = %d\ndatabase_max_conns = %d\n", o.writers, max(16, o.writers+4))
	}
	if err := os.WriteFile(conf, []byte(toml), 0o644); err != nil {
		return err
	}
	v, err := startVDC(ctx, bin, conf, dbURL, joinToken, adminToken, o.vdcLog)
	if err != nil {
		return err
	}
	defer v.stop()
	fmt.Fprintf(stdout, "qx-vdc: %s (pid %d), vdc.toml: %q\n\n", v.url, v.cmd.Process.Pid, toml)

	url := v.url
	if o.transport == "plain" {
		url = "http://" + strings.TrimPrefix(url, "https://")
	} else {
		o.tlsCfg = quantix.PinnedTLS([]string{v.pin}, nil)
	}
	c, err := client.New(client.Config{URL: url, Token: adminToken, UserAgent: "qx-vdc-load/" + quantix.Version, HTTPClient: &http.Client{
		Transport: &http.Transport{MaxIdleConns: o.conns, MaxIdleConnsPerHost: o.conns, MaxConnsPerHost: o.conns, IdleConnTimeout: time.Minute,
			TLSClientConfig: o.tlsCfg},
		Timeout: 30 * time.Second}})
	if err != nil {
		return err
	}

	if o.storm > 0 {
		if err := storm(ctx, c, joinToken, dbURL, o, stdout); err != nil {
			return err
		}
	}
	if o.nodes > 0 {
		cpu := func() (time.Duration, time.Duration) {
			return cpuTime(v.cmd.Process.Pid, false), cpuTime(pg.Pid(), true)
		}
		// Like pgbench, start the measured phase from a settled database: vacuumed
		// and checkpointed after the bulk inserts, so autovacuum and a checkpoint do
		// not land in the middle of it by chance.
		settle := func() error { return settleDB(ctx, pg.AdminURL(), dbURL) }
		if err := heartbeats(ctx, c, joinToken, o, cpu, settle, stdout); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "qx-vdc peak RSS: %s\n\n", v.peakRSS())
	if o.pgbench != "" {
		v.stop() // pgbench gets the machine to itself, as the vDC had
		if err := pgbench(ctx, pg, o, stdout); err != nil {
			return err
		}
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
	cmd  *exec.Cmd
	url  string // https://: agents' TLS
	pin  string // the agent CA pin
	once sync.Once
	done chan struct{}
}

func startVDC(ctx context.Context, bin, conf, dbURL, joinToken, adminToken, logPath string) (*vdcProc, error) {
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
	p := &vdcProc{cmd: cmd, done: make(chan struct{})}
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

func heartbeats(ctx context.Context, c *client.Client, token string, o options,
	cpu func() (time.Duration, time.Duration), settle func() error, out io.Writer) error {
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
	pool, err := newConnPool(c.URL(), o.conns, o.tlsCfg)
	if err != nil {
		return err
	}
	defer pool.close()
	for _, n := range nodes {
		body, _ := json.Marshal(quantix.HeartbeatRequest{ManagementIP: n.req.ManagementIP, StateHash: quantix.StateHash(nil, nil)})
		n.hb = rawRequest(pool.addr, quantix.PathHeartbeat(n.id), n.req.NodeSecret, body)
	}

	send := func(n *simNode) error {
		code, b, err := pool.do(n.hb)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("heartbeat %s: %d %s", n.req.Hostname, code, b)
		}
		return err
	}
	// Warm up connections and the vDC's secret cache: one heartbeat per node.
	parallel(len(nodes), o.conns, func(i int) { send(nodes[i]) })
	if err := settle(); err != nil {
		return err
	}

	if o.desiredVMs > 0 {
		// The first phase of a run is the slowest (cold caches, a young heap):
		// warm up before the phase the one with VMs is compared to.
		warm := o
		warm.duration = max(o.duration/4, time.Second)
		measureHeartbeats(ctx, c, nodes, send, warm, cpu, ", warm-up (not compared)", out)
		if err := settle(); err != nil {
			return err
		}
	}
	nodes = all[:o.nodes]
	base := measureHeartbeats(ctx, c, nodes, send, o, cpu, "", out)
	if o.desiredVMs == 0 {
		return nil
	}
	// Heartbeats alternate between a node with VMs and a control node without.
	var mixed []*simNode
	for i := range o.nodes {
		mixed = append(mixed, all[i], all[o.nodes+i])
	}
	return desiredLoad(ctx, c, nodes, all, send, o, out, func() {
		if err := settle(); err != nil {
			fmt.Fprintf(out, "settle: %v\n", err)
		}
		with := measureHeartbeats(ctx, c, nodes, send, o, cpu,
			fmt.Sprintf(", %d managed VMs per node, one desired long-poll per node held open", o.desiredVMs), out)
		fmt.Fprintf(out, "  against no VMs (the phase before, so the machine's other load differs): heartbeats/s %+.1f%%, p99 %+.1f%%\n\n",
			100*(with.rate/base.rate-1), 100*(float64(with.p99)/float64(base.p99)-1))
		measureHeartbeats(ctx, c, mixed, send, o, cpu,
			fmt.Sprintf(" (%d with %d VMs and a long-poll each, %d control nodes without, alternating)", o.nodes, o.desiredVMs, o.nodes), out)
	})
}

// hbResult is one heartbeat measurement.
type hbResult struct {
	rate float64
	p99  time.Duration
}

// measureHeartbeats runs the heartbeat phase once and prints it.
func measureHeartbeats(ctx context.Context, c *client.Client, nodes []*simNode, send func(*simNode) error, o options,
	cpu func() (time.Duration, time.Duration), label string, out io.Writer) hbResult {
	var (
		mu       sync.Mutex
		lat      = make([]time.Duration, 0, 1<<20)
		groups   [2][]time.Duration // latencies of nodes with VMs, of control nodes
		errs     atomic.Int64
		firstErr atomic.Value
		sent     atomic.Int64
		wg       sync.WaitGroup
		mode     string
	)
	record := func(n *simNode, d time.Duration, err error) {
		if err != nil {
			errs.Add(1)
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
		mu.Unlock()
	}
	vdcCPU0, pgCPU0 := cpu()
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
					err := send(j.n)
					// Latency from the due time: a late start counts against the vDC.
					record(j.n, time.Since(j.due), err)
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
			select {
			case jobs <- job{due, nodes[k%len(nodes)]}:
				sent.Add(1)
			default:
				// The vDC cannot keep up: count it as an error, do not wait.
				errs.Add(1)
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
					err := send(n)
					record(n, time.Since(t0), err)
				}
			}()
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	vdcCPU1, pgCPU1 := cpu()
	selfCPU1 := cpuTime(os.Getpid(), false)
	slices.Sort(lat)
	pctOf := func(lat []time.Duration, p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	pct := func(p float64) time.Duration { return pctOf(lat, p) }
	fmt.Fprintf(out, "heartbeats: %d nodes%s, %s, %s\n", len(nodes), label, mode, elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "  acknowledged %d (%.0f heartbeats/s), errors %d\n", len(lat), float64(len(lat))/elapsed.Seconds(), errs.Load())
	fmt.Fprintf(out, "  latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
		ms(pct(0.50)), ms(pct(0.99)), ms(pct(1)))
	if n := float64(len(lat)); n > 0 {
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / n }
		cores := func(d time.Duration) float64 { return d.Seconds() / elapsed.Seconds() }
		fmt.Fprintf(out, "  CPU per heartbeat: qx-vdc %.0f µs, postgres %.0f µs, this load generator %.0f µs (%.2f, %.2f and %.2f cores busy)\n",
			per(vdcCPU1-vdcCPU0), per(pgCPU1-pgCPU0), per(selfCPU1-selfCPU0),
			cores(vdcCPU1-vdcCPU0), cores(pgCPU1-pgCPU0), cores(selfCPU1-selfCPU0))
	}
	// Metrics are a side note: without them the line is left out.
	m, _ := c.Metrics(ctx)
	if hb, st := m["qx_vdc_heartbeats_total"], m["qx_vdc_heartbeat_batches_total"]; st > 0 {
		fmt.Fprintf(out, "  heartbeats per SQL statement (whole run, warm-up included): %.1f\n", hb/st)
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
	return hbResult{rate: float64(len(lat)) / elapsed.Seconds(), p99: pct(0.99)}
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
func pgbench(ctx context.Context, pg *vdctest.Postgres, o options, out io.Writer) error {
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
	fmt.Fprintf(out, "pgbench single-row UPDATE, same server, scale 10, %s per run:\n", o.pgbenchTime)
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
