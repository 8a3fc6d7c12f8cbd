package store

import (
	"context"
	"fmt"
	"time"
)

// UISession is a web UI login session. Its id lives only in the browser's cookie;
// the database keeps its SHA-256 digest.
type UISession struct {
	CreatedAt, LastSeen, ExpiresAt time.Time
}

// sessionTouchEvery limits last_seen writes: the Hosts page polls every few seconds,
// and the idle timeout does not need more than minute precision.
const sessionTouchEvery = time.Minute

// CreateSession stores a new session's digest. The web UI passes its own clock (now)
// so that expiry can be tested with a fake one.
func (s *Store) CreateSession(ctx context.Context, idHash [32]byte, now, expires time.Time, remoteAddr, userAgent string) error {
	if len(userAgent) > 512 {
		userAgent = userAgent[:512]
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO ui_sessions (id_hash, created_at, last_seen, expires_at, remote_addr, user_agent)
		VALUES ($1, $2, $2, $3, $4, $5)`, idHash[:], now, expires, remoteAddr, userAgent)
	if err != nil {
		return fmt.Errorf("create ui session: %w", err)
	}
	return nil
}

// Session returns the live session with this digest: not past its absolute expiry
// and used within idle. Anything else is ErrNotFound. A session last seen more than
// a minute ago is touched.
func (s *Store) Session(ctx context.Context, idHash [32]byte, now time.Time, idle time.Duration) (UISession, error) {
	var u UISession
	err := s.pool.QueryRow(ctx, `SELECT created_at, last_seen, expires_at FROM ui_sessions
		WHERE id_hash = $1 AND expires_at > $2 AND last_seen > $2 - $3::interval`, idHash[:], now, idle).
		Scan(&u.CreatedAt, &u.LastSeen, &u.ExpiresAt)
	if isNoRows(err) {
		return u, fmt.Errorf("ui session: %w", ErrNotFound)
	}
	if err != nil {
		return u, fmt.Errorf("ui session: %w", err)
	}
	if now.Sub(u.LastSeen) >= sessionTouchEvery {
		if _, err := s.pool.Exec(ctx, `UPDATE ui_sessions SET last_seen = $2 WHERE id_hash = $1 AND last_seen < $2`, idHash[:], now); err != nil {
			return u, fmt.Errorf("touch ui session: %w", err)
		}
		u.LastSeen = now
	}
	return u, nil
}

// DeleteSession ends a session (logout). An unknown digest is not an error.
func (s *Store) DeleteSession(ctx context.Context, idHash [32]byte) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM ui_sessions WHERE id_hash = $1`, idHash[:]); err != nil {
		return fmt.Errorf("delete ui session: %w", err)
	}
	return nil
}

// DeleteExpiredSessions removes sessions past their absolute expiry or idle longer
// than idle, and returns how many.
func (s *Store) DeleteExpiredSessions(ctx context.Context, now time.Time, idle time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM ui_sessions WHERE expires_at <= $1 OR last_seen <= $1 - $2::interval`, now, idle)
	if err != nil {
		return 0, fmt.Errorf("delete expired ui sessions: %w", err)
	}
	return tag.RowsAffected(), nil
}
