package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listener wakes the desired-state long-polls of this process when a node's desired
// generation changes, whichever vDC process changed it: one connection LISTENs on
// DesiredChannel and fans each notification out to the waiters of that node. On
// the same connection it LISTENs on AdminTokenChannel and drops the cached admin
// token digest (WatchAdminToken) when any vDC rotates it.
type Listener struct {
	s     *Store
	log   *slog.Logger
	admin *AdminAuth // nil: no admin token cache to drop

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	up      bool // LISTEN is in place

	stopping     chan struct{} // closed by Stop
	stoppingOnce sync.Once
}

// NewListener returns a Listener; Run keeps its connection.
func NewListener(s *Store, log *slog.Logger) *Listener {
	return &Listener{s: s, log: log, waiters: map[string]map[chan struct{}]struct{}{}, stopping: make(chan struct{})}
}

// WatchAdminToken makes the listener drop a's cached digest at each rotation
// through any vDC, and whenever its connection comes back (a notification may have
// been missed). Call it before Run.
func (l *Listener) WatchAdminToken(a *AdminAuth) { l.admin = a }

// Listener backoff after a lost connection.
const (
	listenRetryMin = 100 * time.Millisecond
	listenRetryMax = 5 * time.Second
)

// Run listens until ctx ends, reconnecting after a lost connection. While it is
// down, waiters still answer at the end of their wait; when it is back every waiter
// wakes once, since notifications may have been missed meanwhile.
func (l *Listener) Run(ctx context.Context) {
	retry := listenRetryMin
	for ctx.Err() == nil {
		start := time.Now()
		err := l.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		l.setUp(false)
		if time.Since(start) > time.Minute {
			retry = listenRetryMin
		}
		l.log.Warn("desired-state listener lost its connection; long-polls answer at their timeout until it is back",
			"err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(retry*2, listenRetryMax)
	}
}

func (l *Listener) listen(ctx context.Context) error {
	cc := l.s.pool.Config().ConnConfig.Copy()
	// Waiting for notifications is no statement: no timeout applies to it.
	delete(cc.RuntimeParams, "statement_timeout")
	delete(cc.RuntimeParams, "idle_in_transaction_session_timeout")
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	// DesiredChannel last: pg_stat_activity shows the connection's query as
	// "LISTEN quantix_desired", by which operators and tests find the listeners.
	for _, ch := range []string{AdminTokenChannel, DesiredChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+ch); err != nil {
			return fmt.Errorf("listen %s: %w", ch, err)
		}
	}
	l.setUp(true)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == AdminTokenChannel {
			if l.admin != nil {
				l.admin.invalidate()
			}
			continue
		}
		l.wake(n.Payload)
	}
}

func (l *Listener) setUp(up bool) {
	l.mu.Lock()
	was := l.up
	l.up = up
	var all []chan struct{}
	if up && !was {
		for _, ws := range l.waiters {
			for c := range ws {
				all = append(all, c)
			}
		}
	}
	l.mu.Unlock()
	if up && !was && l.admin != nil {
		l.admin.invalidate()
	}
	for _, c := range all {
		signal(c)
	}
}

// Up says whether notifications arrive (the LISTEN connection is in place).
func (l *Listener) Up() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up
}

// Waiters counts the long-polls waiting now.
func (l *Listener) Waiters() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ws := range l.waiters {
		n += len(ws)
	}
	return n
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (l *Listener) wake(nodeID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.waiters[nodeID] {
		signal(c)
	}
}

// Subscribe returns a channel that receives after each change of nodeID's desired
// generation, and the function that ends the subscription.
func (l *Listener) Subscribe(nodeID string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	l.mu.Lock()
	ws := l.waiters[nodeID]
	if ws == nil {
		ws = map[chan struct{}]struct{}{}
		l.waiters[nodeID] = ws
	}
	ws[c] = struct{}{}
	l.mu.Unlock()
	return c, func() {
		l.mu.Lock()
		delete(ws, c)
		if len(ws) == 0 && l.waiters[nodeID] != nil && len(l.waiters[nodeID]) == 0 {
			delete(l.waiters, nodeID)
		}
		l.mu.Unlock()
	}
}

// Stop answers every waiting long-poll now, and later ones without waiting: the
// server is shutting down and must not wait for them.
func (l *Listener) Stop() { l.stoppingOnce.Do(func() { close(l.stopping) }) }

// AwaitDesired returns the node's desired generation as soon as it differs from
// after, or the current one once wait has passed.
func (l *Listener) AwaitDesired(ctx context.Context, nodeID string, after int64, wait time.Duration) (int64, error) {
	wake, stop := l.Subscribe(nodeID)
	defer stop()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		gen, err := l.s.DesiredGeneration(ctx, nodeID)
		if err != nil || gen != after {
			return gen, err
		}
		select {
		case <-wake:
		case <-deadline.C:
			return gen, nil
		case <-l.stopping:
			return gen, nil
		case <-ctx.Done():
			return gen, ctx.Err()
		}
	}
}
