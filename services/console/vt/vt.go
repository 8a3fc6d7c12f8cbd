// Package vt is a small VT100 screen for tests: it turns what a program writes to
// its terminal into the text a VT100 would show, and records every control
// sequence a VT100 does not know, so a test can prove that a program draws only
// with VT100 sequences (what the console needs to work on a plain serial terminal).
//
// It implements cursor movement (CUU, CUD, CUF, CUB, CUP, HVP, CR, LF, BS, HT, IND,
// RI, NEL, DECSC, DECRC), erasing (ED, EL), the scrolling region (DECSTBM), auto
// wrap, and ignores attributes (SGR) and mode changes (SM, RM). DEC private modes
// a VT100 lacks (?25 cursor visibility, ?1049 alternate screen, ?2004 bracketed
// paste) are ignored by a real VT100 too; they are recorded in Modes.
package vt

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Screen is a VT100 screen of fixed size. It is safe for concurrent use.
type Screen struct {
	mu         sync.Mutex
	rows, cols int
	cells      [][]byte
	r, c       int
	wrapNext   bool
	top, bot   int // scrolling region, inclusive
	savedR     int
	savedC     int
	state      int
	params     []byte
	// Unknown lists sequences a VT100 does not implement, in order.
	unknown []string
	modes   map[string]bool
	// NonASCII counts bytes outside printable ASCII that were not controls.
	nonASCII int
	bytes    int
}

const (
	sGround = iota
	sEsc
	sCSI
	sOSC
	sCharset
)

// New returns a blank screen.
func New(rows, cols int) *Screen {
	s := &Screen{rows: rows, cols: cols, bot: rows - 1, modes: map[string]bool{}}
	s.cells = make([][]byte, rows)
	for i := range s.cells {
		s.cells[i] = blank(cols)
	}
	return s
}

func blank(n int) []byte { return []byte(strings.Repeat(" ", n)) }

// Write interprets p.
func (s *Screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bytes += len(p)
	for _, b := range p {
		s.feed(b)
	}
	return len(p), nil
}

func (s *Screen) feed(b byte) {
	switch s.state {
	case sEsc:
		s.state = sGround
		switch b {
		case '[':
			s.state, s.params = sCSI, s.params[:0]
		case ']':
			s.state, s.params = sOSC, s.params[:0]
		case '(', ')':
			s.state = sCharset
		case '7':
			s.savedR, s.savedC = s.r, s.c
		case '8':
			s.r, s.c, s.wrapNext = s.savedR, s.savedC, false
		case 'D':
			s.lineFeed()
		case 'E':
			s.c = 0
			s.lineFeed()
		case 'M':
			s.reverseIndex()
		case '=', '>', 'c':
		default:
			s.unknown = append(s.unknown, "ESC "+string(b))
		}
		return
	case sCharset:
		s.state = sGround
		return
	case sOSC:
		if b == 0x07 || b == '\\' {
			s.unknown = append(s.unknown, "OSC "+string(s.params))
			s.state = sGround
			return
		}
		if b != 0x1b {
			s.params = append(s.params, b)
		}
		return
	case sCSI:
		if b >= 0x40 && b <= 0x7e {
			s.csi(b)
			s.state = sGround
			return
		}
		s.params = append(s.params, b)
		return
	}
	switch {
	case b == 0x1b:
		s.state = sEsc
	case b == '\r':
		s.c, s.wrapNext = 0, false
	case b == '\n' || b == 0x0b || b == 0x0c:
		s.lineFeed()
	case b == '\b':
		if s.c > 0 {
			s.c--
		}
		s.wrapNext = false
	case b == '\t':
		s.c = min((s.c/8+1)*8, s.cols-1)
	case b == 0x07 || b == 0x00:
	case b < 0x20 || b == 0x7f:
		s.unknown = append(s.unknown, fmt.Sprintf("control 0x%02x", b))
	case b >= 0x80:
		s.nonASCII++
		s.put('?')
	default:
		s.put(b)
	}
}

func (s *Screen) put(b byte) {
	if s.wrapNext {
		s.c = 0
		s.lineFeed()
		s.wrapNext = false
	}
	s.cells[s.r][s.c] = b
	if s.c == s.cols-1 {
		s.wrapNext = true
	} else {
		s.c++
	}
}

