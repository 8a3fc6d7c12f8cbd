package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Batcher coalesces concurrent heartbeats into one statement and one commit each
// (Heartbeats). It adds no waiting: each of its workers takes the heartbeats that
// are queued when it becomes free, so at low load a batch holds one heartbeat and
// under load the batch grows while the previous commit is in flight. Submit
// returns only after the heartbeat's batch has committed, so an ack always means
// "recorded".
type Batcher struct {
	s     *Store
	log   *slog.Logger
	queue chan *pending // never closed: a late Submit must not panic
	quit  chan struct{}
	once  sync.Once
	max   int
	wg    sync.WaitGroup

	batches, recorded atomic.Int64
}

// Stats returns the statements (batches) run and the heartbeats they carried.
func (b *Batcher) Stats() (batches, heartbeats int64) { return b.batches.Load(), b.recorded.Load() }

type pending struct {
	hb   Heartbeat
	done chan HeartbeatResult
}

// NewBatcher starts workers (each holding at most one pool connection) taking up to
// maxBatch heartbeats per statement. Stop it with Close.
func NewBatcher(s *Store, workers, maxBatch int, log *slog.Logger) *Batcher {
	b := &Batcher{s: s, log: log, queue: make(chan *pending, workers*maxBatch), quit: make(chan struct{}), max: maxBatch}
	for range workers {
		b.wg.Add(1)
		go b.work()
	}
	return b
}

// ErrClosed is returned by Submit once the Batcher is closed (the vDC is stopping).
var ErrClosed = errors.New("the vDC is shutting down")

// Submit records one heartbeat and waits for its commit, at most the database
// timeout in all: a heartbeat queued behind a batch that hangs on an unanswering
// server fails as soon as that server's requests do (then 503), not a timeout
// later.
func (b *Batcher) Submit(ctx context.Context, hb Heartbeat) (HeartbeatResult, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, b.s.timeout, errHeartbeatTimeout)
	defer cancel()
	p := &pending{hb: hb, done: make(chan HeartbeatResult, 1)}
	select {
	case b.queue <- p:
	case <-b.quit:
		return HeartbeatResult{}, ErrClosed
	case <-ctx.Done():
		return HeartbeatResult{}, context.Cause(ctx)
	}
	select {
	case r := <-p.done:
		return r, nil
	case <-b.quit:
		// Queued after the workers' last drain: nobody will record it. (If a
		// worker did take it, its answer is lost; the agent just heartbeats again.)
		select {
		case r := <-p.done:
			return r, nil
		case <-time.After(time.Second):
			return HeartbeatResult{}, ErrClosed
		}
	case <-ctx.Done():
		// The batch may still commit; the agent will just heartbeat again.
		return HeartbeatResult{}, context.Cause(ctx)
	}
}

// errHeartbeatTimeout is a heartbeat not recorded within the database timeout
// (the API answers 503: Unavailable matches context.DeadlineExceeded).
var errHeartbeatTimeout = fmt.Errorf("heartbeat not recorded within the database timeout: %w", context.DeadlineExceeded)

// Close stops the workers after recording the heartbeats already queued.
func (b *Batcher) Close() {
	b.once.Do(func() { close(b.quit) })
	b.wg.Wait()
}

func (b *Batcher) work() {
	defer b.wg.Done()
	batch := make([]*pending, 0, b.max)
	for {
		var first *pending
		select {
		case first = <-b.queue:
		case <-b.quit:
			// Drain what is queued, then stop.
			select {
			case first = <-b.queue:
			default:
				return
			}
		}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < b.max {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
			default:
				break drain
			}
		}
		hbs := make([]Heartbeat, len(batch))
		for i, p := range batch {
			hbs[i] = p.hb
		}
		// Not the requests' contexts: one caller giving up must not fail the others.
		// A server that does not answer fails the batch within the database
		// timeout (then 503), rather than holding every heartbeat.
		ctx, cancel := context.WithTimeout(context.Background(), b.s.timeout)
		res, err := b.s.Heartbeats(ctx, hbs)
		cancel()
		b.batches.Add(1)
		b.recorded.Add(int64(len(hbs)))
		for i, p := range batch {
			if err != nil {
				p.done <- HeartbeatResult{Err: err}
				continue
			}
			p.done <- res[i]
		}
		if err != nil {
			b.log.Error("record heartbeats", "count", len(batch), "err", err)
		}
	}
}
