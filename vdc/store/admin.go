package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// The admin token is cluster-wide (docs/design.md §17): its digest lives in
// admin_token (migration 009), one row for every vDC on the database. The digest is a
// plain SHA-256: the token is 256 random bits when generated (at least 16 characters
// when configured), so a salt or a slow hash would add nothing against guessing, and
// the comparison is constant-time in Go (SameDigest). The token itself is never
// stored.

// AdminTokenState is the row of admin_token.
type AdminTokenState struct {
	Hash       [32]byte
	Generation int64 // 1 at the bootstrap, +1 per rotation
	UpdatedAt  time.Time
}

// InitAdminToken stores hash as the cluster's admin token digest unless one is
// stored already, and returns the stored one; created says it is hash, stored by
// this call. vDCs starting at once on an empty database store exactly one (the
// table's single-row primary key); the others get the winner's.
func (s *Store) InitAdminToken(ctx context.Context, hash [32]byte) (st AdminTokenState, created bool, err error) {
	var h []byte
	err = s.pool.QueryRow(ctx, `INSERT INTO admin_token (hash) VALUES ($1) ON CONFLICT (id) DO NOTHING
		RETURNING hash, generation, updated_at`, hash[:]).Scan(&h, &st.Generation, &st.UpdatedAt)
	switch {
	case err == nil:
		copy(st.Hash[:], h)
		return st, true, nil
	case !isNoRows(err):
		return st, false, fmt.Errorf("store the admin token digest: %w", err)
	}
	// Another vDC stored it first; this statement sees its committed row.
	st, err = s.AdminToken(ctx)
	return st, false, err
}

// AdminToken reads the cluster's admin token digest; ErrNotFound before any vDC
// stored one.
func (s *Store) AdminToken(ctx context.Context) (AdminTokenState, error) {
	var st AdminTokenState
	var h []byte
	err := s.pool.QueryRow(ctx, `SELECT hash, generation, updated_at FROM admin_token`).Scan(&h, &st.Generation, &st.UpdatedAt)
	if isNoRows(err) {
		return st, fmt.Errorf("admin token digest: %w", ErrNotFound)
	}
	if err != nil {
		return st, fmt.Errorf("read the admin token digest: %w", err)
	}
	copy(st.Hash[:], h)
	return st, nil
}

