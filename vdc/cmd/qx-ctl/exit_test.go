package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"net"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// silentServer accepts connections and never answers.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// tlsFront puts a TLS reverse proxy with its own self-signed certificate in front
// of the vDC, as the vDC's HTTPS UI listener is, and returns its URL and a PEM file
// of its certificate.
func tlsFront(t *testing.T, vdcURL string) (string, string) {
	t.Helper()
	u, err := url.Parse(vdcURL)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(u))
	t.Cleanup(front.Close)
	ca := filepath.Join(t.TempDir(), "vdc-cert.pem")
	writeFile(t, ca, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw})), 0o644)
	return front.URL, ca
}

// TestExitCodes checks every failure class through run: the code scripts see and
// the message people read.
func TestExitCodes(t *testing.T) {
	l := newLab(t)
	l.seed()
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeFile(t, good, l.v.AdminToken+"\n", 0o600)
	loose := filepath.Join(dir, "loose")
	writeFile(t, loose, l.v.AdminToken, 0o644)
	empty := filepath.Join(dir, "empty")
	writeFile(t, empty, "\n", 0o600)
	twoTokens := filepath.Join(dir, "two")
	writeFile(t, twoTokens, "a b\n", 0o600)
	deadURL, _ := url.Parse(closedPort(t))
	badGateway := httptest.NewServer(httputil.NewSingleHostReverseProxy(deadURL))
	t.Cleanup(badGateway.Close)
	tlsURL, ca := tlsFront(t, l.v.URL)
	notPEM := filepath.Join(dir, "not.pem")
	writeFile(t, notPEM, "hello", 0o600)

	cases := []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stderr []string // all must appear
		stdout string   // must appear
	}{
		{name: "ok", args: []string{"nodes", "list"}, code: exitOK, stdout: "hv-a"},
		{name: "bad flag", args: []string{"nodes", "list", "--bogus"}, code: exitUsage, stderr: []string{"nodes list: flag provided but not defined: -bogus", "qx-ctl help"}},
		{name: "bad global flag", args: []string{"--bogus", "nodes", "list"}, code: exitUsage, stderr: []string{"-bogus"}},
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, stderr: []string{`unknown command "frobnicate"`}},
		{name: "missing node", args: []string{"nodes", "show"}, code: exitUsage, stderr: []string{"nodes show: missing the node"}},
		{name: "unknown node", args: []string{"nodes", "show", "hv-z"}, code: exitNotFound, stderr: []string{`no node with id or hostname "hv-z"`}},
		{name: "vDC error", args: []string{"tokens", "create", "--ttl", "9000h"}, code: exitFailure,
			stderr: []string{"qx-ctl: create join token: POST /api/v1/join-tokens: ttl_seconds is 32400000", "HTTP 400 Bad Request"}},
		{name: "wrong token", env: map[string]string{envToken: "wrong-token"}, args: []string{"nodes", "list"}, code: exitAuth,
			stderr: []string{"qx-ctl: list nodes: GET /api/v1/nodes: wrong admin token (HTTP 401 Unauthorized)", "admin token from QX_ADMIN_TOKEN"}},
		{name: "no token", env: map[string]string{envToken: "", envTokenFile: filepath.Join(dir, "missing")}, args: []string{"vms", "list"}, code: exitAuth,
			stderr: []string{"no admin token", filepath.Join(dir, "missing")}},
		{name: "token file wins", env: map[string]string{envToken: "wrong-token"}, args: []string{"--token-file", good, "nodes", "list"}, code: exitOK, stdout: "hv-b"},
		{name: "token file env", env: map[string]string{envToken: "", envTokenFile: good}, args: []string{"pools", "list"}, code: exitOK, stdout: "images"},
		{name: "token file readable by others", args: []string{"nodes", "list", "--token-file", loose}, code: exitOK,
			stdout: "hv-c", stderr: []string{"warning: token file " + loose + " is readable by others (mode 0644)"}},
		{name: "empty token file", args: []string{"--token-file", empty, "nodes", "list"}, code: exitAuth, stderr: []string{"token file " + empty + " is empty"}},
		{name: "token file with two words", args: []string{"--token-file", twoTokens, "nodes", "list"}, code: exitAuth, stderr: []string{"must hold the token alone"}},
		{name: "wrong token in file", args: []string{"--token-file", notPEM, "nodes", "list"}, code: exitAuth, stderr: []string{"wrong admin token", "--token-file " + notPEM}},
		{name: "unreachable", args: []string{"--url", deadURL.String(), "nodes", "list"}, code: exitUnreachable,
			stderr: []string{"connection refused", "is the vDC running at " + deadURL.String()}},
		{name: "unreachable from env", env: map[string]string{envURL: deadURL.String()}, args: []string{"nodes", "show", "hv-a"}, code: exitUnreachable,
			stderr: []string{"connection refused"}},
		{name: "timeout", args: []string{"--timeout", "300ms", "--url", silentServer(t), "nodes", "list"}, code: exitUnreachable,
			stderr: []string{"no answer within --timeout 300ms"}},
		{name: "bad gateway", args: []string{"--url", badGateway.URL, "nodes", "list"}, code: exitUnreachable, stderr: []string{"HTTP 502 Bad Gateway"}},
		{name: "untrusted certificate", args: []string{"--url", tlsURL, "nodes", "list"}, code: exitFailure,
			stderr: []string{"certificate", "pass --ca-cert FILE"}},
		{name: "ca-cert", args: []string{"--url", tlsURL, "--ca-cert", ca, "nodes", "list"}, code: exitOK, stdout: "hv-a"},
		{name: "insecure", args: []string{"nodes", "list", "--url", tlsURL, "--insecure"}, code: exitOK, stdout: "hv-a",
			stderr: []string{"warning: --insecure: the certificate of " + tlsURL + " is not verified"}},
		{name: "ca-cert not PEM", args: []string{"--url", tlsURL, "--ca-cert", notPEM, "nodes", "list"}, code: exitUsage, stderr: []string{"no PEM certificate found"}},
		{name: "ca-cert missing", args: []string{"--url", tlsURL, "--ca-cert", filepath.Join(dir, "nope.pem"), "nodes", "list"}, code: exitUsage, stderr: []string{"nope.pem"}},
		{name: "ca-cert on http", args: []string{"--ca-cert", ca, "nodes", "list"}, code: exitUsage, stderr: []string{"need an https:// URL"}},
		{name: "ca-cert and insecure", args: []string{"--url", tlsURL, "--ca-cert", ca, "--insecure", "nodes", "list"}, code: exitUsage, stderr: []string{"contradict"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := l.ctl(tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d\n%s", r.code, tc.code, r)
			}
			for _, want := range tc.stderr {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q\n%s", want, r)
				}
			}
			if !strings.Contains(r.stdout, tc.stdout) {
				t.Errorf("stdout lacks %q\n%s", tc.stdout, r)
			}
			if tc.code != exitOK && r.stdout != "" {
				t.Errorf("a failure printed on stdout: %q", r.stdout)
			}
			if tc.code != exitOK && !strings.HasPrefix(r.stderr, "qx-ctl: ") {
				t.Errorf("stderr does not start with \"qx-ctl: \": %q", r.stderr)
			}
		})
	}
}

