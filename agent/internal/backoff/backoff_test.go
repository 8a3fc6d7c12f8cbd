package backoff

import (
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 60 * time.Second}
	wantBase := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60}
	for i, base := range wantBase {
		base *= time.Second
		got := b.Next()
		if got < base || got > base+base/5 {
			t.Errorf("Next() #%d = %v, want in [%v, %v]", i, got, base, base+base/5)
		}
	}
	b.Reset()
	if got := b.Next(); got < time.Second || got > 1200*time.Millisecond {
		t.Errorf("Next() after Reset = %v, want about 1s", got)
	}
}
