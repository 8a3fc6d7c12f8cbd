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

// LoginThrottle is the web UI's policy against guessing the admin token (vdc/web).
type LoginThrottle struct {
	Free    int           // attempts without a wait (at least 1)
	MaxWait time.Duration // the longest lockout
	Forget  time.Duration // a client without attempts this long starts from 0 (above MaxWait)
}

// LoginAttempt counts a login attempt by client at now, unless client is locked out:
// then it counts nothing and returns how long the client must still wait. After
// p.Free attempts, each further one locks the client out for 1 s, 2 s, 4 s ... up to
// p.MaxWait from its time. The check and the count are one statement, made before
// the token is compared, so concurrent attempts through any vDC of the database get
// no more tries than sequential ones; LoginSucceeded clears the client.
func (s *Store) LoginAttempt(ctx context.Context, client string, now time.Time, p LoginThrottle) (attempts int, wait time.Duration, err error) {
	// The row is locked while the statement decides (ON CONFLICT DO UPDATE): a
	// second attempt waits for the first one's count.
	err = s.pool.QueryRow(ctx, `INSERT INTO ui_login_attempts AS f (client, attempts, last_attempt, locked_until)
		VALUES ($1, 1, $2, $2)
		ON CONFLICT (client) DO UPDATE SET (attempts, last_attempt, locked_until) =
			(SELECT n, $2, CASE WHEN n > $3::int
				THEN $2 + least($4::interval, interval '1 second' * (2 ^ least(n - $3::int - 1, 20)))
				ELSE $2 END
			FROM (SELECT CASE WHEN f.last_attempt <= $2 - $5::interval THEN 1 ELSE f.attempts + 1 END AS n) c)
		WHERE f.locked_until <= $2
		RETURNING attempts`, client, now, p.Free, p.MaxWait, p.Forget).Scan(&attempts)
	if err == nil {
		return attempts, 0, nil
	}
	if !isNoRows(err) {
		return 0, 0, fmt.Errorf("count login attempt: %w", err)
	}
	// Locked out: nothing was counted. Read how long for the answer's Retry-After.
	var until time.Time
	err = s.pool.QueryRow(ctx, `SELECT attempts, locked_until FROM ui_login_attempts WHERE client = $1`, client).Scan(&attempts, &until)
	if err != nil && !isNoRows(err) {
		return 0, 0, fmt.Errorf("read login lockout: %w", err)
	}
	// The lockout may have ended (or the row gone) since: a moment to wait then.
	return attempts, max(until.Sub(now), time.Millisecond), nil
}

// LoginSucceeded forgets client's attempts.
func (s *Store) LoginSucceeded(ctx context.Context, client string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM ui_login_attempts WHERE client = $1`, client); err != nil {
		return fmt.Errorf("clear login attempts: %w", err)
	}
	return nil
}

// DeleteStaleLoginAttempts removes the clients without an attempt since before,
// and returns how many.
func (s *Store) DeleteStaleLoginAttempts(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM ui_login_attempts WHERE last_attempt <= $1 AND locked_until <= $1`, before)
	if err != nil {
		return 0, fmt.Errorf("delete stale login attempts: %w", err)
	}
	return tag.RowsAffected(), nil
}
