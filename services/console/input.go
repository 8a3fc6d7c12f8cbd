package console

import (
	"io"
	"time"
)

// seqReader hands the terminal's bytes to the UI so that an escape sequence (an
// arrow key is ESC [ B) is never cut in two. A slow serial line, or a guest under
// emulation, can deliver ESC in one read and "[B" in the next; bubbletea would
// then see the Esc key and the letters "[B". When a read ends inside a sequence,
// seqReader waits up to seqWait for the rest.
type seqReader struct {
	ch      chan []byte
	err     error // set before ch is closed
	pending []byte
}

const seqWait = 50 * time.Millisecond

func newSeqReader(r io.Reader) *seqReader {
	s := &seqReader{ch: make(chan []byte, 16)}
	go func() {
		for {
			buf := make([]byte, 256)
			n, err := r.Read(buf)
			if n > 0 {
				s.ch <- buf[:n]
			}
			if err != nil {
				s.err = err
				close(s.ch)
				return
			}
		}
	}()
	return s
}

func (s *seqReader) Read(p []byte) (int, error) {
	if len(s.pending) == 0 {
		c, ok := <-s.ch
		if !ok {
			return 0, s.err
		}
		s.pending = c
	}
	for incompleteSeq(s.pending) {
		c, ok := s.wait()
		if !ok {
			break
		}
		s.pending = append(s.pending, c...)
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

func (s *seqReader) wait() ([]byte, bool) {
	t := time.NewTimer(seqWait)
	defer t.Stop()
	select {
	case c, ok := <-s.ch:
		return c, ok
	case <-t.C:
		return nil, false
	}
}

// incompleteSeq reports whether b ends inside an escape sequence: a lone ESC, ESC
// O without its final byte (SS3), or ESC [ without its final byte (CSI).
func incompleteSeq(b []byte) bool {
	i := len(b) - 1
	for i >= 0 && b[i] != 0x1b {
		i--
	}
	if i < 0 || len(b)-i > 32 {
		return false
	}
	tail := b[i:]
	switch {
	case len(tail) == 1:
		return true
	case tail[1] == 'O':
		return len(tail) < 3
	case tail[1] == '[':
		for _, c := range tail[2:] {
			if c >= 0x40 && c <= 0x7e {
				return false
			}
		}
		return true
	}
	return false
}
