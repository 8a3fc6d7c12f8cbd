package main

import (
	"bytes"
	"context"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// ctlOffline runs qx-ctl where no vDC is needed (or none may be contacted: the URL
// is a closed port, so a usage error caught too late would show as exit 5).
func ctlOffline(t *testing.T, args ...string) result {
	t.Helper()
	t.Setenv(envURL, closedPort(t))
	t.Setenv(envToken, "offline-token")
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return result{code, out.String(), errb.String()}
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"nodes"}, "nodes: want list, show, delete or maintenance"},
		{[]string{"nodes", "frob"}, `nodes: unknown subcommand "frob"`},
		{[]string{"nodes", "list", "extra"}, `nodes list: unexpected argument "extra"`},
		{[]string{"nodes", "list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"nodes", "list", "--phase", "sideways"}, `"sideways" is not a phase`},
		{[]string{"nodes", "list", "--phase", "ready,,"}, `"" is not a phase`},
		{[]string{"nodes", "show"}, "nodes show: missing the node (id or hostname)"},
		{[]string{"nodes", "show", "a", "b"}, `nodes show: unexpected argument "b"`},
		{[]string{"nodes", "show", "a", "--events", "-1"}, "--events -1"},
		{[]string{"nodes", "delete"}, "nodes delete: missing the node"},
		{[]string{"nodes", "maintenance", "a", "sometimes"}, `"sometimes": want on or off`},
		{[]string{"vms"}, "vms: want 'vms list'"},
		{[]string{"vms", "list", "x"}, `vms list: unexpected argument "x"`},
		{[]string{"pools", "show"}, "pools: want 'pools list'"},
		{[]string{"tokens"}, "want 'tokens create'"},
		{[]string{"admin-token"}, "want 'admin-token rotate'"},
		{[]string{"admin-token", "rotate", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"tokens", "create", "--uses", "many"}, "invalid value \"many\" for flag -uses"},
		{[]string{"-o", "yaml", "nodes", "list"}, `-o "yaml": want table or json`},
		{[]string{"nodes", "list", "--output", "xml"}, `-o "xml": want table or json`},
		{[]string{"--timeout", "-1s", "nodes", "list"}, "--timeout -1s: want a positive duration"},
		{[]string{"--timeout", "soon", "nodes", "list"}, "invalid value \"soon\" for flag -timeout"},
		{[]string{"--url", "ftp://vdc", "nodes", "list"}, "want an http:// or https:// URL"},
		{[]string{"--url", "http://admin:hunter2@vdc", "nodes", "list"}, "must not hold credentials"},
		{[]string{"--token-file", "", "nodes", "list"}, "empty file name"},
		{[]string{"version", "now"}, `version: unexpected argument "now"`},
		{[]string{"controller"}, "controller: want show or upgrade"},
		{[]string{"controller", "upgrade"}, "controller upgrade: missing the release"},
		{[]string{"controller", "show", "extra"}, `controller show: unexpected argument "extra"`},
	}
	for _, tc := range cases {
		r := ctlOffline(t, tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("qx-ctl %q: %s\nwant exit 2 and stderr containing %q", tc.args, r, tc.want)
		}
		if strings.Contains(r.stderr, "hunter2") || strings.Contains(r.stderr, "offline-token") {
			t.Errorf("qx-ctl %q: stderr shows a secret: %q", tc.args, r.stderr)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"nodes", "list", "-h"}, {"tokens", "create", "--help"}} {
		r := ctlOffline(t, args...)
		if r.code != exitOK || !strings.Contains(r.stdout, "usage: qx-ctl") || r.stderr != "" {
			t.Errorf("qx-ctl %q: %s\nwant the usage on stdout, exit 0", args, r)
		}
	}
	r := ctlOffline(t, "help")
	// The documented exit statuses are the ones the code uses.
	for code, words := range map[int]string{exitOK: "success", exitFailure: "the vDC answered an error", exitUsage: "usage error",
		exitNotFound: "not found", exitAuth: "authentication", exitUnreachable: "the vDC is unreachable"} {
		if !strings.Contains(r.stdout, "  "+string(rune('0'+code))+"  "+words) {
			t.Errorf("help does not document exit %d as %q", code, words)
		}
	}
	if r := ctlOffline(t, "version"); r.code != 0 || r.stdout != "qx-ctl "+quantix.Version+"\n" {
		t.Errorf("version: %s", r)
	}
	if r := ctlOffline(t, "version", "-o", "json"); r.code != 0 || r.stdout != "{\n  \"version\": \""+quantix.Version+"\"\n}\n" {
		t.Errorf("version -o json: %s", r)
	}
}

