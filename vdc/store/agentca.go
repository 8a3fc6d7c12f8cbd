package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// AgentCA is one row of agent_ca: a CA for agent traffic (docs/design.md §15).
type AgentCA struct {
	ID          int64
	Pin         string
	CertPEM     string
	KeyPEM      string
	NotBefore   time.Time
	NotAfter    time.Time
	ServingFrom time.Time
}

// NewAgentCA makes a CA (certificate and key) for the row the store inserts.
type NewAgentCA func() (AgentCA, error)

// ErrRotationPending is wrapped when a rotation is asked for while the previous one
// still overlaps.
var ErrRotationPending = errors.New("an agent CA rotation is still in its overlap")

// agentCALock is the advisory lock key that serializes CA creation and rotation
// between vDCs ('qxca' in ASCII).
const agentCALock = 0x71786361

// AgentCAs returns the CA serving now, the CAs that will serve later (a rotation's
// next CA), and the database time, all in one snapshot. The first call on an empty
// table creates the first CA with gen; concurrent vDCs create exactly one.
func (s *Store) AgentCAs(ctx context.Context, gen NewAgentCA) (serving AgentCA, next []AgentCA, now time.Time, err error) {
	serving, next, now, err = s.readAgentCAs(ctx)
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return serving, next, now, err
	}
	ca, err := gen()
	if err != nil {
		return serving, nil, now, err
	}
	err = s.withAgentCALock(ctx, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM agent_ca`).Scan(&n); err != nil || n > 0 {
			return err // another vDC made it first
		}
		return insertAgentCA(ctx, tx, ca, "now()")
	})
	if err != nil {
		return serving, nil, now, fmt.Errorf("create the first agent CA: %w", err)
	}
	s.log.Info("created the agent CA", "pin", ca.Pin, "not_after", ca.NotAfter)
	return s.readAgentCAs(ctx)
}

// RotateAgentCA adds the next CA with gen; it serves from the end of overlap, and
// until then both pins are announced. It refuses while a previous next CA has not
// begun serving yet.
func (s *Store) RotateAgentCA(ctx context.Context, gen NewAgentCA, overlap time.Duration) (AgentCA, error) {
	ca, err := gen()
	if err != nil {
		return ca, err
	}
	err = s.withAgentCALock(ctx, func(tx pgx.Tx) error {
		var pending *time.Time
		if err := tx.QueryRow(ctx, `SELECT max(serving_from) FROM agent_ca WHERE serving_from > now()`).Scan(&pending); err != nil {
			return err
		}
		if pending != nil {
			return fmt.Errorf("%w: the next CA serves from %s; rotate again after that", ErrRotationPending, pending.UTC().Format(time.RFC3339))
		}
		return insertAgentCA(ctx, tx, ca, fmt.Sprintf("now() + '%d microseconds'::interval", overlap.Microseconds()))
	})
	if err != nil {
		return ca, fmt.Errorf("rotate agent CA: %w", err)
	}
	serving, next, _, err := s.readAgentCAs(ctx)
	if err != nil {
		return ca, err
	}
	for _, n := range next {
		if n.Pin == ca.Pin {
			s.log.Info("rotated the agent CA", "next_pin", ca.Pin, "serving_pin", serving.Pin, "next_serves_from", n.ServingFrom)
			return n, nil
		}
	}
	return ca, fmt.Errorf("rotate agent CA: the new CA %s is not pending after its insert", ca.Pin)
}

func (s *Store) withAgentCALock(ctx context.Context, f func(pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, agentCALock); err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func insertAgentCA(ctx context.Context, tx pgx.Tx, ca AgentCA, servingFrom string) error {
	_, err := tx.Exec(ctx, `INSERT INTO agent_ca (pin, cert_pem, key_pem, not_before, not_after, serving_from)
		VALUES ($1, $2, $3, $4, $5, `+servingFrom+`)`, ca.Pin, ca.CertPEM, ca.KeyPEM, ca.NotBefore, ca.NotAfter)
	return err
}

// readAgentCAs is pgx.ErrNoRows when no CA serves yet.
func (s *Store) readAgentCAs(ctx context.Context) (serving AgentCA, next []AgentCA, now time.Time, err error) {
	rows, err := s.pool.Query(ctx, `SELECT id, pin, cert_pem, key_pem, not_before, not_after, serving_from,
		    serving_from <= now(), now()
		FROM agent_ca
		WHERE serving_from > now() OR id = (SELECT id FROM agent_ca WHERE serving_from <= now() ORDER BY serving_from DESC, id DESC LIMIT 1)
		ORDER BY serving_from, id`)
	if err != nil {
		return serving, nil, now, fmt.Errorf("read agent CAs: %w", err)
	}
	defer rows.Close()
	found := false
	for rows.Next() {
		var ca AgentCA
		var current bool
		if err := rows.Scan(&ca.ID, &ca.Pin, &ca.CertPEM, &ca.KeyPEM, &ca.NotBefore, &ca.NotAfter, &ca.ServingFrom, &current, &now); err != nil {
			return serving, nil, now, fmt.Errorf("read agent CAs: %w", err)
		}
		if current {
			serving, found = ca, true
		} else {
			next = append(next, ca)
		}
	}
	if err := rows.Err(); err != nil {
		return serving, nil, now, fmt.Errorf("read agent CAs: %w", err)
	}
	if !found {
		return serving, nil, now, pgx.ErrNoRows
	}
	return serving, next, now, nil
}
