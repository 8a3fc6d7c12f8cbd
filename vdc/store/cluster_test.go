package store_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

// TestSyncCluster: the epoch and the liveness grace live in the database. A second
// vDC process on the same database reads the same epoch; a grace is granted only
// when no vDC synced for an interval, only grows, and says why; the database on another timeline (what a promoted standby writes on) is
// a failover: one new epoch for everyone, a grace, and every node asked for its
// full state once.
func TestSyncCluster(t *testing.T) {
	s := openStore(t) // its first SyncCluster made the state (vdc start)
	ctx := context.Background()
	iv := time.Second
	first, err := s.SyncCluster(ctx, iv, "")
	if err != nil {
		t.Fatal(err)
	}
	if first.Epoch == "" || first.Failover || first.GraceReason != store.GraceStart || s.Epoch() != first.Epoch {
		t.Fatalf("SyncCluster = %+v (cached epoch %q), want the start state", first, s.Epoch())
	}
	// A second process on the same database.
	other, err := store.Open(ctx, store.Config{DatabaseURL: s.Pool().Config().ConnString()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// It starts while the first one runs: no grace for its start (the control plane
	// was not away).
	o, err := other.SyncCluster(ctx, iv, store.GraceStart)
	if err != nil {
		t.Fatal(err)
	}
	if o.Epoch != first.Epoch || o.Failover || !o.GraceUntil.Equal(first.GraceUntil) {
		t.Errorf("second process: %+v, want epoch %s and the grace unchanged at %v", o, first.Epoch, first.GraceUntil)
	}
	// Nobody synced for longer than an interval (every vDC stopped, or the database
	// refused writes): the next start or outage grants a longer grace.
	if _, err := s.Pool().Exec(ctx, `UPDATE cluster_state SET updated_at = now() - interval '5 seconds'`); err != nil {
		t.Fatal(err)
	}
	o, err = other.SyncCluster(ctx, iv, store.GraceOutage)
	if err != nil {
		t.Fatal(err)
	}
	if !o.GraceUntil.After(first.GraceUntil) || o.GraceReason != store.GraceOutage {
		t.Errorf("after 5s without a sync: %+v, want a longer grace than %v for %q", o, first.GraceUntil, store.GraceOutage)
	}
	if got := s.Grace(); !got.Equal(first.GraceUntil) {
		t.Errorf("Grace() = %v before this process synced again, want its cached %v", got, first.GraceUntil)
	}

	// A node whose full state this epoch took is not asked again.
	id := reg(t, s, "cluster-1", "secret")
	hash := quantix.StateHash(nil, nil)
	if _, err := s.PutState(ctx, id, store.HashSecret("secret"), quantix.NodeState{StateHash: hash}); err != nil {
		t.Fatal(err)
	}
	beat := func(p *store.Store) bool {
		t.Helper()
		res, err := p.Heartbeats(ctx, []store.Heartbeat{{NodeID: id, SecretHash: store.HashSecret("secret"),
			ManagementIP: netip.MustParseAddr("192.0.2.1"), StateHash: hash}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("heartbeat: %v %+v", err, res)
		}
		return res[0].FullSync
	}
	if beat(s) || beat(other) {
		t.Errorf("full_sync asked by a vDC of the same epoch after a full state")
	}

	// The database now on another timeline: a failover.
	if _, err := s.Pool().Exec(ctx, `UPDATE cluster_state SET server_timeline = 'FFFFFFFF'`); err != nil {
		t.Fatal(err)
	}
	f, err := other.SyncCluster(ctx, iv, "")
	if err != nil {
		t.Fatal(err)
	}
	if !f.Failover || f.Epoch == first.Epoch || f.GraceReason != store.GraceFailover || f.Timeline == "FFFFFFFF" {
		t.Errorf("after a timeline change: %+v, want a failover with a new epoch and its grace", f)
	}
	again, err := s.SyncCluster(ctx, iv, "")
	if err != nil {
		t.Fatal(err)
	}
	if again.Failover || again.Epoch != f.Epoch {
		t.Errorf("the other process after the failover: %+v, want epoch %s without a second failover", again, f.Epoch)
	}
	if !beat(s) {
		t.Errorf("no full_sync asked after the failover")
	}
	if _, err := s.PutState(ctx, id, store.HashSecret("secret"), quantix.NodeState{StateHash: hash}); err != nil {
		t.Fatal(err)
	}
	if beat(other) || beat(s) {
		t.Errorf("full_sync asked again after the node's one full state of the new epoch")
	}
}
