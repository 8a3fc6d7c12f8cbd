// Package backoff computes exponential retry delays with jitter, so that many
// agents restarting together (a rack power cycle, a vDC restart) do not retry in
// lock step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff doubles its delay from Min up to Max on every Next and adds up to 20 %
// random jitter. The zero value is not usable; set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	} else {
		b.cur *= 2
	}
	if b.cur > b.Max {
		b.cur = b.Max
	}
	d := b.cur
	if j := int64(d) / 5; j > 0 {
		d += time.Duration(rand.Int64N(j))
	}
	return d
}

// Reset starts again from Min after a success.
func (b *Backoff) Reset() { b.cur = 0 }
