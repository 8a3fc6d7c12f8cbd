package console

import (
	"io"
	"slices"
	"testing"
	"time"

	"github.com/quantix/quantix/services/initd"
)

func TestIncompleteSeq(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"abc", false},
		{"\x1b", true},
		{"ab\x1b", true},
		{"\x1b[", true},
		{"\x1b[1;5", true},
		{"\x1b[B", false},
		{"x\x1b[Bab", false},
		{"\x1bO", true},
		{"\x1bOA", false},
		{"\x1bx", false}, // alt+x
	}
	for _, tt := range tests {
		if got := incompleteSeq([]byte(tt.in)); got != tt.want {
			t.Errorf("incompleteSeq(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestSeqReaderJoinsSplitSequences: an arrow key cut in two reads comes out whole;
// a lone Esc comes out on its own after the wait.
func TestSeqReaderJoinsSplitSequences(t *testing.T) {
	pr, pw := io.Pipe()
	r := newSeqReader(pr)
	go func() {
		pw.Write([]byte("10.0.0.1\x1b"))
		time.Sleep(10 * time.Millisecond)
		pw.Write([]byte("[B"))
		time.Sleep(10 * time.Millisecond)
		pw.Write([]byte("\x1b"))
		time.Sleep(3 * seqWait)
		pw.Write([]byte("x"))
		pw.Close()
	}()
	var reads []string
	buf := make([]byte, 64)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			reads = append(reads, string(buf[:n]))
		}
		if err != nil {
			break
		}
	}
	want := []string{"10.0.0.1\x1b[B", "\x1b", "x"}
	if len(reads) != len(want) {
		t.Fatalf("reads = %q, want %q", reads, want)
	}
	for i := range want {
		if reads[i] != want[i] {
			t.Fatalf("reads = %q, want %q", reads, want)
		}
	}
}

// TestBaudRatesMatchInit: init accepts exactly the serial speeds the console can
// set, so a console.toml init accepted never makes the console fail.
func TestBaudRatesMatchInit(t *testing.T) {
	var got []int
	for b := range baudRates {
		got = append(got, b)
	}
	slices.Sort(got)
	if !slices.Equal(got, initd.SerialBaudRates) {
		t.Errorf("console speeds %v, init accepts %v", got, initd.SerialBaudRates)
	}
}
