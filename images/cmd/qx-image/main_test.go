package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix/images/build"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"16M", 16 << 20, true}, {"512K", 512 << 10, true}, {"1G", 1 << 30, true}, {"4096", 4096, true},
		{"", 0, false}, {"-1M", 0, false}, {"16MB", 0, false}, {"x", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestConfigDiskCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "net.toml")
	os.WriteFile(src, []byte("mode = \"dhcp\"\n"), 0o644)
	out := filepath.Join(dir, "cfg.img")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"config-disk", "--out", out, "--label", "QUANTIX-INSTALL", "--size", "12M", "network/network.toml=" + src}, &stdout, &stderr); err != nil {
		t.Fatalf("config-disk: %v (%s)", err, stderr.String())
	}
	label, files, err := build.ReadConfigDisk(out)
	if err != nil || label != "QUANTIX-INSTALL" || string(files["network/network.toml"]) != "mode = \"dhcp\"\n" {
		t.Errorf("read back: %q %q %v", label, files, err)
	}
	for _, args := range [][]string{
		{"config-disk", "hostname=x"},                            // no --out
		{"config-disk", "--out", out, "hostname"},                // not DEST=SRC
		{"config-disk", "--out", out, "hostname=/nonexistent/x"}, // missing source
		{"config-disk", "--out", out, "--size", "lots"},
		{"build"},
		{"frobnicate"},
	} {
		if err := run(context.Background(), args, &stdout, &stderr); err == nil {
			t.Errorf("run(%q) = nil error", strings.Join(args, " "))
		}
	}
}
