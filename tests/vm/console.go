package vm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

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

// Console is a machine's serial console, line by line across the machine's
// restarts, and the waits for its lines. The verbs: Await* returns an error,
// Expect* and Wait* fail the test (with the console tail). A wait consumes the
// console up to the line it returns, so waits see lines in console order; it ends
// at once, with a *ConsoleError, when a line shows a kernel panic or a
// `QUANTIX: fatal` marker (unless the wait accepts that line) or when QEMU exits.
type Console struct {
	name string
	log  *os.File // the raw serial log
	// diag returns more to print with the tail on a failure (QEMU's stderr).
	diag func() string

	mu      sync.Mutex
	lines   []string
	partial []byte
	cursor  int           // lines consumed by waits
	changed chan struct{} // closed and replaced on every new line and on exit
	exited  <-chan struct{}
	status  func() string // the exit status once exited is closed
	printed bool          // the tail was printed on a failure
}

func newConsole(name string, log *os.File) *Console {
	return &Console{name: name, log: log, changed: make(chan struct{}), exited: make(chan struct{})}
}

// attach follows a new QEMU process: waits end with ErrExited once exited is
// closed, with status() in the error.
func (c *Console) attach(exited <-chan struct{}, status func() string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.exited, c.status = exited, status
}

// input is where QEMU's stdout goes: the raw serial bytes.
func (c *Console) input() io.Writer { return consoleInput{c} }

type consoleInput struct{ c *Console }

func (w consoleInput) Write(p []byte) (int, error) { return w.c.write(p) }

// write takes raw serial bytes: they go to the log as they are and become lines.
func (c *Console) write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.log != nil {
		c.log.Write(p)
	}
	for _, b := range p {
		if b == '\n' {
			c.lines = append(c.lines, cleanLine(c.partial))
			c.partial = c.partial[:0]
			continue
		}
		c.partial = append(c.partial, b)
	}
	// New lines, or a prompt growing on the line not yet ended (ExpectPrompt).
	c.wakeLocked()
	return len(p), nil
}

// ExpectPrompt waits until the line the guest has not ended yet (a prompt
// waiting for input, as "Hostname: ") contains prompt; the lines before it are
// consumed. It fails t at the timeout or when QEMU exits.
func (c *Console) ExpectPrompt(t testing.TB, prompt string, timeout time.Duration) {
	t.Helper()
	timer := time.NewTimer(ScaleTimeout(timeout))
	defer timer.Stop()
	for {
		c.mu.Lock()
		if strings.Contains(cleanLine(c.partial), prompt) {
			c.cursor = len(c.lines)
			c.mu.Unlock()
			return
		}
		changed, exited := c.changed, c.exited
		c.mu.Unlock()
		select {
		case <-changed:
		case <-exited:
			c.fail(t, &ConsoleError{Machine: c.name, Want: fmt.Sprintf("prompt %q", prompt), Reason: ErrExited, Detail: c.status()})
		case <-timer.C:
			c.fail(t, &ConsoleError{Machine: c.name, Want: fmt.Sprintf("prompt %q", prompt), Reason: ErrTimeout, Detail: fmt.Sprintf("after %v", timeout)})
		}
	}
}

// flush ends a last line without newline (at QEMU exit) and wakes waiters.
func (c *Console) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		c.lines = append(c.lines, cleanLine(c.partial))
		c.partial = c.partial[:0]
	}
	c.wakeLocked()
}

func (c *Console) wakeLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// cleanLine drops carriage returns (serial consoles end lines with \r\n and
// firmware redraws with bare \r).
func cleanLine(b []byte) string {
	return strings.ReplaceAll(string(b), "\r", "")
}

// Lines returns every console line so far.
func (c *Console) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// Tail returns the last n console lines.
func (c *Console) Tail(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > len(c.lines) {
		n = len(c.lines)
	}
	return append([]string(nil), c.lines[len(c.lines)-n:]...)
}

// Find returns every console line so far that matches, consumed or not.
func (c *Console) Find(match Matcher) []string {
	var out []string
	for _, l := range c.Lines() {
		if match.Match(l) {
			out = append(out, l)
		}
	}
	return out
}

// Await waits up to timeout (scaled by TimeoutScale) for a console line, after the
// lines earlier waits consumed, that matches; it returns the line and consumes the
// console up to it (AwaitAll takes any order). It returns a *ConsoleError at once
// on a kernel panic, a `QUANTIX: fatal` marker or a QEMU exit (see Console).
func (c *Console) Await(match Matcher, timeout time.Duration) (string, error) {
	lines, err := c.AwaitAll(timeout, match)
	if err != nil {
		return "", err
	}
	return lines[0], nil
}

