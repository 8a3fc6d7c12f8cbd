package vt

import (
	"strings"
	"testing"
)

func TestScreen(t *testing.T) {
	tests := []struct {
		name, in, want string
		unknown        []string
	}{
		{"text and newline", "ab\r\ncd", "ab\ncd\n\n", nil},
		{"cursor position", "\x1b[2;3Hx\x1b[Hy", "y\n  x\n\n", nil},
		{"erase line", "abcdef\x1b[3D\x1b[K", "abc\n\n\n", nil},
		{"erase screen", "abc\r\ndef\x1b[2J", "\n\n\n", nil},
		{"erase below", "abc\r\ndef\r\nghi\x1b[2;2H\x1b[J", "abc\nd\n\n", nil},
		{"moves", "\x1b[2Bx\x1b[A\x1b[2Cy\x1b[1Dz", "\n   z\nx\n", nil},
		{"wrap at the last column", "abcdefghijk", "abcdefghij\nk\n\n", nil},
		{"scroll", "1\r\n2\r\n3\r\n4\r\n5", "2\n3\n4\n5", nil},
		{"modes ignored", "\x1b[?1049h\x1b[?25l\x1b[0;7mx\x1b[m", "x\n\n\n", nil},
		{"save restore", "ab\x1b7\x1b[3;1Hz\x1b8c", "abc\n\nz\n", nil},
		{"not vt100", "\x1b]0;title\x07\x1b[5Sx\x1b[?6n", "x\n\n\n", []string{"OSC 0;title", "CSI 5S", "CSI ?6n"}},
		{"utf-8", "\xc3\xa9", "??\n\n\n", nil},
	}
	for _, tt := range tests {
		s := New(4, 10)
		s.Write([]byte(tt.in))
		if got := s.Text(); got != tt.want {
			t.Errorf("%s: Text() = %q, want %q", tt.name, got, tt.want)
		}
		if got := s.Unknown(); strings.Join(got, "|") != strings.Join(tt.unknown, "|") {
			t.Errorf("%s: Unknown() = %q, want %q", tt.name, got, tt.unknown)
		}
	}
	s := New(2, 4)
	s.Write([]byte("\xe4\xb8\x96"))
	if s.NonASCII() != 3 {
		t.Errorf("NonASCII = %d, want 3", s.NonASCII())
	}
}
