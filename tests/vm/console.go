package vm

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/quantix/quantix"
)

// Reasons a wait on the console ends without a match; test with errors.Is.
var (
	ErrTimeout     = errors.New("timed out")
	ErrKernelPanic = errors.New("kernel panic")
	ErrFatalMarker = errors.New("fatal marker")
	ErrExited      = errors.New("QEMU exited")
)

// KernelPanicText starts the kernel's panic line.
const KernelPanicText = "Kernel panic - not syncing"

// ConsoleError says why a wait for a console line failed.
type ConsoleError struct {
	Machine string
	Want    string // what was awaited
	Reason  error  // ErrTimeout, ErrKernelPanic, ErrFatalMarker or ErrExited
	Line    string // the console line that ended the wait (panic or fatal)
	Detail  string // e.g. the QEMU exit status and its last stderr lines
	Marker  *quantix.MarkerError
}

func (e *ConsoleError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: waiting for %s: %v", e.Machine, e.Want, e.Reason)
	if e.Line != "" {
		fmt.Fprintf(&b, ": %q", e.Line)
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

// Unwrap lets errors.Is find the reason and errors.As the fatal marker.
func (e *ConsoleError) Unwrap() []error {
	errs := []error{e.Reason}
	if e.Marker != nil {
		errs = append(errs, e.Marker)
	}
	return errs
}

// checkLine reports whether a console line ends every wait at once: a kernel panic
// or a `QUANTIX: fatal` marker. It returns nil for every other line.
func checkLine(line string) (marker *quantix.MarkerError, reason error) {
	if strings.Contains(line, KernelPanicText) {
		return nil, ErrKernelPanic
	}
	if m, ok := quantix.ParseMarker(line); ok && m.Kind == quantix.MarkerFatal {
		return &quantix.MarkerError{Marker: m}, ErrFatalMarker
	}
	return nil, nil
}

// Matcher selects console lines for Machine.Await.
type Matcher struct {
	desc  string
	match func(line string) bool
	re    *regexp.Regexp
}

// String describes what the matcher waits for.
func (m Matcher) String() string { return m.desc }

// Match reports whether line matches.
func (m Matcher) Match(line string) bool { return m.match(line) }

// Contains matches lines holding s.
func Contains(s string) Matcher {
	return Matcher{desc: fmt.Sprintf("a line containing %q", s), match: func(l string) bool { return strings.Contains(l, s) }}
}

// MatchRegexp matches lines matching the regular expression expr (it panics on a bad
// expression: that is a bug in the test).
func MatchRegexp(expr string) Matcher {
	re := regexp.MustCompile(expr)
	return Matcher{desc: fmt.Sprintf("a line matching /%s/", expr), match: re.MatchString, re: re}
}

// MatchMarker matches `QUANTIX: <kind>` markers whose fields hold the given key/value
// pairs; an empty value only requires the field to be present.
func MatchMarker(kind string, kv ...string) Matcher {
	if len(kv)%2 != 0 {
		panic("vm.MatchMarker: odd number of key/value arguments")
	}
	desc := quantix.FormatMarker(kind, kv...)
	return Matcher{desc: fmt.Sprintf("marker %q", desc), match: func(l string) bool {
		m, ok := quantix.ParseMarker(l)
		if !ok || m.Kind != kind {
			return false
		}
		for i := 0; i < len(kv); i += 2 {
			v, ok := m.Fields[kv[i]]
			if !ok || (kv[i+1] != "" && v != kv[i+1]) {
				return false
			}
		}
		return true
	}}
}

// console collects a machine's serial output as lines and wakes waiters.
type console struct {
	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{} // closed and replaced on every new line and on exit
	log     *os.File
}

func newConsole(log *os.File) *console {
	return &console{changed: make(chan struct{}), log: log}
}

// Write takes raw serial bytes: they go to the log as they are and become lines.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.log != nil {
		c.log.Write(p)
	}
	added := false
	for _, b := range p {
		if b == '\n' {
			c.lines = append(c.lines, cleanLine(c.partial))
			c.partial = c.partial[:0]
			added = true
			continue
		}
		c.partial = append(c.partial, b)
	}
	if added {
		c.wakeLocked()
	}
	return len(p), nil
}

// flush ends a last line without newline (at QEMU exit) and wakes waiters.
func (c *console) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		c.lines = append(c.lines, cleanLine(c.partial))
		c.partial = c.partial[:0]
	}
	c.wakeLocked()
}

func (c *console) wakeLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// cleanLine drops carriage returns (serial consoles end lines with \r\n and
// firmware redraws with bare \r).
func cleanLine(b []byte) string {
	return strings.ReplaceAll(string(b), "\r", "")
}

func (c *console) tail(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > len(c.lines) {
		n = len(c.lines)
	}
	return append([]string(nil), c.lines[len(c.lines)-n:]...)
}
