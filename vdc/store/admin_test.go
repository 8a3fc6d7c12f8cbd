package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix/vdc/store"
)

// others opens n more stores on s's database: other vDC processes.
func others(t *testing.T, s *store.Store, n int) []*store.Store {
	t.Helper()
	out := make([]*store.Store, n)
	for i := range out {
		o, err := store.Open(context.Background(), store.Config{DatabaseURL: s.Pool().Config().ConnString(), MaxConns: 4}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(o.Close)
		out[i] = o
	}
	return out
}

// TestAdminTokenBootstrapOnce: six vDCs starting at once on an empty database, each
// with its own token (configured or generated), store exactly one digest; every one
// of them gets that one, and exactly one is told it stored it.
func TestAdminTokenBootstrapOnce(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if _, err := s.AdminToken(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("AdminToken on a fresh database = %v, want ErrNotFound", err)
	}
	const n = 6
	vdcs := others(t, s, n)
	got := make([]store.AdminTokenState, n)
	created := make([]bool, n)
	errs := make([]error, n)
	hashes := make([][32]byte, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, o := range vdcs {
		hashes[i] = store.HashSecret(store.NewSecret())
		wg.Go(func() {
			<-start
			got[i], created[i], errs[i] = o.InitAdminToken(ctx, hashes[i])
		})
	}
	close(start)
	wg.Wait()
	winners := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("vDC %d: InitAdminToken: %v", i, errs[i])
		}
		if created[i] {
			winners++
			if got[i].Hash != hashes[i] {
				t.Errorf("vDC %d created the row but got another digest", i)
			}
		}
		if got[i].Hash != got[0].Hash || got[i].Generation != 1 {
			t.Errorf("vDC %d: digest %x generation %d, want vDC 0's %x, generation 1", i, got[i].Hash[:4], got[i].Generation, got[0].Hash[:4])
		}
	}
	var rows int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM admin_token`).Scan(&rows); err != nil || rows != 1 || winners != 1 {
		t.Errorf("admin_token rows = %d (%v), vDCs that stored theirs = %d; want 1 and 1", rows, err, winners)
	}
	// A later start with yet another token changes nothing.
	if st, created, err := s.InitAdminToken(ctx, store.HashSecret("later-token-0123456789")); err != nil || created || st.Hash != got[0].Hash {
		t.Errorf("InitAdminToken after the bootstrap = created %v, %v, digest kept %v; want the stored digest untouched", created, err, st.Hash == got[0].Hash)
	}
}

// TestAdminAuthCacheAndRotation: checks are answered from the cache (one read of the
// digest however many requests), a rotation through another vDC is refused here
// within the TTL, and the rotating vDC refuses the old token at once.
func TestAdminAuthCacheAndRotation(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	old := store.NewSecret()
	if _, _, err := s.InitAdminToken(ctx, store.HashSecret(old)); err != nil {
		t.Fatal(err)
	}
	here := store.NewAdminAuth(s, time.Hour)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 100 {
				if ok, err := here.Check(ctx, old); !ok || err != nil {
					t.Errorf("Check(old) = %v, %v; want true", ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := here.Reads(); n != 1 {
		t.Errorf("1,600 checks read the digest %d times, want 1 (the cache answers the rest)", n)
	}
	if ok, err := here.Check(ctx, ""); ok || err != nil {
		t.Errorf("Check(\"\") = %v, %v; want false", ok, err)
	}
	if ok, err := here.Check(ctx, old+"x"); ok || err != nil {
		t.Errorf("Check(wrong) = %v, %v; want false", ok, err)
	}

	const ttl = 200 * time.Millisecond
	other := others(t, s, 1)[0]
	there := store.NewAdminAuth(other, ttl)
	rotator := store.NewAdminAuth(s, ttl)
	for _, a := range []*store.AdminAuth{there, rotator} {
		if ok, err := a.Check(ctx, old); !ok || err != nil {
			t.Fatalf("Check(old) before the rotation = %v, %v", ok, err)
		}
	}
	var sessions int64 = 3
	for i := range sessions {
		now := time.Now()
		if err := s.CreateSession(ctx, store.HashSecret(string(rune('a'+i))), now, now.Add(time.Hour), "192.0.2.1", "test"); err != nil {
			t.Fatal(err)
		}
	}
	tok, st, ended, err := rotator.Rotate(ctx)
	rotated := time.Now()
	if err != nil || len(tok) != 64 || st.Generation != 2 || ended != sessions {
		t.Fatalf("Rotate = %d-character token, generation %d, %d sessions ended, %v; want 64, 2, %d", len(tok), st.Generation, ended, err, sessions)
	}
	if ok, _ := rotator.Check(ctx, old); ok {
		t.Errorf("the rotating vDC still accepts the old token")
	}
	if ok, _ := rotator.Check(ctx, tok); !ok {
		t.Errorf("the rotating vDC refuses the new token")
	}
	for {
		okOld, err1 := there.Check(ctx, old)
		okNew, err2 := there.Check(ctx, tok)
		if err1 != nil || err2 != nil {
			t.Fatalf("Check on the other vDC: %v, %v", err1, err2)
		}
		if !okOld && okNew {
			break
		}
		if time.Since(rotated) > ttl+time.Second {
			t.Fatalf("the other vDC accepts old %v, new %v %s after the rotation (TTL %s)", okOld, okNew, time.Since(rotated), ttl)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the other vDC refused the old token %s after the rotation (TTL %s)", time.Since(rotated).Round(time.Millisecond), ttl)
	if st, err := other.AdminToken(ctx); err != nil || st.Generation != 2 || st.Hash != store.HashSecret(tok) {
		t.Errorf("stored digest after the rotation: generation %d, %v; want generation 2 and the new token's", st.Generation, err)
	}
}

// TestLoginAttemptsShared: concurrent attempts from one client through two vDCs get
// exactly the free attempts and one more (the one that starts the lockout), like
// sequential attempts through one vDC; a success clears the client; a quiet client
// is forgotten and pruned.
func TestLoginAttemptsShared(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	p := store.LoginThrottle{Free: 5, MaxWait: 5 * time.Minute, Forget: 15 * time.Minute}
	vdcs := append(others(t, s, 1), s)
	now := time.Date(2026, 12, 4, 1, 0, 0, 0, time.UTC)
	const tries = 24
	allowed := make(chan int, tries)
	var wg sync.WaitGroup
	for i := range tries {
		wg.Go(func() {
			n, wait, err := vdcs[i%2].LoginAttempt(ctx, "192.0.2.7", now, p)
			switch {
			case err != nil:
				t.Errorf("attempt %d: %v", i, err)
			case wait == 0:
				allowed <- n
			case wait != time.Second:
				t.Errorf("attempt %d: wait %s, want 1s (the lockout after the 6th)", i, wait)
			}
		})
	}
	wg.Wait()
	close(allowed)
	seen := map[int]bool{}
	for n := range allowed {
		seen[n] = true
	}
	if len(seen) != p.Free+1 || !seen[1] || !seen[p.Free+1] {
		t.Errorf("%d concurrent attempts over two vDCs: counted %v, want exactly 1..%d", tries, seen, p.Free+1)
	}
	// Another client is not slowed down.
	if _, wait, err := s.LoginAttempt(ctx, "192.0.2.8", now, p); wait != 0 || err != nil {
		t.Errorf("another client: wait %s, %v; want none", wait, err)
	}
	// After the lockout: one more attempt, then 2 s.
	now = now.Add(time.Second)
	if n, wait, err := vdcs[0].LoginAttempt(ctx, "192.0.2.7", now, p); n != p.Free+2 || wait != 0 || err != nil {
		t.Errorf("attempt after the lockout = %d, wait %s, %v; want %d, no wait", n, wait, err, p.Free+2)
	}
	if _, wait, _ := vdcs[1].LoginAttempt(ctx, "192.0.2.7", now, p); wait != 2*time.Second {
		t.Errorf("attempt during the second lockout: wait %s, want 2s", wait)
	}
	// A success (on the other vDC) clears the client.
	if err := vdcs[1].LoginSucceeded(ctx, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if n, wait, _ := vdcs[0].LoginAttempt(ctx, "192.0.2.7", now, p); n != 1 || wait != 0 {
		t.Errorf("attempt after a success = %d, wait %s; want 1, none", n, wait)
	}
	// Quiet for the forget time: counted from 1 again, and pruned.
	later := now.Add(p.Forget + time.Second)
	if n, err := s.DeleteStaleLoginAttempts(ctx, later.Add(-p.Forget)); n != 2 || err != nil {
		t.Errorf("DeleteStaleLoginAttempts = %d, %v; want both clients", n, err)
	}
	for range p.Free + 3 {
		vdcs[0].LoginAttempt(ctx, "192.0.2.9", now, p)
	}
	if n, wait, _ := vdcs[1].LoginAttempt(ctx, "192.0.2.9", later, p); n != 1 || wait != 0 {
		t.Errorf("attempt after the forget time = %d, wait %s; want 1, none", n, wait)
	}
}