// RotateAdminToken replaces the admin token digest and, in the same transaction,
// ends every web UI session: a session opened with the old token (perhaps by
// whoever leaked it) must not outlive it.
func (s *Store) RotateAdminToken(ctx context.Context, hash [32]byte) (st AdminTokenState, sessionsEnded int64, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return st, 0, fmt.Errorf("rotate the admin token: %w", err)
	}
	defer tx.Rollback(ctx)
	var h []byte
	err = tx.QueryRow(ctx, `UPDATE admin_token SET hash = $1, generation = generation + 1, updated_at = now()
		RETURNING hash, generation, updated_at`, hash[:]).Scan(&h, &st.Generation, &st.UpdatedAt)
	if isNoRows(err) {
		return st, 0, fmt.Errorf("rotate the admin token: no admin token stored yet: %w", ErrNotFound)
	}
	if err != nil {
		return st, 0, fmt.Errorf("rotate the admin token: %w", err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM ui_sessions`)
	if err != nil {
		return st, 0, fmt.Errorf("rotate the admin token: end ui sessions: %w", err)
	}
	// Delivered at commit, to every vDC's Listener.
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, AdminTokenChannel, fmt.Sprint(st.Generation)); err != nil {
		return st, 0, fmt.Errorf("rotate the admin token: notify: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return st, 0, fmt.Errorf("rotate the admin token: %w", err)
	}
	copy(st.Hash[:], h)
	s.log.Info("rotated the admin token", "generation", st.Generation, "ui_sessions_ended", tag.RowsAffected())
	return st, tag.RowsAffected(), nil
}

// AdminTokenChannel is the PostgreSQL NOTIFY channel of admin token rotations: a
// vDC's Listener drops its cached digest at once, so the TTL only bounds the
// propagation while notifications do not arrive.
const AdminTokenChannel = "quantix_admin_token"

// AdminTokenTTL is how long a vDC trusts its cached admin token digest. A rotation
// through any vDC is in force on every vDC of the database within it (plus one
// query); each vDC reads the digest at most once per TTL, never once per request.
const AdminTokenTTL = 5 * time.Second

// adminRetryAfter: after a failed read of the digest, checks within this answer the
// same error at once instead of each waiting for the database timeout.
const adminRetryAfter = time.Second

// AdminAuth checks admin tokens against the cluster's digest, cached for a TTL. When
// the cache is older and the database cannot be read, Check fails (the API answers
// 503): a stale digest is never trusted past the TTL, so a rotation stays bounded
// even while this vDC cannot see it.
type AdminAuth struct {
	s     *Store
	ttl   time.Duration
	reads atomic.Int64

	refresh sync.Mutex // one read of the digest at a time; the others wait for it

	mu      sync.Mutex
	state   AdminTokenState
	fetched time.Time // when the read that gave state began (zero: never, or dropped)
	dropped time.Time // reads begun before this may predate a rotation: not cached
	err     error     // the last read's failure, answered until errAt+adminRetryAfter
	errAt   time.Time
}

// NewAdminAuth returns a checker that rereads the digest once it is older than ttl
// (0: AdminTokenTTL).
func NewAdminAuth(s *Store, ttl time.Duration) *AdminAuth {
	if ttl <= 0 {
		ttl = AdminTokenTTL
	}
	return &AdminAuth{s: s, ttl: ttl}
}

// TTL is how long the digest is cached: the bound on a rotation's propagation.
func (a *AdminAuth) TTL() time.Duration { return a.ttl }

// Reads counts the reads of the digest from the database (tests).
func (a *AdminAuth) Reads() int64 { return a.reads.Load() }

// Check reports whether token is the cluster's admin token. An error means it
// cannot tell: the digest is older than the TTL and the database did not answer.
func (a *AdminAuth) Check(ctx context.Context, token string) (bool, error) {
	st, err := a.current(ctx)
	if err != nil {
		return false, err
	}
	got := HashSecret(token)
	return token != "" && SameDigest(got[:], st.Hash[:]), nil
}

func (a *AdminAuth) cached() (AdminTokenState, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state, !a.fetched.IsZero() && time.Since(a.fetched) < a.ttl
}

func (a *AdminAuth) current(ctx context.Context) (AdminTokenState, error) {
	if st, ok := a.cached(); ok {
		return st, nil
	}
	a.refresh.Lock()
	defer a.refresh.Unlock()
	if st, ok := a.cached(); ok {
		return st, nil // read by the caller we waited for
	}
	a.mu.Lock()
	if a.err != nil && time.Since(a.errAt) < adminRetryAfter {
		err := a.err
		a.mu.Unlock()
		return AdminTokenState{}, err
	}
	a.mu.Unlock()
	start := time.Now()
	a.reads.Add(1)
	st, err := a.s.AdminToken(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("check the admin token: %w", err)
		if ctx.Err() == nil {
			a.err, a.errAt = err, time.Now()
		}
		return AdminTokenState{}, err
	}
	a.err = nil
	if !start.After(a.fetched) || !start.After(a.dropped) {
		// Begun before a rotation here or a notification of one: good for this
		// request, not for the cache.
		return st, nil
	}
	a.state, a.fetched = st, start
	return st, nil
}

// invalidate drops the cached digest: the next check reads it (a rotation was
// notified, or notifications may have been missed).
func (a *AdminAuth) invalidate() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fetched, a.dropped = time.Time{}, time.Now()
}

// Rotate makes a new admin token, stores its digest (ending every web UI session)
// and returns the token: the only time it exists in clear. This vDC refuses the old
// token at once, the others within the TTL.
func (a *AdminAuth) Rotate(ctx context.Context) (token string, st AdminTokenState, sessionsEnded int64, err error) {
	token = NewSecret()
	start := time.Now()
	st, sessionsEnded, err = a.s.RotateAdminToken(ctx, HashSecret(token))
	if err != nil {
		return "", st, 0, err
	}
	a.mu.Lock()
	a.state, a.fetched, a.err = st, start, nil
	a.mu.Unlock()
	return token, st, sessionsEnded, nil
}
