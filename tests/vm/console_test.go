package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quantix/quantix"
)

func TestCheckLine(t *testing.T) {
	for _, tc := range []struct {
		line    string
		want    error
		service string
	}{
		{"[    3.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000300", ErrKernelPanic, ""},
		{"Kernel panic - not syncing: VFS: Unable to mount root fs", ErrKernelPanic, ""},
		{`QUANTIX: fatal service=network err="network.toml: gateway outside subnet"`, ErrFatalMarker, "network"},
		{"[   12.0] init: QUANTIX: fatal service=vdc err=boom", ErrFatalMarker, "vdc"},
		{"QUANTIX: ready service=network addr=10.0.0.5/24", nil, ""},
		{"QUANTIX: warning service=init msg=\"nothing will persist\"", nil, ""},
		{"the word panic alone is fine", nil, ""},
		{"QUANTIX: fatalistic service=x", nil, ""},
		{"", nil, ""},
	} {
		marker, reason := checkLine(tc.line)
		if reason != tc.want {
			t.Errorf("checkLine(%q) = %v, want %v", tc.line, reason, tc.want)
		}
		if tc.service != "" && (marker == nil || marker.Marker.Get("service") != tc.service) {
			t.Errorf("checkLine(%q) marker = %v, want service %s", tc.line, marker, tc.service)
		}
	}
}

func TestMatchers(t *testing.T) {
	line := `QUANTIX: ready service=network iface=eth0 addr=10.77.0.100/24 source=dhcp`
	for _, tc := range []struct {
		m    Matcher
		want bool
	}{
		{MatchMarker(quantix.MarkerReady), true},
		{MatchMarker(quantix.MarkerReady, "service", "network"), true},
		{MatchMarker(quantix.MarkerReady, "service", "network", "source", "dhcp"), true},
		{MatchMarker(quantix.MarkerReady, "addr", ""), true},
		{MatchMarker(quantix.MarkerReady, "node_id", ""), false},
		{MatchMarker(quantix.MarkerReady, "service", "agent"), false},
		{MatchMarker(quantix.MarkerBoot), false},
		{Contains("iface=eth0"), true},
		{Contains("eth1"), false},
		{MatchRegexp(`addr=10\.77\.0\.\d+/24`), true},
		{MatchRegexp(`^ready`), false},
	} {
		if got := tc.m.Match(line); got != tc.want {
			t.Errorf("%s.Match(%q) = %v, want %v", tc.m, line, got, tc.want)
		}
	}
}

// fakeConsole is a console without QEMU: the test writes it and closes exited
// for a QEMU exit.
func fakeConsole() (c *Console, exited chan struct{}) {
	c = newConsole("fake", nil)
	exited = make(chan struct{})
	c.attach(exited, func() string { return "exit status 0" })
	return c, exited
}

func TestConsoleLines(t *testing.T) {
	m, _ := fakeConsole()
	for _, chunk := range []string{"SeaBIOS\r\n", "partial ", "line\r\n\x1b[2Jnext", "\n", "no newline at exit"} {
		m.write([]byte(chunk))
	}
	m.flush()
	want := []string{"SeaBIOS", "partial line", "\x1b[2Jnext", "no newline at exit"}
	if diff := cmp.Diff(want, m.Lines()); diff != "" {
		t.Errorf("console lines (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[2:], m.Tail(2)); diff != "" {
		t.Errorf("Tail(2) (-want +got):\n%s", diff)
	}
}

func TestAwait(t *testing.T) {
	type result struct {
		line   string
		reason error
	}
	for _, tc := range []struct {
		name  string
		lines []string
		match Matcher
		exit  bool
		want  result
	}{
		{name: "match", lines: []string{"a", "QUANTIX: boot image=x version=1", "b"},
			match: MatchMarker("boot"), want: result{line: "QUANTIX: boot image=x version=1"}},
		{name: "panic ends the wait at once", lines: []string{"a", "Kernel panic - not syncing: Attempted to kill init!", "QUANTIX: boot-complete seconds=1"},
			match: MatchMarker("boot-complete"), want: result{reason: ErrKernelPanic, line: "Kernel panic - not syncing: Attempted to kill init!"}},
		{name: "fatal marker ends the wait at once", lines: []string{`QUANTIX: fatal service=network err="bad config"`},
			match: MatchMarker("boot-complete"), want: result{reason: ErrFatalMarker, line: `QUANTIX: fatal service=network err="bad config"`}},
		{name: "a fatal marker can be awaited", lines: []string{`QUANTIX: fatal service=network err=x`},
			match: MatchMarker("fatal", "service", "network"), want: result{line: `QUANTIX: fatal service=network err=x`}},
		{name: "exit", lines: []string{"a"}, exit: true,
			match: Contains("never"), want: result{reason: ErrExited}},
		{name: "lines before an exit still match", lines: []string{"last words"}, exit: true,
			match: Contains("last"), want: result{line: "last words"}},
		{name: "timeout", lines: []string{"a"},
			match: Contains("never"), want: result{reason: ErrTimeout}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, exited := fakeConsole()
			go func() {
				for _, l := range tc.lines {
					m.write([]byte(l + "\n"))
				}
				if tc.exit {
					m.flush()
					close(exited)
				}
			}()
			line, err := m.Await(tc.match, 300*time.Millisecond)
			var got result
			if err != nil {
				var ce *ConsoleError
				if !errors.As(err, &ce) {
					t.Fatalf("Await error %v is not a *ConsoleError", err)
				}
				got = result{reason: ce.Reason, line: ce.Line}
				if !errors.Is(err, ce.Reason) {
					t.Errorf("errors.Is(%v, %v) = false", err, ce.Reason)
				}
			} else {
				got.line = line
			}
			if got.line != tc.want.line || got.reason != tc.want.reason {
				t.Errorf("Await(%s) = %q, %v; want %q, %v", tc.match, got.line, got.reason, tc.want.line, tc.want.reason)
			}
		})
	}
}

