package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/nodeos"
	"github.com/quantix/quantix/services/initd/inittest"
)

// TestUpgradeWiring runs the whole agent against a real vDC behind a front that
// serves the desired state with an upgrade order and the release's files (the
// vDC's side of them is written in parallel, vdc/api): every heartbeat carries the
// running OS and its slots, the order is downloaded with the node secret, staged
// by init and reported staged; once the order says Activate the agent reports
// activating and asks init to reboot only after the vDC acknowledged a heartbeat
// saying so (the front refuses the first one).
func TestUpgradeWiring(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startPlainVDC(t)
	data := t.TempDir()
	in := inittest.Start(t, inittest.Options{Version: "1.0.0", DataDir: data})
	bundle := in.Bundle(quantix.ImageQuantixOS, "2.0.0", 1<<20, true)
	order := quantix.DesiredUpgrade{Upgrade: "up-1", Release: "rel-2", Image: quantix.ImageQuantixOS, Version: "2.0.0"}
	files, list := inittest.ReleaseFiles(t, bundle)
	order.Files = list

	var mu sync.Mutex
	desired := quantix.NodeDesired{Generation: 1, Upgrade: &order}
	var phases []string // the upgrade phase of every heartbeat the vDC took
	var oses []quantix.NodeOS
	refused, acked := false, false
	var violations []string
	cfg := frontedConfig(t, v, mgmtNS(t, "10.54.0.5/24", "10.54.0.1"), "node-upgrade", func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		mu.Lock()
		d := desired
		mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/desired"):
			json.NewEncoder(w).Encode(d)
			return true
		case strings.Contains(r.URL.Path, "/releases/"):
			node := strings.Split(strings.TrimPrefix(r.URL.Path, quantix.PathNodes+"/"), "/")[0]
			b, ok := files[strings.TrimPrefix(r.URL.Path, quantix.PathNodeRelease(node, "rel-2", ""))]
			if !ok || !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
				http.Error(w, "no such file, or no node secret", http.StatusNotFound)
				return true
			}
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
			return true
		}
		if strings.HasSuffix(r.URL.Path, "/heartbeat") {
			var hb quantix.HeartbeatRequest
			json.Unmarshal(body, &hb)
			mu.Lock()
			if hb.OS != nil {
				oses = append(oses, *hb.OS)
				if hb.OS.Upgrade != nil && hb.OS.Upgrade.Phase == quantix.UpgradeActivating {
					if !acked && in.Count(string(quantix.Reboot)) > 0 {
						violations = append(violations, "reboot requested before the vDC took a heartbeat saying activating")
					}
					if !refused {
						refused = true
						mu.Unlock()
						http.Error(w, `{"error":"database in trouble"}`, http.StatusServiceUnavailable)
						return true
					}
					acked = true
				}
				if hb.OS.Upgrade != nil {
					phases = append(phases, hb.OS.Upgrade.Phase)
				}
			}
			mu.Unlock()
		}
		return false
	})

	mounts := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mounts, []byte(fmt.Sprintf("36 35 98:0 / %s rw - ext4 /dev/vdb1 rw\n", data)), 0o644)
	bootID := filepath.Join(t.TempDir(), "boot_id")
	os.WriteFile(bootID, []byte("boot-1\n"), 0o644)
	cfg.ImagesDir = t.TempDir()
	cfg.ConsoleDir = t.TempDir()
	cfg.OS = nodeos.Config{Init: in.Client(), Image: quantix.ImageQuantixOS, Version: "1.0.0", DataDir: data, MountInfo: mounts,
		BootID: bootID, RetryEvery: 100 * time.Millisecond}
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)

	has := func(phase string) bool {
		for _, p := range phases {
			if p == phase {
				return true
			}
		}
		return false
	}
	eventually(t, 20*time.Second, "a heartbeat saying staged, with the OS and its slots", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		ok := has(quantix.UpgradeStaged) && len(oses) > 0
		if ok {
			os := oses[len(oses)-1]
			ok = os.Image == quantix.ImageQuantixOS && os.Version == "1.0.0" && os.Slots != nil && os.Slots.Booted == "a" && os.Slots.Next == "b"
		}
		return ok, fmt.Sprintf("phases %q, OS %+v", phases, oses)
	})
	if n := in.Count(string(quantix.Reboot)); n != 0 {
		t.Fatalf("%d reboot requests without Activate", n)
	}
	b, err := os.ReadFile(filepath.Join(data, nodeos.BundlesDir, "rel-2", "quantix-os.iso"))
	if err != nil || !bytes.Equal(b, files["quantix-os.iso"]) {
		t.Fatalf("the downloaded ISO is not the release's (%d bytes, %v)", len(b), err)
	}

	mu.Lock()
	act := order
	act.Activate = true
	desired = quantix.NodeDesired{Generation: 2, Upgrade: &act}
	mu.Unlock()
	eventually(t, 20*time.Second, "a reboot request after an acknowledged heartbeat saying activating", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return acked && in.Count(string(quantix.Reboot)) == 1, fmt.Sprintf("phases %q, refused %v, acked %v, init requests %q", phases, refused, acked, in.Requests())
	})
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Errorf("%s", strings.Join(violations, "; "))
	}
	if st := a.svc.Status(); st.OS == nil || st.OS.Upgrade == nil || st.OS.Upgrade.Phase != quantix.UpgradeActivating {
		t.Errorf("/status shows OS %+v, want the activating upgrade", st.OS)
	}
}