// AwaitAll waits for one line per matcher, in any order (markers of services that
// start in parallel), and returns them in the matchers' order; the console is
// consumed up to the last of them. Failures are those of Await.
func (c *Console) AwaitAll(timeout time.Duration, matchers ...Matcher) ([]string, error) {
	timeout = ScaleTimeout(timeout)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	found := make([]string, len(matchers))
	done := make([]bool, len(matchers))
	left := len(matchers)
	want := func() string {
		var w []string
		for i, mt := range matchers {
			if !done[i] {
				w = append(w, mt.String())
			}
		}
		return strings.Join(w, " and ")
	}
	for {
		c.mu.Lock()
		for c.cursor < len(c.lines) && left > 0 {
			line := c.lines[c.cursor]
			c.cursor++
			matched := false
			for i, mt := range matchers {
				if !done[i] && mt.Match(line) {
					found[i], done[i], matched = line, true, true
					left--
					break
				}
			}
			if matched {
				continue
			}
			if marker, reason := checkLine(line); reason != nil {
				c.mu.Unlock()
				return nil, &ConsoleError{Machine: c.name, Want: want(), Reason: reason, Line: line, Marker: marker}
			}
		}
		if left == 0 {
			c.mu.Unlock()
			return found, nil
		}
		changed, exited, status := c.changed, c.exited, c.status
		c.mu.Unlock()

		select {
		case <-exited:
			// The console was flushed before exited closed: one more pass sees
			// everything, then report the exit.
			c.mu.Lock()
			drained := c.cursor >= len(c.lines)
			c.mu.Unlock()
			if drained {
				return nil, &ConsoleError{Machine: c.name, Want: want(), Reason: ErrExited, Detail: status()}
			}
			continue
		default:
		}
		select {
		case <-changed:
		case <-exited:
		case <-timer.C:
			return nil, &ConsoleError{Machine: c.name, Want: want(), Reason: ErrTimeout,
				Detail: fmt.Sprintf("after %v", timeout)}
		}
	}
}

// AwaitMarker is WaitMarker returning an error instead of failing a test.
func (c *Console) AwaitMarker(kind string, timeout time.Duration, kv ...string) (quantix.Marker, error) {
	line, err := c.Await(MatchMarker(kind, kv...), timeout)
	if err != nil {
		return quantix.Marker{}, err
	}
	mk, _ := quantix.ParseMarker(line)
	return mk, nil
}

// ExpectAll is AwaitAll failing t with the last console lines on error.
func (c *Console) ExpectAll(t testing.TB, timeout time.Duration, matchers ...Matcher) []string {
	t.Helper()
	lines, err := c.AwaitAll(timeout, matchers...)
	if err != nil {
		c.fail(t, err)
	}
	return lines
}

// Expect waits for a console line containing substr (see Await) and returns it; it
// fails t with the last console lines otherwise.
func (c *Console) Expect(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	line, err := c.Await(Contains(substr), timeout)
	if err != nil {
		c.fail(t, err)
	}
	return line
}

// ExpectRegexp waits for a console line matching expr and returns its submatches
// (index 0 is the whole match); it fails t otherwise.
func (c *Console) ExpectRegexp(t testing.TB, expr string, timeout time.Duration) []string {
	t.Helper()
	mt := MatchRegexp(expr)
	line, err := c.Await(mt, timeout)
	if err != nil {
		c.fail(t, err)
	}
	return mt.re.FindStringSubmatch(line)
}

// WaitMarker waits for a `QUANTIX: <kind>` marker whose fields hold the key/value
// pairs kv (an empty value: the field is present) and returns it parsed; it fails t
// otherwise. Example: m.WaitMarker(t, quantix.MarkerReady, time.Minute, "service", "network").
func (c *Console) WaitMarker(t testing.TB, kind string, timeout time.Duration, kv ...string) quantix.Marker {
	t.Helper()
	mk, err := c.AwaitMarker(kind, timeout, kv...)
	if err != nil {
		c.fail(t, err)
	}
	return mk
}

// fail prints the console tail and fails t.
func (c *Console) fail(t testing.TB, err error) {
	t.Helper()
	c.logTail(t)
	t.Fatal(err)
}

// logTail prints the last 50 console lines, where the artifacts are, and diag.
func (c *Console) logTail(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	c.printed = true
	c.mu.Unlock()
	lines := c.Tail(50)
	logPath := "(none)"
	if c.log != nil {
		logPath = c.log.Name()
	}
	t.Logf("VM %s: last %d console lines (full log %s, command line in %s):\n%s",
		c.name, len(lines), logPath, strings.TrimSuffix(logPath, ".serial.log")+".cmdline", strings.Join(lines, "\n"))
	if c.diag != nil {
		if s := c.diag(); s != "" {
			t.Logf("VM %s: QEMU stderr:\n%s", c.name, s)
		}
	}
}

// tailPrinted reports whether a failure printed the tail already.
func (c *Console) tailPrinted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.printed
}