func TestParseFlags(t *testing.T) {
	cases := []struct {
		args      []string
		stop      bool
		wantPos   []string
		wantOut   string
		wantPhase string
	}{
		{args: []string{"web1", "-o", "json"}, wantPos: []string{"web1"}, wantOut: "json"},
		{args: []string{"-o", "json", "web1", "--phase", "ready", "x"}, wantPos: []string{"web1", "x"}, wantOut: "json", wantPhase: "ready"},
		{args: []string{"--", "-o", "json"}, wantPos: []string{"-o", "json"}, wantOut: "table"},
		{args: []string{"a", "--", "-b"}, wantPos: []string{"a", "-b"}, wantOut: "table"},
		{args: []string{"-o", "json", "nodes", "-o", "table"}, stop: true, wantPos: []string{"nodes", "-o", "table"}, wantOut: "json"},
	}
	for _, tc := range cases {
		c := &cli{opts: options{output: "table"}}
		fs := c.flagSet("test")
		phase := fs.String("phase", "", "")
		pos, err := parseFlags(fs, tc.args, tc.stop)
		if err != nil || !slices.Equal(pos, tc.wantPos) || c.opts.output != tc.wantOut || *phase != tc.wantPhase {
			t.Errorf("parseFlags(%q, %v) = %q, %v, -o %s, --phase %q; want %q, -o %s, --phase %q",
				tc.args, tc.stop, pos, err, c.opts.output, *phase, tc.wantPos, tc.wantOut, tc.wantPhase)
		}
	}
	c := &cli{opts: options{url: "http://from-env", output: "table"}}
	fs := c.flagSet("test")
	if _, err := parseFlags(fs, []string{"-h"}, false); err != flag.ErrHelp {
		t.Errorf("parseFlags(-h) = %v, want flag.ErrHelp", err)
	}
	// A command's flag set starts from what was parsed before the command.
	c.opts.output = "json"
	fs = c.flagSet("cmd")
	if _, err := parseFlags(fs, []string{"x"}, false); err != nil || c.opts.output != "json" || c.opts.url != "http://from-env" {
		t.Errorf("a second flag set reset the options: %+v, %v", c.opts, err)
	}
}

func TestFormat(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	ages := []struct {
		t    time.Time
		want string
	}{
		{now, "0s ago"},
		{now.Add(2 * time.Second), "0s ago"}, // the server's clock a little ahead
		{now.Add(-12 * time.Second), "12s ago"},
		{now.Add(-59 * time.Second), "59s ago"},
		{now.Add(-5*time.Minute - 30*time.Second), "5m ago"},
		{now.Add(-3 * time.Hour), "3h ago"},
		{now.Add(-47 * time.Hour), "47h ago"},
		{now.Add(-72 * time.Hour), "3d ago"},
		{time.Time{}, "never"},
	}
	for _, tc := range ages {
		if got := ago(now, tc.t); got != tc.want {
			t.Errorf("ago(%s) = %q, want %q", tc.t, got, tc.want)
		}
	}
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{now.Add(24*time.Hour - 300*time.Millisecond), "in 24h"},
		{now.Add(90 * time.Second), "in 1m"},
		{now.Add(-3 * time.Minute), "expired 3m ago"},
	} {
		if got := until(now, tc.t); got != tc.want {
			t.Errorf("until(%s) = %q, want %q", tc.t, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "-"}, {"web", "web"}, {"a\tb\nc", "a?b?c"}, {"\x1b[2J", "?[2J"}, {"\u009b31m", "?31m"}, {"héllo ☃", "héllo ☃"},
	} {
		if got := cell(tc.in); got != tc.want {
			t.Errorf("cell(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	cpu := 7.6
	used := int64(3 << 29)
	for _, tc := range []struct {
		n          quantix.Node
		cpu, mem   string
		cpuDetails string
	}{
		{quantix.Node{}, "-", "-", "-"},
		{quantix.Node{CPU: &quantix.CPUInfo{Cores: 2}, MemoryBytes: 4 << 30}, "2", "4.0 GiB", "2 cores"},
		{quantix.Node{CPU: &quantix.CPUInfo{Model: "EPYC", Sockets: 2, Cores: 64, Threads: 128}, CPUPercent: &cpu, MemoryBytes: 256 << 30, MemoryUsedBytes: &used},
			"128 (8%)", "1.5/256.0 GiB", "EPYC, 2 sockets, 64 cores, 128 threads, 7.6% used"},
	} {
		if got := cpuCell(tc.n); got != tc.cpu {
			t.Errorf("cpuCell(%+v) = %q, want %q", tc.n, got, tc.cpu)
		}
		if got := memoryCell(tc.n); got != tc.mem {
			t.Errorf("memoryCell(%+v) = %q, want %q", tc.n, got, tc.mem)
		}
		if got := cpuDetail(tc.n); got != tc.cpuDetails {
			t.Errorf("cpuDetail(%+v) = %q, want %q", tc.n, got, tc.cpuDetails)
		}
	}
	if got := phaseWord(quantix.PhaseNotReady); got != "not ready" {
		t.Errorf("phaseWord(not_ready) = %q", got)
	}
	var b bytes.Buffer
	tb := newTable(&b, "A", "LONG HEADER", "C")
	tb.row("x", "", "zz")
	tb.row("longer", "y", "")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	want := "A       LONG HEADER  C\nx       -            zz\nlonger  y            -\n"
	if b.String() != want {
		t.Errorf("table = %q, want %q", b.String(), want)
	}
}
