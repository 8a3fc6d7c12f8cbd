package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
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
// the failover cost). grace, when not empty, grants such a grace for that reason
// (a vDC start, a write outage this process saw); a grace never shrinks. The result
// is cached for Epoch and Grace.
func (s *Store) SyncCluster(ctx context.Context, interval time.Duration, grace string) (ClusterState, error) {
	var cs ClusterState
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var tl string
		// The first 8 hex digits of a WAL file name are its timeline. Only a
		// primary answers: a read-only server fails here, before any write.
		if err := tx.QueryRow(ctx, `SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)`).Scan(&tl); err != nil {
			return fmt.Errorf("read the server timeline: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO cluster_state (epoch, server_timeline, grace_until, grace_reason)
			VALUES ($1, $2, now() + 3 * $3::interval, $4) ON CONFLICT (singleton) DO NOTHING`,
			NewEpoch(), tl, interval, GraceStart); err != nil {
			return err
		}
		var old ClusterState
		if err := tx.QueryRow(ctx, `SELECT epoch::text, server_timeline, grace_until, grace_reason
			FROM cluster_state FOR UPDATE`).Scan(&old.Epoch, &old.Timeline, &old.GraceUntil, &old.GraceReason); err != nil {
			return err
		}
		epoch := old.Epoch
		if old.Timeline != tl {
			epoch, grace, cs.Failover = NewEpoch(), GraceFailover, true
		}
		return tx.QueryRow(ctx, `UPDATE cluster_state SET epoch = $1, server_timeline = $2,
			    grace_until = CASE WHEN $4 <> '' AND now() + 3 * $3::interval > grace_until
			        THEN now() + 3 * $3::interval ELSE grace_until END,
			    grace_reason = CASE WHEN $4 <> '' AND now() + 3 * $3::interval > grace_until
			        THEN $4 ELSE grace_reason END,
			    updated_at = now()
			RETURNING epoch::text, server_timeline, grace_until, grace_reason`,
			epoch, tl, interval, grace).Scan(&cs.Epoch, &cs.Timeline, &cs.GraceUntil, &cs.GraceReason)
	})
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
