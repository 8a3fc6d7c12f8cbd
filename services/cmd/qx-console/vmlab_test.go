package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix/services/console/vt"
	"github.com/quantix/quantix/tests/vm"
)

// This file holds the VM test's lab pieces: an operator's serial terminal on the
// VM's second serial port, and the in-process vDC served onto the lab segment.

// serialTerm is a VT100 on the VM's second serial port (a QEMU chardev unix
// socket). Everything the guest writes is also kept raw as an artifact.
type serialTerm struct {
	conn net.Conn
	scr  *vt.Screen
	m    *vm.Machine

	mu      sync.Mutex
	changed chan struct{} // closed and replaced after every write to scr
	readErr error
}

// Write feeds the screen and wakes whoever waits for a change.
func (s *serialTerm) Write(p []byte) (int, error) {
	n, err := s.scr.Write(p)
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return n, err
}

func (s *serialTerm) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// dialSerial connects to the chardev socket QEMU listens on and copies what the
// guest sends to a screen and to raw, until the test ends.
func dialSerial(t *testing.T, m *vm.Machine, path, raw string) *serialTerm {
	t.Helper()
	log, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(vm.ScaleTimeout(30 * time.Second))
	var c net.Conn
	for {
		if c, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			log.Close()
			t.Fatalf("serial socket %s: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s := &serialTerm{conn: c, scr: vt.New(24, 80), m: m, changed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := io.Copy(io.MultiWriter(log, s), c)
		s.mu.Lock()
		s.readErr = err
		s.mu.Unlock()
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
		log.Close()
		if t.Failed() {
			t.Logf("serial console (ttyS1) screen at the end (raw bytes in %s):\n%s", raw, framed(s.scr.Text()))
		}
	})
	return s
}

// send types keys, one write each, as a terminal sends them.
func (s *serialTerm) send(t *testing.T, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, err := s.conn.Write([]byte(k)); err != nil {
			t.Fatalf("serial write %q: %v", k, err)
		}
		// A lone Esc must arrive on its own to be read as the Esc key, and keys
		// typed one by one over a slow line arrive one by one.
		pause := 5 * time.Millisecond
		if k == keyEsc {
			pause = 300 * time.Millisecond
		}
		time.Sleep(pause)
	}
}

// missing returns the first of want the screen does not show, or "".
func missing(text string, want []string) string {
	for _, w := range want {
		if !strings.Contains(text, w) {
			return w
		}
	}
	return ""
}

// waitFor waits up to timeout (scaled) until the screen shows every one of want,
// and returns the screen text. It fails t with the screen and the last lines of the
// main console otherwise.
func (s *serialTerm) waitFor(t *testing.T, timeout time.Duration, want ...string) string {
	t.Helper()
	text, err := s.await(vm.ScaleTimeout(timeout), want...)
	if err != nil {
		t.Fatalf("serial console (ttyS1): %v:\n%s\nlast lines of the main console (ttyS0):\n%s",
			err, framed(text), strings.Join(s.m.Tail(30), "\n"))
	}
	return text
}

func (s *serialTerm) await(timeout time.Duration, want ...string) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		changed := s.wait()
		text := s.scr.Text()
		miss := missing(text, want)
		if miss == "" {
			return text, nil
		}
		select {
		case <-changed:
		case <-timer.C:
			s.mu.Lock()
			rerr := s.readErr
			s.mu.Unlock()
			msg := fmt.Sprintf("the screen does not show %q after %v", miss, timeout)
			if rerr != nil {
				msg += fmt.Sprintf(" (serial socket: %v)", rerr)
			}
			return text, errors.New(msg)
		}
	}
}

// redraw presses Ctrl-L every few seconds until the screen shows want, as an
// operator who plugs in a serial cable while the console runs does: what was drawn
// before is lost, and before the console runs a key press goes nowhere.
func (s *serialTerm) redraw(t *testing.T, timeout time.Duration, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(vm.ScaleTimeout(timeout))
	for {
		s.send(t, "\x0c")
		text, err := s.await(3*time.Second, want...)
		if err == nil {
			return text
		}
		if time.Now().After(deadline) {
			return s.waitFor(t, 0, want...)
		}
	}
}

// timedKey sends key and returns how long it took until the screen showed want.
func (s *serialTerm) timedKey(t *testing.T, key, want string, timeout time.Duration) time.Duration {
	t.Helper()
	changed := s.wait()
	t0 := time.Now()
	if _, err := s.conn.Write([]byte(key)); err != nil {
		t.Fatalf("serial write %q: %v", key, err)
	}
	timer := time.NewTimer(vm.ScaleTimeout(timeout))
	defer timer.Stop()
	for {
		if strings.Contains(s.scr.Text(), want) {
			return time.Since(t0)
		}
		select {
		case <-changed:
			changed = s.wait()
		case <-timer.C:
			s.waitFor(t, 0, want)
		}
	}
}

// percentile returns the p-th percentile (nearest rank) of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (p*len(sorted)+99)/100 - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// latencySummary formats p50, p95 and max of ds.
func latencySummary(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("p50 %s, p95 %s, max %s (%d presses)",
		percentile(s, 50).Round(100*time.Microsecond), percentile(s, 95).Round(100*time.Microsecond),
		s[len(s)-1].Round(100*time.Microsecond), len(s))
}

// serveOnWorkstation makes the in-process vDC at target (http://127.0.0.1:port)
// answer at the workstation's address on the lab segment (vm.Workstation.Forward),
// so the guest talks HTTP to the real vDC over the hub. It stops when t ends.
func serveOnWorkstation(t *testing.T, ws *vm.Workstation, port uint16, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("vDC URL %q: %v", target, err)
	}
	ws.Forward(t, port, u.Host)
	return fmt.Sprintf("%s://%s:%d", u.Scheme, ws.Addr.Addr(), port)
}

// shortDir is a folder for unix sockets (paths are limited to 107 bytes, test
// folders can be longer), removed when t ends.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qxcon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Clean(d)
}