func TestAwaitFatalMarkerError(t *testing.T) {
	m, _ := fakeConsole()
	m.write([]byte(quantix.FatalMarker("vdc", errors.New("database unreachable")) + "\n"))
	_, err := m.AwaitMarker(quantix.MarkerBootComplete, time.Second)
	var me *quantix.MarkerError
	if !errors.As(err, &me) || me.Marker.Get("service") != "vdc" || me.Marker.Get("err") != "database unreachable" {
		t.Fatalf("AwaitMarker error = %v, want the vdc fatal marker", err)
	}
	if !strings.Contains(err.Error(), "database unreachable") {
		t.Errorf("error %q does not show the fatal line", err)
	}
}

func TestAwaitAll(t *testing.T) {
	m, _ := fakeConsole()
	for _, l := range []string{"QUANTIX: ready service=b", "noise", "QUANTIX: ready service=a", "QUANTIX: boot-complete seconds=2"} {
		m.write([]byte(l + "\n"))
	}
	got, err := m.AwaitAll(time.Second, MatchMarker("ready", "service", "a"), MatchMarker("ready", "service", "b"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"QUANTIX: ready service=a", "QUANTIX: ready service=b"}, got); diff != "" {
		t.Errorf("AwaitAll (-want +got):\n%s", diff)
	}
	// Consumed up to the last match: the next wait sees what follows.
	if _, err := m.Await(MatchMarker("ready"), 100*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Errorf("Await after AwaitAll = %v, want a timeout (the ready lines were consumed)", err)
	}
}

func TestSlots(t *testing.T) {
	dir := t.TempDir()
	old := slotPattern
	slotPattern = filepath.Join(dir, "slot-%d.lock")
	t.Cleanup(func() { slotPattern = old })
	t.Setenv("QUANTIX_VM_SLOTS", "2")

	two, err := acquireSlots(2, time.Now().Add(time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acquireSlots(1, time.Now().Add(300*time.Millisecond), nil); err == nil {
		t.Fatal("got a third slot while two of two are held")
	}
	two[0].release()
	one, err := acquireSlots(1, time.Now().Add(time.Second), nil)
	if err != nil {
		t.Fatalf("a slot was freed, still: %v", err)
	}
	// All or nothing: with one slot free, asking for two must not take it.
	if _, err := acquireSlots(2, time.Now().Add(300*time.Millisecond), nil); err == nil {
		t.Fatal("got two slots while one is free")
	}
	releaseAll(append(one, two[1]))
	if _, err := acquireSlots(3, time.Time{}, nil); err == nil || !strings.Contains(err.Error(), "allows 2") {
		t.Errorf("asking for 3 of 2 slots: %v, want an error saying the machine allows 2", err)
	}
	t.Setenv("QUANTIX_VM_SLOTS", "zero")
	if _, err := Slots(); err == nil {
		t.Errorf("QUANTIX_VM_SLOTS=zero: no error")
	}
	if _, err := os.Stat(fmt.Sprintf(slotPattern, 0)); err != nil {
		t.Errorf("slot lock file: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"qemu", "-append", "console=ttyS0 panic=-1", "it's", "", "-m", "1024"})
	want := `qemu -append 'console=ttyS0 panic=-1' 'it'\''s' '' -m 1024`
	if got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}

func TestModuleClosure(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads the Debian kernel package once")
	}
	k := TestKernel(t)
	mods, err := k.ModuleClosure("virtio_net", "virtio-rng")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range mods {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".ko"))
	}
	want := []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net", "virtio-rng"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("ModuleClosure (-want +got):\n%s", diff)
	}
	if _, err := k.ModuleClosure("no_such_module"); err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("ModuleClosure(no_such_module) = %v, want an error naming it", err)
	}
}
