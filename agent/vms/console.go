package vms

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/quantix/quantix"
)

// consoleTail is what was last sent of one VM's serial log.
type consoleTail struct {
	path    string
	size    int64
	modTime time.Time
	sent    bool
}

// consoleLoop sends a desired VM's console tail (the newest MaxConsoleBytes of its
// serial log) to the vDC whenever the log changed, within ConsoleEvery.
func (r *Reconciler) consoleLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.ConsoleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		tails := make(map[string]consoleTail, len(r.consoles))
		for id, c := range r.consoles {
			tails[id] = *c
		}
		r.mu.Unlock()
		for id, c := range tails {
			fi, err := os.Stat(c.path)
			if err != nil || (c.sent && fi.Size() == c.size && fi.ModTime().Equal(c.modTime)) {
				continue
			}
			tail, err := readTail(c.path, quantix.MaxConsoleBytes)
			if err != nil {
				continue
			}
			if err := r.cfg.Channel.PutConsole(ctx, id, tail); err != nil {
				r.log.Debug("console upload failed; retrying", "vm", id, "err", err)
				continue
			}
			r.mu.Lock()
			if cur := r.consoles[id]; cur != nil {
				cur.size, cur.modTime, cur.sent = fi.Size(), fi.ModTime(), true
			}
			r.mu.Unlock()
		}
	}
}

// readTail returns the last n bytes of a file.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-n, 0)
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(f, n))
}
