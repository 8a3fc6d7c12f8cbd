package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "4G": 4 << 30, "4GiB": 4 << 30, "1.5G": 3 << 29, "1048576": 1 << 20, "2t": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "lots"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = nil error, want one", in)
		}
	}
}

// TestVMCommands drives a VM through qx-ctl, the node side answered as the agent
// would over HTTP.
func TestVMCommands(t *testing.T) {
	l := newLab(t)
	a := l.register("hv-a", "10.0.0.11", "", http.StatusCreated)

	// An image, uploaded with its sha256 checked and a progress bar on stderr.
	boot := bytes.Repeat([]byte{0xeb, 0xfe}, 256)
	file := filepath.Join(t.TempDir(), "boot.img")
	os.WriteFile(file, boot, 0o644)
	r := l.must("images", "upload", file, "-o", "json")
	var img quantix.Image
	decodeStrict(t, r.stdout, &img)
	sum := sha256.Sum256(boot)
	if img.Name != "boot.img" || img.Format != quantix.ImageRaw || img.SHA256 != hex.EncodeToString(sum[:]) || !strings.Contains(r.stderr, "100%") {
		t.Errorf("images upload = %+v, stderr %q; want boot.img, raw, its sha256 and a finished progress bar", img, r.stderr)
	}
	if r := l.must("images", "list"); !strings.Contains(r.stdout, "boot.img") {
		t.Errorf("images list:\n%s", r)
	}

	r = l.must("vms", "create", "web", "--memory", "64M", "--disk", "image:"+img.ID, "--node", "hv-a", "-o", "json")
	var vm quantix.ManagedVM
	decodeStrict(t, r.stdout, &vm)
	if vm.Name != "web" || vm.NodeID != a.ID || vm.Wanted != quantix.WantedRunning || len(vm.Spec.NICs) != 1 {
		t.Fatalf("vms create = %+v", vm)
	}
	if r := l.ctl("vms", "create", "web", "--memory", "64M"); r.code != exitFailure || !strings.Contains(r.stderr, "exists already") {
		t.Errorf("second create of web: %s, want exit 1 naming the conflict", r)
	}
	if r := l.ctl("vms", "create", "Bad_Name"); r.code != exitFailure || !strings.Contains(r.stderr, "name:") {
		t.Errorf("create with a bad name: %s, want exit 1 naming the field", r)
	}
	if r := l.ctl("vms", "create", "x", "--memory", "lots"); r.code != exitUsage {
		t.Errorf("create with a bad size: %s, want exit 2", r)
	}
	if r := l.ctl("images", "delete", img.ID); r.code != exitFailure || !strings.Contains(r.stderr, "used by") {
		t.Errorf("delete an image in use: %s, want exit 1", r)
	}

	// The node reports it running: list and show have wanted next to observed.
	l.putState(a, []quantix.VM{{UUID: vm.UUID, Name: "web", PowerState: quantix.PowerRunning, VCPUs: 1, MemoryBytes: 64 << 20}}, nil)
	r = l.must("vms", "list", "--managed")
	header, rows := tableRows(t, r.stdout)
	if got := column(t, header, rows, "OBSERVED"); len(got) != 1 || got[0] != "running" {
		t.Errorf("vms list --managed observed = %q, want running\n%s", got, r)
	}
	if r := l.must("vms", "show", "web"); !strings.Contains(r.stdout, "observed:    running") || !strings.Contains(r.stdout, "created") {
		t.Errorf("vms show:\n%s", r)
	}
	// A stop with --wait returns once the node reports it stopped.
	done := make(chan result, 1)
	go func() { done <- l.ctl("vms", "stop", "web", "--wait", "--wait-timeout", "20s") }()
	for {
		d := desiredOf(t, l, a)
		if d.VMs[0].Power == quantix.WantedStopped {
			l.putStateApplied(a, d.Generation, quantix.VM{UUID: vm.UUID, Name: "web", PowerState: quantix.PowerShutoff, VCPUs: 1, MemoryBytes: 64 << 20})
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := <-done; r.code != 0 || !strings.Contains(r.stdout, "observed stopped") {
		t.Errorf("vms stop --wait: %s", r)
	}
	if r := l.ctl("vms", "reboot", "web"); r.code != exitFailure {
		t.Errorf("reboot of a stopped VM: %s, want exit 1", r)
	}
	if r := l.ctl("vms", "start", "nope"); r.code != exitNotFound {
		t.Errorf("start of an unknown VM: %s, want exit 3", r)
	}
	out := "QUANTIX-GUEST\r\n"
	req, _ := http.NewRequest(http.MethodPut, l.v.AgentURL+quantix.PathNodeConsole(a.ID, vm.UUID), strings.NewReader(out))
	req.Header.Set("Authorization", "Bearer "+a.Secret)
	if resp, err := vdctest.ClientFor(req.URL.String()).Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("console put: %v %v", resp, err)
	}
	if r := l.must("vms", "console", "web"); r.stdout != out {
		t.Errorf("vms console = %q, want %q", r.stdout, out)
	}
	if r := l.ctl("nodes", "delete", "hv-a", "--yes"); r.code != exitFailure || !strings.Contains(r.stderr, "force") {
		t.Errorf("delete a node with a VM: %s, want exit 1 pointing at --force", r)
	}
	if r := l.ctl("vms", "delete", "web"); r.code != exitUsage {
		t.Errorf("vms delete without --yes and no terminal: %s, want exit 2", r)
	}
	l.must("vms", "delete", "web", "--yes", "--keep-disks")
	if d := desiredOf(t, l, a); len(d.VMs) != 0 || len(d.Deleted) != 1 || !d.Deleted[0].KeepDisks {
		t.Errorf("desired after delete = %+v", d)
	}
	l.must("images", "delete", "boot.img")
}

func desiredOf(t *testing.T, l *lab, n *agentNode) quantix.NodeDesired {
	t.Helper()
	var d quantix.NodeDesired
	if code := call(t, http.MethodGet, l.v.AgentURL+quantix.PathDesired(n.ID), n.Secret, nil, &d); code != http.StatusOK {
		t.Fatalf("desired of %s: HTTP %d", n.Hostname, code)
	}
	return d
}

// putStateApplied reports the node's full state after converging to generation.
func (l *lab) putStateApplied(n *agentNode, generation int64, vms ...quantix.VM) {
	l.t.Helper()
	st := quantix.NodeState{VMs: vms, StoragePools: []quantix.StoragePool{}, AppliedGeneration: generation}
	st.StateHash = quantix.StateHash(st.VMs, st.StoragePools)
	if code := call(l.t, http.MethodPut, l.v.AgentURL+quantix.PathState(n.ID), n.Secret, st, nil); code != http.StatusOK {
		l.t.Fatalf("PUT state of %s: HTTP %d", n.Hostname, code)
	}
}
