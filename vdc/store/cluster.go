package store

import (
	"context"
	"fmt"
	"time"
)

// ClusterState is what every vDC process sharing the database agrees on
// (docs/design.md §17); it lives in the cluster_state row, never in one process.
type ClusterState struct {
	// Epoch decides when a node must send its full state: a node whose last full
	// state was taken in another epoch is asked for one.
	Epoch string
	// Timeline is the database server's WAL timeline when the epoch was chosen. A
	// promoted standby writes on a new timeline, so a failover changes the epoch
	// once, for every vDC.
	Timeline string
	// GraceUntil is the database time before which no node is demoted, and
	// GraceReason why the grace was granted.
	GraceUntil  time.Time
	GraceReason string
	// Failover reports that this call found the database on another timeline than
	// the epoch's and chose a new epoch.
	Failover bool
}

// Reasons for a liveness grace.
const (
	GraceStart    = "vdc start"
	GraceFailover = "database failover"
	GraceOutage   = "database write outage"
)

// SyncCluster reads the cluster state, creating it on first use, and moves it on
// when the database runs on another timeline than the epoch's (a failover: new
// epoch, and a grace of 3 intervals so that no node is demoted for the heartbeats
// the failover cost). grace, when not empty, asks for such a grace for that reason
// (a vDC start, a write outage this process saw); it is granted only when no vDC
// synced the cluster state for an interval (the whole control plane was away or
// could not write), so that one vDC that was stopped, frozen or cut off while the
// others carried on does not hold back the demotion of nodes that really went
// silent. A grace never shrinks. The result is cached for Epoch and Grace.
func (s *Store) SyncCluster(ctx context.Context, interval time.Duration, grace string) (ClusterState, error) {
	var cs ClusterState
	// The first 8 hex digits of a WAL file name are its timeline; only a primary
	// answers pg_current_wal_lsn, so a read-only server fails here, before a write.
	const timeline = `(SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) AS tl)`
	if _, err := s.pool.Exec(ctx, `INSERT INTO cluster_state (epoch, server_timeline, grace_until, grace_reason)
		SELECT $1, cur.tl, now() + 3 * $2::interval, $3 FROM `+timeline+` cur
		ON CONFLICT (singleton) DO NOTHING`, NewEpoch(), interval, GraceStart); err != nil {
		return cs, fmt.Errorf("cluster state: %w", err)
	}
	// One statement, so the row is locked only while it runs: a vDC frozen or cut
	// off between two statements holds nothing up. Concurrent vDCs that both see a
	// new timeline serialize on the row; the second finds it moved already and keeps
	// the first one's epoch, and only the one whose epoch was taken reports the
	// failover.
	proposed := NewEpoch()
	err := s.pool.QueryRow(ctx, `UPDATE cluster_state c SET
		    epoch = CASE WHEN c.server_timeline <> cur.tl THEN $1::uuid ELSE c.epoch END,
		    grace_reason = CASE
		        WHEN c.server_timeline <> cur.tl THEN $4
		        WHEN $3 <> '' AND c.updated_at < now() - $2::interval AND now() + 3 * $2::interval > c.grace_until THEN $3
		        ELSE c.grace_reason END,
		    grace_until = CASE
		        WHEN (c.server_timeline <> cur.tl OR ($3 <> '' AND c.updated_at < now() - $2::interval))
		            AND now() + 3 * $2::interval > c.grace_until
		            THEN now() + 3 * $2::interval
		        ELSE c.grace_until END,
		    server_timeline = cur.tl,
		    updated_at = now()
		FROM `+timeline+` cur
		RETURNING c.epoch::text, c.server_timeline, c.grace_until, c.grace_reason, c.epoch = $1::uuid`,
		proposed, interval, grace, GraceFailover).Scan(&cs.Epoch, &cs.Timeline, &cs.GraceUntil, &cs.GraceReason, &cs.Failover)
	if err != nil {
		return cs, fmt.Errorf("cluster state: %w", err)
	}
	c := cs
	s.cluster.Store(&c)
	return cs, nil
}

// Epoch is the cluster epoch as this process last read it ("" before SyncCluster).
func (s *Store) Epoch() string {
	if c := s.cluster.Load(); c != nil {
		return c.Epoch
	}
	return ""
}

// Grace is the liveness grace as this process last read it.
func (s *Store) Grace() time.Time {
	if c := s.cluster.Load(); c != nil {
		return c.GraceUntil
	}
	return time.Time{}
}
