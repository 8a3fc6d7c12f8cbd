package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadSmoke runs the whole load command with tiny numbers against a freshly
// built qx-vdc, so the measuring tool cannot rot unnoticed.
func TestLoadSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds qx-vdc and starts PostgreSQL")
	}
	bin := filepath.Join(t.TempDir(), "qx-vdc")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/quantix/quantix/vdc/cmd/qx-vdc").CombinedOutput(); err != nil {
		t.Fatalf("go build qx-vdc: %v\n%s", err, out)
	}
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"--qx-vdc", bin, "--nodes", "50", "--storm", "100", "--rate", "200",
		"--duration", "1s", "--conns", "8", "--pgbench-clients", "2", "--pgbench-time", "1s", "--heartbeat-writers", "2", "--desired-vms", "2"}, &out, &errb)
	if err != nil {
		t.Fatalf("qx-vdc-load: %v\n%s\n%s", err, out.String(), errb.String())
	}
	for _, want := range []string{"no duplicates", "heartbeats/s), errors 0", "latency p50", "2 clients:", "TPS", "peak RSS",
		"created 100 managed VMs (2 per node)", "against no VMs", "same phase: nodes with VMs", "long-poll wake-up", "fetches/s), errors 0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