func (s *Screen) lineFeed() {
	s.wrapNext = false
	if s.r == s.bot {
		copy(s.cells[s.top:s.bot], s.cells[s.top+1:s.bot+1])
		s.cells[s.bot] = blank(s.cols)
		return
	}
	if s.r < s.rows-1 {
		s.r++
	}
}

func (s *Screen) reverseIndex() {
	s.wrapNext = false
	if s.r == s.top {
		copy(s.cells[s.top+1:s.bot+1], s.cells[s.top:s.bot])
		s.cells[s.top] = blank(s.cols)
		return
	}
	if s.r > 0 {
		s.r--
	}
}

func (s *Screen) csi(final byte) {
	raw := string(s.params)
	private := strings.HasPrefix(raw, "?")
	p := strings.TrimPrefix(raw, "?")
	var ns []int
	for _, f := range strings.Split(p, ";") {
		n, _ := strconv.Atoi(f)
		ns = append(ns, n)
	}
	arg := func(i, def int) int {
		if i < len(ns) && ns[i] > 0 {
			return ns[i]
		}
		return def
	}
	if private && final != 'h' && final != 'l' {
		s.unknown = append(s.unknown, "CSI "+raw+string(final))
		return
	}
	s.wrapNext = false
	switch final {
	case 'A':
		s.r = max(s.r-arg(0, 1), 0)
	case 'B':
		s.r = min(s.r+arg(0, 1), s.rows-1)
	case 'C':
		s.c = min(s.c+arg(0, 1), s.cols-1)
	case 'D':
		s.c = max(s.c-arg(0, 1), 0)
	case 'H', 'f':
		s.r, s.c = min(arg(0, 1), s.rows)-1, min(arg(1, 1), s.cols)-1
	case 'J':
		switch arg(0, 0) {
		case 0:
			s.clearLine(s.r, s.c, s.cols)
			for r := s.r + 1; r < s.rows; r++ {
				s.cells[r] = blank(s.cols)
			}
		case 1:
			s.clearLine(s.r, 0, s.c+1)
			for r := 0; r < s.r; r++ {
				s.cells[r] = blank(s.cols)
			}
		case 2:
			for r := range s.cells {
				s.cells[r] = blank(s.cols)
			}
		}
	case 'K':
		switch arg(0, 0) {
		case 0:
			s.clearLine(s.r, s.c, s.cols)
		case 1:
			s.clearLine(s.r, 0, s.c+1)
		case 2:
			s.clearLine(s.r, 0, s.cols)
		}
	case 'r':
		s.top, s.bot = arg(0, 1)-1, min(arg(1, s.rows), s.rows)-1
		if s.top >= s.bot {
			s.top, s.bot = 0, s.rows-1
		}
		s.r, s.c = 0, 0
	case 'm', 'q', 'g', 'n', 'c':
		// attributes, LEDs, tab clear, reports: nothing to draw
	case 'h', 'l':
		if private {
			for _, n := range ns {
				s.modes["?"+strconv.Itoa(n)] = final == 'h'
			}
		}
	default:
		s.unknown = append(s.unknown, "CSI "+raw+string(final))
	}
}

func (s *Screen) clearLine(r, from, to int) {
	for c := max(from, 0); c < min(to, s.cols); c++ {
		s.cells[r][c] = ' '
	}
}

// Text returns the screen as lines with trailing spaces removed.
func (s *Screen) Text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := make([]string, s.rows)
	for i, l := range s.cells {
		lines[i] = strings.TrimRight(string(l), " ")
	}
	return strings.Join(lines, "\n")
}

// Unknown returns the sequences a VT100 would not understand, seen so far.
func (s *Screen) Unknown() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.unknown...)
}

// Modes returns the DEC private modes set (true) or reset (false) so far.
func (s *Screen) Modes() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for k, v := range s.modes {
		out[k] = v
	}
	return out
}

// NonASCII counts the bytes beyond 7-bit ASCII the program wrote.
func (s *Screen) NonASCII() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nonASCII
}

// Bytes is how many bytes were written so far.
func (s *Screen) Bytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}