// TestBinary builds qx-ctl and runs the executable: the exit statuses reach the
// shell through main and os.Exit.
func TestBinary(t *testing.T) {
	l := newLab(t)
	l.seed()
	bin := filepath.Join(t.TempDir(), "qx-ctl")
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command in PATH to build qx-ctl: %v", err)
	}
	build := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cases := []struct {
		args   []string
		env    []string
		code   int
		stdout string
	}{
		{args: []string{"nodes", "list"}, code: exitOK, stdout: "hv-a"},
		{args: []string{"-o", "json", "vms", "list"}, code: exitOK, stdout: `"power_state": "running"`},
		{args: []string{"version"}, code: exitOK, stdout: "qx-ctl "},
		{args: []string{"help"}, code: exitOK, stdout: "Exit status:"},
		{args: []string{"tokens", "create", "--ttl", "9000h"}, code: exitFailure},
		{args: []string{"nodes", "frob"}, code: exitUsage},
		{args: []string{"nodes", "delete", "hv-a"}, code: exitUsage}, // stdin is not a terminal
		{args: []string{"nodes", "show", "hv-z"}, code: exitNotFound},
		{args: []string{"nodes", "list"}, env: []string{envToken + "=wrong-token"}, code: exitAuth},
		{args: []string{"nodes", "list"}, env: []string{envToken + "=", envTokenFile + "=/nonexistent/token"}, code: exitAuth},
		{args: []string{"nodes", "list"}, env: []string{envURL + "=" + closedPort(t)}, code: exitUnreachable},
	}
	for _, tc := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, tc.args...)
		cmd.Env = append(os.Environ(), tc.env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		cancel()
		l.record(out.String(), errb.String())
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run %s %q: %v", bin, tc.args, err)
		}
		if code != tc.code || !strings.Contains(out.String(), tc.stdout) {
			t.Errorf("%s %q (env %q): exit %d, want %d; stdout %q (want %q); stderr %q",
				bin, tc.args, tc.env, code, tc.code, out.String(), tc.stdout, errb.String())
		}
	}
	if _, err := os.Stat(filepath.Join(".", "qx-ctl")); err == nil {
		t.Errorf("go build left a qx-ctl binary in the source folder")
	}
}
