package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quantix/quantix/vdc/store"
)

// TestUISessions: a session is found while it is neither idle too long nor past its
// absolute expiry; last_seen moves at most once a minute; deleted ones are gone.
func TestUISessions(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	idle := time.Hour
	id := store.HashSecret("session-a")
	if err := s.CreateSession(ctx, id, t0, t0.Add(12*time.Hour), "192.0.2.1", "test"); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		at       time.Duration // after t0
		found    bool
		lastSeen time.Duration // after t0, when found
	}{
		{30 * time.Second, true, 0},                  // not touched within the first minute
		{50 * time.Minute, true, 50 * time.Minute},   // touched
		{109 * time.Minute, true, 109 * time.Minute}, // 59 min after the touch: still within idle
		{169 * time.Minute, false, 0},                // 60 min idle: over
	}
	for _, st := range steps {
		u, err := s.Session(ctx, id, t0.Add(st.at), idle)
		if st.found != (err == nil) {
			t.Fatalf("at +%s: %v, found want %v", st.at, err, st.found)
		}
		if !st.found {
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("at +%s: %v, want ErrNotFound", st.at, err)
			}
			continue
		}
		if !u.LastSeen.Equal(t0.Add(st.lastSeen)) {
			t.Errorf("at +%s: last_seen %s, want +%s", st.at, u.LastSeen.Sub(t0), st.lastSeen)
		}
	}

	// Absolute expiry wins over activity.
	b := store.HashSecret("session-b")
	s.CreateSession(ctx, b, t0, t0.Add(2*time.Hour), "", "")
	for at := 30 * time.Minute; at < 2*time.Hour; at += 30 * time.Minute {
		if _, err := s.Session(ctx, b, t0.Add(at), idle); err != nil {
			t.Fatalf("active session at +%s: %v", at, err)
		}
	}
	if _, err := s.Session(ctx, b, t0.Add(2*time.Hour), idle); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session at its absolute expiry: %v, want ErrNotFound", err)
	}

	c := store.HashSecret("session-c")
	s.CreateSession(ctx, c, t0.Add(150*time.Minute), t0.Add(14*time.Hour), "", "")
	n, err := s.DeleteExpiredSessions(ctx, t0.Add(3*time.Hour), idle)
	if err != nil || n != 2 {
		t.Errorf("DeleteExpiredSessions = %d, %v; want the 2 expired ones", n, err)
	}
	if _, err := s.Session(ctx, c, t0.Add(3*time.Hour), idle); err != nil {
		t.Errorf("a live session was deleted with the expired ones: %v", err)
	}
	if err := s.DeleteSession(ctx, c); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, c, t0.Add(3*time.Hour), idle); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted session: %v, want ErrNotFound", err)
	}
	if err := s.CreateSession(ctx, c, t0, t0.Add(time.Hour), "", ""); err != nil {
		t.Errorf("re-create after delete: %v", err)
	}
	if err := s.CreateSession(ctx, c, t0, t0.Add(time.Hour), "", ""); err == nil {
		t.Errorf("a second session with the same id digest was accepted")
	}
}
