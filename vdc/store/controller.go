package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
)

// This file keeps what the store knows of the vDC appliances' own upgrades
// (upgrades.go in the root package, PathController): the rules a release must
// pass before a vDC asks its local qx-init to stage it, and each vDC's events.

// ControllerRelease returns the release ref names for an upgrade of the vDC
// appliance running version running, checked by the rules of a node's upgrade:
// a qvdc bundle newer than running (a *RefusedError otherwise; the same version
// is a *ConflictError, nothing to do), and no rolling upgrade of the nodes under
// way (a *ConflictError). The release is not locked once this returns: one
// deleted meanwhile leaves init a folder it refuses, and nothing is written.
func (s *Store) ControllerRelease(ctx context.Context, ref, running string) (quantix.Release, error) {
	if ref == "" {
		return quantix.Release{}, &quantix.FieldError{Field: "release", Reason: "is empty: name the release (its id or <image>-<version>)"}
	}
	var rel quantix.Release
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := noUpgradeRunning(ctx, tx, "upgrade this vDC once the nodes are done"); err != nil {
			return err
		}
		var err error
		if rel, err = shareRelease(ctx, tx, ref); err != nil {
			return err
		}
		if why := imageRefusal(rel, quantix.ImageQvDC, "this vDC runs"); why != "" {
			return &RefusedError{Reasons: []string{why}}
		}
		if rel.Version == running {
			return conflict("this vDC runs %s %s already: nothing to do", rel.Image, rel.Version)
		}
		if why := versionRefusal(running, rel.Version); why != "" {
			return &RefusedError{Reasons: []string{"this vDC " + why}}
		}
		return nil
	})
	if err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			return rel, re
		}
		return rel, vmErr("upgrade this vDC to release", ref, err)
	}
	return rel, nil
}

// AddControllerEvent records an event of the vDC on hostname's own upgrade.
func (s *Store) AddControllerEvent(ctx context.Context, hostname, kind, msg string) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO controller_events (hostname, kind, message) VALUES ($1, $2, $3)`, hostname, kind, msg)
	if err != nil {
		return fmt.Errorf("record %s event of vDC %s: %w", kind, hostname, err)
	}
	return nil
}

// ControllerEvents returns the newest limit events of the vDC on hostname,
// oldest first.
func (s *Store) ControllerEvents(ctx context.Context, hostname string, limit int) ([]quantix.ControllerEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT * FROM (SELECT id, hostname, kind, message, at FROM controller_events
		WHERE hostname = $1 ORDER BY id DESC LIMIT $2) e ORDER BY id`, hostname, limit)
	if err != nil {
		return nil, fmt.Errorf("vDC %s events: %w", hostname, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quantix.ControllerEvent, error) {
		var e quantix.ControllerEvent
		err := r.Scan(&e.ID, &e.Hostname, &e.Kind, &e.Message, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("vDC %s events: %w", hostname, err)
	}
	if evs == nil {
		evs = []quantix.ControllerEvent{}
	}
	return evs, nil
}
