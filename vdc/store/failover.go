package store

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// DefaultDatabaseTimeout bounds how long the vDC waits on an unanswering database
// server (a partition, a dead primary): connecting, and unacknowledged writes on a
// connection (TCP_USER_TIMEOUT), so a request fails in seconds instead of hanging.
const DefaultDatabaseTimeout = 5 * time.Second

// dialer connects to PostgreSQL with the kernel told to give up on a connection
// whose sent data stays unacknowledged for timeout, and keep-alive probes that find
// a silent server within about timeout while the connection idles.
func dialer(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:         timeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: timeout / 2, Interval: timeout / 4, Count: 2},
		Control: func(network, address string, c syscall.RawConn) error {
			if network != "tcp" && network != "tcp4" && network != "tcp6" {
				return nil
			}
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(timeout.Milliseconds()))
			})
			return errors.Join(err, serr)
		},
	}
	return d.DialContext
}

// Unavailable reports whether err means the database cannot take requests now
// rather than that the request was wrong: no server reachable, a connection lost
// or timed out, a server shutting down or starting, or a read-only server (a
// demoted primary). The API answers those with 503 and Retry-After. A read-only or
// shutting-down server also resets the pool (at most once a second), so that new
// connections look for the primary again (target_session_attrs=read-write).
func (s *Store) Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "25006", // read_only_sql_transaction: a standby or demoted primary
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03": // shutdown, crash, cannot connect now
			s.resetPool()
			return true
		case len(pe.Code) == 5 && pe.Code[:2] == "08": // connection exception
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	// io.ErrUnexpectedEOF: the connection closed under a query (a server or a
	// proxy gone without a word).
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.Timeout(err) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (s *Store) resetPool() {
	now := time.Now().UnixNano()
	last := s.lastReset.Load()
	if now-last < int64(time.Second) || !s.lastReset.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("database connection on a read-only or stopping server: reconnecting to the primary")
	s.pool.Reset()
}
