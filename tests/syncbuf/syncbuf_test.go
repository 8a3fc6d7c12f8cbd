package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

// TestConcurrentWrites: writers on many goroutines lose nothing and never tear a
// write (run with -race to check the locking too).
func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("0123456789\n"))
				b.WriteString("abcdefghij\n")
				_ = b.String()
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 8*100*2 {
		t.Fatalf("%d lines, want %d", len(lines), 8*100*2)
	}
	for _, l := range lines {
		if l != "0123456789" && l != "abcdefghij" {
			t.Fatalf("torn line %q", l)
		}
	}
}
