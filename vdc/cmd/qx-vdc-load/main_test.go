package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var qxVDC struct {
	once     sync.Once
	dir, bin string
	err      error
	out      []byte
}

func TestMain(m *testing.M) {
	code := m.Run()
	if qxVDC.dir != "" {
		os.RemoveAll(qxVDC.dir)
	}
	os.Exit(code)
}

// buildVDC builds qx-vdc once per test binary.
func buildVDC(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds qx-vdc and starts PostgreSQL")
	}
	qxVDC.once.Do(func() {
		if qxVDC.dir, qxVDC.err = os.MkdirTemp("", "qx-vdc-load-test-"); qxVDC.err != nil {
			return
		}
		qxVDC.bin = filepath.Join(qxVDC.dir, "qx-vdc")
		qxVDC.out, qxVDC.err = exec.Command("go", "build", "-o", qxVDC.bin, "github.com/quantix/quantix/vdc/cmd/qx-vdc").CombinedOutput()
	})
	if qxVDC.err != nil {
		t.Fatalf("go build qx-vdc: %v\n%s", qxVDC.err, qxVDC.out)
	}
	return qxVDC.bin
}

// runLoad runs the load command and fails the test when it fails.
func runLoad(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if err := run(context.Background(), append([]string{"--qx-vdc", buildVDC(t)}, args...), &out, &errb); err != nil {
		t.Fatalf("qx-vdc-load %s: %v\n%s\n%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// TestLoadSmoke runs the whole load command with tiny numbers against a freshly
// built qx-vdc, so the measuring tool cannot rot unnoticed.
func TestLoadSmoke(t *testing.T) {
	out := runLoad(t, "--nodes", "50", "--storm", "100", "--rate", "200",
		"--duration", "1s", "--conns", "8", "--pgbench-clients", "2", "--pgbench-time", "1s", "--heartbeat-writers", "2", "--desired-vms", "2")
	for _, want := range []string{"no duplicates", "heartbeats/s), errors 0", "latency p50", "2 clients:", "TPS", "peak RSS",
		"created 100 managed VMs (2 per node)", "against no VMs", "same phase: nodes with VMs", "long-poll wake-up", "fetches/s), errors 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

var perVDCRE = regexp.MustCompile(`(?m)^  qx-vdc (\d+): acknowledged (\d+) \(\d+ heartbeats/s\), errors (\d+)`)

// perVDC is the acknowledged heartbeats and errors of each vDC in each phase
// printed, in order.
func perVDC(out string) (acked, errs map[string][]int) {
	acked, errs = map[string][]int{}, map[string][]int{}
	for _, m := range perVDCRE.FindAllStringSubmatch(out, -1) {
		a, _ := strconv.Atoi(m[2])
		e, _ := strconv.Atoi(m[3])
		acked[m[1]] = append(acked[m[1]], a)
		errs[m[1]] = append(errs[m[1]], e)
	}
	return acked, errs
}

// TestTwoVDCs: with --vdcs 2 both processes serve heartbeats on the one database
// and none fails.
func TestTwoVDCs(t *testing.T) {
	out := runLoad(t, "--vdcs", "2", "--nodes", "20", "--storm", "0", "--rate", "0", "--duration", "1s", "--conns", "4", "--pgbench-clients", "")
	acked, errs := perVDC(out)
	for _, v := range []string{"1", "2"} {
		if len(acked[v]) != 1 || acked[v][0] == 0 || errs[v][0] != 0 {
			t.Errorf("qx-vdc %s: acknowledged %v, errors %v; want one phase with heartbeats and no errors:\n%s", v, acked[v], errs[v], out)
		}
	}
	if !strings.Contains(out, "heartbeats/s), errors 0") || !strings.Contains(out, "qx-vdc 2 peak RSS") {
		t.Errorf("want no errors in total and two qx-vdc:\n%s", out)
	}
}

// TestCompareVDCs: the first phase sends everything to vDC 1, the second spreads
// over both, the second round runs them in the other order, and each pair is printed.
func TestCompareVDCs(t *testing.T) {
	out := runLoad(t, "--compare", "vdcs", "--rounds", "2", "--nodes", "20", "--storm", "0", "--rate", "0", "--duration", "1s", "--conns", "4", "--pgbench-clients", "")
	acked, errs := perVDC(out)
	// Phases: warm-up; all to vDC 1, spread; spread, all to vDC 1.
	if len(acked["1"]) != 5 || len(acked["2"]) != 5 {
		t.Fatalf("want 5 phases per vDC, got %v %v:\n%s", acked["1"], acked["2"], out)
	}
	for i, wantIdle := range []bool{false, true, false, false, true} {
		if acked["1"][i] == 0 || (acked["2"][i] == 0) != wantIdle {
			t.Errorf("phase %d: qx-vdc 1 %d, qx-vdc 2 %d heartbeats; want qx-vdc 2 idle %v", i, acked["1"][i], acked["2"][i], wantIdle)
		}
	}
	for v, e := range errs {
		if slices.Max(e) != 0 {
			t.Errorf("qx-vdc %s errors %v", v, e)
		}
	}
	for _, want := range []string{"2 vDCs against 1, round 1 of 2 (same run", "2 vDCs against 1, round 2 of 2 (same run"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}

// TestStandbySync: --standby sync makes a standby that the primary reports
// streaming and synchronous after the heartbeats, which all succeeded.
func TestStandbySync(t *testing.T) {
	out := runLoad(t, "--standby", "sync", "--nodes", "20", "--storm", "0", "--rate", "0", "--duration", "1s", "--conns", "4", "--pgbench-clients", "")
	for _, want := range []string{"heartbeats/s), errors 0", "standby at the end: state streaming, sync_state sync,", "standby postgres"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if regexp.MustCompile(`acknowledged 0 `).MatchString(out) {
		t.Errorf("no heartbeat acknowledged:\n%s", out)
	}
}

// TestCompareSync: an asynchronous phase, then a synchronous one, both without
// errors; the standby is then back to what --standby asked, and pgbench runs under
// both.
func TestCompareSync(t *testing.T) {
	out := runLoad(t, "--standby", "async", "--compare", "sync", "--nodes", "20", "--storm", "0", "--rate", "0", "--duration", "1s", "--conns", "4",
		"--pgbench-clients", "2", "--pgbench-time", "1s")
	for _, want := range []string{", asynchronous standby, closed loop", ", synchronous standby (every commit waits for it), closed loop",
		"synchronous standby against asynchronous, round 1 of 1 (same run",
		"sync_state async,", // back to --standby async for pgbench and the end
		"same server, asynchronous standby", "same server, synchronous standby"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "heartbeats/s), errors 0"); n != 3 {
		t.Errorf("%d phases without errors, want 3 (warm-up, async, sync):\n%s", n, out)
	}
}

// TestBadFlags: values the run cannot honour are refused before anything starts,
// with an error that names the flag and what it takes.
func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--vdcs", "0"}, "--vdcs 0: want at least 1"},
		{[]string{"--vdcs", "-2"}, "--vdcs -2: want at least 1"},
		{[]string{"--standby", "yes"}, `--standby "yes": want none, async or sync`},
		{[]string{"--compare", "tls"}, `--compare "tls": want vdcs or sync`},
		{[]string{"--compare", "sync"}, "--compare sync needs a standby: add --standby async"},
		{[]string{"--compare", "vdcs", "--desired-vms", "2"}, "--compare and --desired-vms"},
		{[]string{"--compare", "vdcs", "--rounds", "0"}, "--rounds 0: want at least 1"},
		{[]string{"--transport", "udp"}, `--transport "udp": want tls or plain`},
	} {
		var out, errb bytes.Buffer
		// A binary that does not exist: a refused flag must be caught before it matters.
		err := run(context.Background(), append([]string{"--qx-vdc", "/nonexistent/qx-vdc"}, tc.args...), &out, &errb)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
