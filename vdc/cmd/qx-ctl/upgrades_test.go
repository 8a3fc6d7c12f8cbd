package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestReleaseAndUpgradeCommands uploads bundles and runs upgrades whose node never
// stages (no agent works on it): --wait ends in exit 5 at --wait-timeout and in
// exit 1 once the vDC fails the node at upgrade_node_timeout.
func TestReleaseAndUpgradeCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs PostgreSQL and a vDC")
	}
	key := vdctest.NewReleaseKey(t, "ctl-test")
	log := &syncbuf.Buffer{}
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Minute, Log: log, TrustedKeysFiles: []string{key.Pub},
		Version: "2.0.0", UpgradeNodeTimeout: 3 * time.Second})
	l := &lab{t: t, v: v, vdcLog: log}
	t.Setenv(envURL, v.URL)
	t.Setenv(envToken, v.AdminToken)
	t.Setenv(envTokenFile, "")

	dir := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 16<<10)
	r := l.must("releases", "upload", dir, "-o", "json")
	var rel quantix.Release
	decodeStrict(t, r.stdout, &rel)
	if rel.Version != "1.1.0" || rel.SignedBy != "ctl-test" || !strings.Contains(r.stderr, "100%") {
		t.Errorf("releases upload = %+v, stderr %q; want 1.1.0 signed by ctl-test and a finished progress bar", rel, r.stderr)
	}
	bad := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.2.0", 1024)
	os.WriteFile(filepath.Join(bad, "quantix-os.iso"), []byte("damaged"), 0o644)
	if r := l.ctl("releases", "upload", bad); r.code != exitFailure || !strings.Contains(r.stderr, "does not match its SHA256SUMS") {
		t.Errorf("upload of a damaged bundle: %s, want exit 1 saying so", r)
	}
	if r := l.must("releases", "list"); !strings.Contains(r.stdout, "1.1.0") || strings.Contains(r.stdout, "1.2.0") {
		t.Errorf("releases list:\n%s", r)
	}

	n := l.register("up-node", "10.0.0.21", "", http.StatusCreated)
	nodeOS := quantix.NodeOS{Image: quantix.ImageQuantixOS, Version: "1.0.0", Slots: &quantix.SlotsStatus{Booted: "a", State: quantix.SlotGood}}
	if code := call(t, http.MethodPost, v.AgentURL+quantix.PathHeartbeat(n.ID), n.Secret, quantix.HeartbeatRequest{ManagementIP: n.IP, OS: &nodeOS}, nil); code != http.StatusOK {
		t.Fatalf("heartbeat: %d", code)
	}
	if r := l.ctl("upgrades", "start", "--release", "quantix-os-1.1.0"); r.code != exitUsage {
		t.Errorf("upgrades start without nodes: %s, want exit 2", r)
	}
	r = l.ctl("upgrades", "start", "--release", "quantix-os-1.1.0", "--node", "up-node", "--wait", "--wait-timeout", "1s")
	if r.code != exitUnreachable || !strings.Contains(r.stderr, "still running") {
		t.Fatalf("upgrades start --wait past --wait-timeout: %s, want exit 5", r)
	}
	r = l.must("upgrades", "list", "-o", "json")
	var ul quantix.UpgradeList
	decodeStrict(t, r.stdout, &ul)
	if len(ul.Upgrades) != 1 || ul.Upgrades[0].State != quantix.UpgradeRunning {
		t.Fatalf("upgrades list = %+v, want one running", ul.Upgrades)
	}
	if r := l.must("upgrades", "cancel", ul.Upgrades[0].ID); !strings.Contains(r.stdout, "state:    cancelled") {
		t.Errorf("upgrades cancel:\n%s", r)
	}
	r = l.ctl("upgrades", "start", "--release", rel.ID, "--all", "--wait")
	if r.code != exitFailure || !strings.Contains(r.stderr, "failed: node up-node: not staged within 3s") {
		t.Errorf("upgrades start --wait of a node that never stages: %s, want exit 1 with the reason", r)
	}
	if r := l.must("upgrades", "show", ul.Upgrades[0].ID); !strings.Contains(r.stdout, "up-node") || !strings.Contains(r.stdout, "cancelled") {
		t.Errorf("upgrades show:\n%s", r)
	}
}
