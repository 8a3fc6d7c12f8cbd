package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

func openStore(t *testing.T) *store.Store {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{DatabaseURL: vdctest.Shared(t).NewDatabase(t),
		StaticJoinTokens: []string{"static-token-0123456789"}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SyncCluster(ctx, time.Second, store.GraceStart); err != nil {
		t.Fatal(err)
	}
	return s
}

func reg(t *testing.T, s *store.Store, hostname, secret string) string {
	t.Helper()
	r, err := s.Register(context.Background(), store.Registration{Hostname: hostname, MachineID: "m-" + hostname,
		NodeSecret: secret, ManagementIP: netip.MustParseAddr("192.0.2.1"), JoinToken: "static-token-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	return r.NodeID
}

func TestOpenRefusesURLWithoutPassword(t *testing.T) {
	_, err := store.Open(context.Background(), store.Config{DatabaseURL: "postgres://quantix@127.0.0.1:1/quantix"}, slog.Default())
	if err == nil || !strings.Contains(err.Error(), "no password") {
		t.Fatalf("Open without a password = %v, want an error saying the URL has no password", err)
	}
}

// TestSweepPhases sets heartbeat ages in the database (the clock stays
// PostgreSQL's) and checks each phase rule, inside and after the start grace.
func TestSweepPhases(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	const iv = 10 * time.Second
	now, err := s.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	past, future := now.Add(-time.Hour), now.Add(time.Hour)
	cases := []struct {
		name  string
		phase string
		age   time.Duration
		grace time.Time
		want  string
	}{
		{"fresh stays ready", "ready", 5 * time.Second, past, "ready"},
		{"2 intervals is still ready", "ready", 19 * time.Second, past, "ready"},
		{"past 2 intervals is not_ready", "ready", 21 * time.Second, past, "not_ready"},
		{"past 3 intervals is disconnected", "ready", 31 * time.Second, past, "disconnected"},
		{"not_ready to disconnected", "not_ready", 45 * time.Second, past, "disconnected"},
		{"grace: no demotion", "ready", 45 * time.Second, future, "ready"},
		{"grace: no demotion from not_ready", "not_ready", 45 * time.Second, future, "not_ready"},
		{"grace: promotion allowed", "disconnected", time.Second, future, "ready"},
		{"maintenance is left alone", "maintenance", time.Hour, past, "maintenance"},
		{"recovering", "disconnected", 25 * time.Second, past, "not_ready"},
	}
	for i, tc := range cases {
		id := reg(t, s, "sweep-"+string(rune('a'+i)), "secret")
		if _, err := s.Pool().Exec(ctx, `UPDATE nodes SET phase = $2, last_heartbeat = now() - $3::interval WHERE id = $1`,
			id, tc.phase, tc.age); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sweep(ctx, iv, tc.grace); err != nil {
			t.Fatal(err)
		}
		n, err := s.GetNode(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if n.Phase != tc.want {
			t.Errorf("%s: %s with a %s old heartbeat -> %s, want %s", tc.name, tc.phase, tc.age, n.Phase, tc.want)
		}
		evs, _ := s.NodeEvents(ctx, id)
		last := evs[len(evs)-1]
		changed := tc.phase != tc.want
		if changed != (last.Kind == "phase") {
			t.Errorf("%s: last event %+v; a phase change must be recorded, and only then", tc.name, last)
		}
	}
}

// TestHeartbeatBatch: one statement for a batch mixing a node sent twice (and once
// more with a wrong secret), a deleted node and a node whose secret changed after
// authentication.
func TestHeartbeatBatch(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	a := reg(t, s, "batch-a", "sa")
	b := reg(t, s, "batch-b", "sb")
	c := reg(t, s, "batch-c", "sc")
	if err := s.DeleteNode(ctx, b, false); err != nil {
		t.Fatal(err)
	}
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	cpu := 12.5
	res, err := s.Heartbeats(ctx, []store.Heartbeat{
		{NodeID: a, SecretHash: store.HashSecret("sa"), ManagementIP: ip("192.0.2.10")},
		{NodeID: b, SecretHash: store.HashSecret("sb"), ManagementIP: ip("192.0.2.11")},
		{NodeID: c, SecretHash: store.HashSecret("stale"), ManagementIP: ip("192.0.2.12")},
		{NodeID: a, SecretHash: store.HashSecret("sa"), ManagementIP: ip("192.0.2.13"), CPUPercent: &cpu,
			Hypervisor: &quantix.Hypervisor{State: quantix.HypervisorAvailable, Version: "9.0.0"}},
		{NodeID: a, SecretHash: store.HashSecret("not-sa"), ManagementIP: ip("192.0.2.99")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[3].Err != nil || !res[0].FullSync {
		t.Errorf("node a results = %+v, %+v; want recorded with full_sync", res[0], res[3])
	}
	if !errors.Is(res[1].Err, store.ErrNotFound) {
		t.Errorf("deleted node result = %+v, want ErrNotFound", res[1])
	}
	if !errors.Is(res[2].Err, store.ErrUnauthorized) {
		t.Errorf("stale secret result = %+v, want ErrUnauthorized", res[2])
	}
	if !errors.Is(res[4].Err, store.ErrUnauthorized) {
		t.Errorf("wrong secret for node a in the same batch = %+v, want ErrUnauthorized", res[4])
	}
	n, _ := s.GetNode(ctx, a)
	if n.ManagementIP != "192.0.2.13" || n.CPUPercent == nil || *n.CPUPercent != 12.5 || n.Hypervisor.Version != "9.0.0" {
		t.Errorf("node a = %+v, want the last heartbeat of the batch applied", n)
	}
	if n, _ := s.GetNode(ctx, c); n.ManagementIP != "192.0.2.1" {
		t.Errorf("node c changed by a heartbeat with a wrong secret: %+v", n)
	}
}

// TestBatcher: many concurrent heartbeats are coalesced into fewer statements,
// each answered with its own result; after Close, Submit refuses.
func TestBatcher(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	const nodes = 50
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = reg(t, s, "batcher-"+strings.Repeat("x", i%3)+string(rune('a'+i%26))+"-"+string(rune('a'+i/26)), "s")
	}
	b := store.NewBatcher(s, 2, 100, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var wg sync.WaitGroup
	errs := make(chan error, nodes*4)
	for round := range 4 {
		for i, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				secret := "s"
				if (i+round)%10 == 0 {
					secret = "wrong"
				}
				r, err := b.Submit(ctx, store.Heartbeat{NodeID: id, SecretHash: store.HashSecret(secret), ManagementIP: netip.MustParseAddr("192.0.2.7")})
				switch {
				case err != nil:
					errs <- err
				case secret == "wrong" && !errors.Is(r.Err, store.ErrUnauthorized):
					errs <- fmt.Errorf("wrong secret for %s: %v, want ErrUnauthorized", id, r.Err)
				case secret == "s" && r.Err != nil:
					errs <- fmt.Errorf("heartbeat %s: %v", id, r.Err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	batches, hbs := b.Stats()
	if hbs != nodes*4 || batches < 1 || batches > hbs {
		t.Errorf("stats: %d heartbeats in %d statements, want %d heartbeats", hbs, batches, nodes*4)
	}
	t.Logf("%d heartbeats in %d statements", hbs, batches)
	b.Close()
	if _, err := b.Submit(ctx, store.Heartbeat{NodeID: ids[0]}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Submit after Close = %v, want ErrClosed", err)
	}
}

// TestSweepMassSilence: most nodes silent at once is the control plane's trouble
// (its network, its vDCs): they stop at not_ready with the reason in their
// history; one silent node among talking ones is disconnected as usual.
func TestSweepMassSilence(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	const iv = 10 * time.Second
	past := time.Now().Add(-time.Hour)
	var ids []string
	for i := range 5 {
		ids = append(ids, reg(t, s, fmt.Sprintf("mass-%d", i), "secret"))
	}
	age := func(id string, d time.Duration) {
		t.Helper()
		if _, err := s.Pool().Exec(ctx, `UPDATE nodes SET phase = 'ready', last_heartbeat = now() - $2::interval WHERE id = $1`, id, d); err != nil {
			t.Fatal(err)
		}
	}
	phases := func() []string {
		t.Helper()
		var out []string
		for _, id := range ids {
			n, err := s.GetNode(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, n.Phase)
		}
		return out
	}
	// Three of five silent for more than 3 intervals, two talking.
	for i, id := range ids {
		age(id, map[bool]time.Duration{true: 35 * time.Second, false: time.Second}[i < 3])
	}
	if _, err := s.Sweep(ctx, iv, past); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(phases(), " "), "not_ready not_ready not_ready ready ready"; got != want {
		t.Errorf("3 of 5 silent: phases %s, want %s", got, want)
	}
	ev, err := s.NodeEvents(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) == 0 || !strings.Contains(ev[len(ev)-1].Message, "ready -> not_ready") ||
		!strings.Contains(ev[len(ev)-1].Message, "held from disconnected: 3 of 5 nodes silent at once") {
		t.Errorf("events of a held node = %+v, want the reason it was held", ev)
	}
	// A second sweep changes nothing and records nothing more.
	if ch, err := s.Sweep(ctx, iv, past); err != nil || len(ch) != 0 {
		t.Errorf("second sweep: %v, %v; want no change", ch, err)
	}
	// One silent node among talking ones is disconnected.
	for i, id := range ids {
		age(id, map[bool]time.Duration{true: 35 * time.Second, false: time.Second}[i == 0])
	}
	if _, err := s.Sweep(ctx, iv, past); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(phases(), " "), "disconnected ready ready ready ready"; got != want {
		t.Errorf("1 of 5 silent: phases %s, want %s", got, want)
	}
}

// TestSweepConcurrent: several vDCs sweep the same nodes at the same moment (as
// when a frozen vDC resumes mid-sweep next to a running one). Each phase change is
// made, and recorded in the node's history, exactly once.
func TestSweepConcurrent(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	const (
		iv       = 10 * time.Second
		nodes    = 100
		sweepers = 4
		rounds   = 15
	)
	past := time.Now().Add(-time.Hour)
	for i := range nodes {
		reg(t, s, fmt.Sprintf("conc-%03d", i), "secret")
	}
	for round := range rounds {
		// Every node 2.5 intervals silent: each sweep wants ready -> not_ready.
		if _, err := s.Pool().Exec(ctx, `UPDATE nodes SET phase = 'ready', last_heartbeat = now() - interval '25 seconds'`); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		changed := make([]int, sweepers)
		for i := range sweepers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ch, err := s.Sweep(ctx, iv, past)
				if err != nil {
					t.Error(err)
				}
				changed[i] = len(ch)
			}()
		}
		close(start)
		wg.Wait()
		total := 0
		for _, n := range changed {
			total += n
		}
		if total != nodes {
			t.Errorf("round %d: the sweepers reported %d phase changes (%v), want %d: one per node", round, total, changed, nodes)
		}
	}
	var dups []string
	rows, err := s.Pool().Query(ctx, `SELECT hostname || ': ' || count(*) FROM node_events
		WHERE kind = 'phase' AND message LIKE 'ready -> not_ready%' GROUP BY hostname HAVING count(*) <> $1`, rounds)
	if err != nil {
		t.Fatal(err)
	}
	if dups, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(dups) != 0 {
		t.Errorf("nodes whose ready -> not_ready was recorded other than %d times: %v", rounds, dups)
	}
}
