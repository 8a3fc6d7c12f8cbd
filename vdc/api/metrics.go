package api

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quantix/quantix"
)

// Metrics is the vDC's Prometheus exposition, written by hand: four metric families
// do not justify client_golang and its dependency tree (protobuf, procfs) in the
// appliance image. The format is Prometheus text format 0.0.4.
type Metrics struct {
	registrations sync.Map // kind -> *atomic.Int64
	heartbeats    atomic.Int64
	latency       sync.Map // latencyKey -> *histogram; lock-free on the request path
}

type latencyKey struct{ method, route, code string }

// latencyBuckets are the request latency histogram's upper bounds in seconds.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

type histogram struct {
	counts   []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sumNanos atomic.Int64
}

// NewMetrics returns empty metrics.
func NewMetrics() *Metrics { return &Metrics{} }

// Registration counts one registration of kind.
func (m *Metrics) Registration(kind string) {
	v, _ := m.registrations.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// Heartbeat counts one recorded heartbeat.
func (m *Metrics) Heartbeat() { m.heartbeats.Add(1) }

// Observe records one request's latency.
func (m *Metrics) Observe(method, route string, code int, d time.Duration) {
	k := latencyKey{method, route, strconv.Itoa(code)}
	v, ok := m.latency.Load(k)
	if !ok {
		v, _ = m.latency.LoadOrStore(k, &histogram{counts: make([]atomic.Uint64, len(latencyBuckets)+1)})
	}
	h := v.(*histogram)
	h.counts[sort.SearchFloat64s(latencyBuckets, d.Seconds())].Add(1) // first bound >= d
	h.sumNanos.Add(int64(d))
}

// Write writes the exposition; phases is the current node count per phase and
// batches the heartbeat statements run so far.
func (m *Metrics) Write(w io.Writer, phases map[string]int, batches int64) {
	var b strings.Builder
	b.WriteString("# HELP qx_vdc_registrations_total Node registrations by kind (registered, reregistered, reenrolled).\n")
	b.WriteString("# TYPE qx_vdc_registrations_total counter\n")
	kinds := []string{}
	m.registrations.Range(func(k, _ any) bool { kinds = append(kinds, k.(string)); return true })
	sort.Strings(kinds)
	for _, k := range kinds {
		v, _ := m.registrations.Load(k)
		fmt.Fprintf(&b, "qx_vdc_registrations_total{kind=%q} %d\n", k, v.(*atomic.Int64).Load())
	}
	b.WriteString("# HELP qx_vdc_heartbeats_total Heartbeats recorded.\n# TYPE qx_vdc_heartbeats_total counter\n")
	fmt.Fprintf(&b, "qx_vdc_heartbeats_total %d\n", m.heartbeats.Load())
	b.WriteString("# HELP qx_vdc_heartbeat_batches_total SQL statements that recorded heartbeats (heartbeats are coalesced).\n")
	b.WriteString("# TYPE qx_vdc_heartbeat_batches_total counter\n")
	fmt.Fprintf(&b, "qx_vdc_heartbeat_batches_total %d\n", batches)
	b.WriteString("# HELP qx_vdc_nodes Registered nodes by phase.\n# TYPE qx_vdc_nodes gauge\n")
	ps := make([]string, 0, len(phases))
	for p := range phases {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	for _, p := range ps {
		fmt.Fprintf(&b, "qx_vdc_nodes{phase=%q} %d\n", p, phases[p])
	}
	b.WriteString("# HELP qx_vdc_http_request_duration_seconds HTTP request latency by method, route and status code.\n")
	b.WriteString("# TYPE qx_vdc_http_request_duration_seconds histogram\n")
	var keys []latencyKey
	m.latency.Range(func(k, _ any) bool { keys = append(keys, k.(latencyKey)); return true })
	sort.Slice(keys, func(i, j int) bool {
		a, c := keys[i], keys[j]
		if a.route != c.route {
			return a.route < c.route
		}
		if a.method != c.method {
			return a.method < c.method
		}
		return a.code < c.code
	})
	for _, k := range keys {
		v, _ := m.latency.Load(k)
		h := v.(*histogram)
		labels := fmt.Sprintf("method=%q,route=%q,code=%q", k.method, k.route, k.code)
		// Read the buckets first and derive the count from them, so that count
		// equals the +Inf bucket even while requests are being observed.
		var cum uint64
		for i, le := range latencyBuckets {
			cum += h.counts[i].Load()
			fmt.Fprintf(&b, "qx_vdc_http_request_duration_seconds_bucket{%s,le=%q} %d\n", labels, strconv.FormatFloat(le, 'g', -1, 64), cum)
		}
		cum += h.counts[len(latencyBuckets)].Load()
		fmt.Fprintf(&b, "qx_vdc_http_request_duration_seconds_bucket{%s,le=\"+Inf\"} %d\n", labels, cum)
		fmt.Fprintf(&b, "qx_vdc_http_request_duration_seconds_sum{%s} %s\n", labels, strconv.FormatFloat(time.Duration(h.sumNanos.Load()).Seconds(), 'g', -1, 64))
		fmt.Fprintf(&b, "qx_vdc_http_request_duration_seconds_count{%s} %d\n", labels, cum)
	}
	io.WriteString(w, b.String())
}

// WriteAgentCA writes the agent CA's families: seconds until the serving CA expires,
// and whether that is within the warning threshold (rotate it).
func WriteAgentCA(w io.Writer, st quantix.AgentCAStatus) {
	warn := 0
	if st.Warning != "" {
		warn = 1
	}
	fmt.Fprintf(w, "# HELP qx_vdc_agent_ca_expiry_seconds Seconds until the serving agent CA expires.\n"+
		"# TYPE qx_vdc_agent_ca_expiry_seconds gauge\nqx_vdc_agent_ca_expiry_seconds{pin=%q} %d\n"+
		"# HELP qx_vdc_agent_ca_expiring 1 when the serving agent CA expires within agent_ca_warn: rotate it.\n"+
		"# TYPE qx_vdc_agent_ca_expiring gauge\nqx_vdc_agent_ca_expiring %d\n"+
		"# HELP qx_vdc_agent_ca_pins Agent CA pins announced to agents (2 during a rotation's overlap).\n"+
		"# TYPE qx_vdc_agent_ca_pins gauge\nqx_vdc_agent_ca_pins %d\n", st.Serving.Pin, st.ExpiresInSeconds, warn, len(st.Pins))
}
