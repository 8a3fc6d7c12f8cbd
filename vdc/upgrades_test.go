package vdc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/vdctest"
)

// The node side of these tests is the agent's upgrade contract (upgrades.go),
// spoken over the real agent API: heartbeats carrying NodeOS, the desired state,
// the release download.

// uploadBundle sends every file of dir as one multipart upload.
func uploadBundle(t *testing.T, v *vdctest.VDC, dir string) (int, []byte) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		w, _ := mw.CreateFormFile("file", e.Name())
		w.Write(b)
	}
	mw.Close()
	req, _ := http.NewRequest(http.MethodPost, v.URL+quantix.PathReleases, &body)
	req.Header.Set("Authorization", "Bearer "+v.AdminToken)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func mustUpload(t *testing.T, v *vdctest.VDC, dir string) quantix.Release {
	t.Helper()
	code, b := uploadBundle(t, v, dir)
	if code != http.StatusCreated {
		t.Fatalf("upload %s: %d %s, want 201", dir, code, b)
	}
	var r quantix.Release
	decodeInto(t, b, &r)
	return r
}

// releaseDirs lists data_dir/releases: what the vDC keeps on disk.
func releaseDirs(t *testing.T, v *vdctest.VDC) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(v.DataDir, "releases"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestReleaseUpload(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "release-test")
	v := vdctest.Start(t, vdctest.Options{TrustedKeysFiles: []string{key.Pub, "/nonexistent/site-keys"}, MaxImageBytes: 1 << 20})
	good := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 64<<10)
	rel := mustUpload(t, v, good)
	if rel.Image != quantix.ImageQuantixOS || rel.Version != "1.1.0" || rel.SignedBy != "release-test" || len(rel.Files) != 4 {
		t.Fatalf("uploaded release = %+v, want quantix-os 1.1.0 signed by release-test with 4 files", rel)
	}
	iso, _ := os.ReadFile(filepath.Join(good, "quantix-os.iso"))
	sum := sha256.Sum256(iso)
	var isoFile quantix.ReleaseFile
	for _, f := range rel.Files {
		if f.Name == "quantix-os.iso" {
			isoFile = f
		}
	}
	if isoFile.SHA256 != hex.EncodeToString(sum[:]) || isoFile.SizeBytes != int64(len(iso)) {
		t.Fatalf("iso file = %+v, want %d bytes sha256 %x", isoFile, len(iso), sum)
	}
	var got quantix.Release
	v.Do(t, http.MethodGet, quantix.PathRelease("quantix-os-1.1.0"), nil, &got, http.StatusOK)
	if got.ID != rel.ID {
		t.Fatalf("GET quantix-os-1.1.0 = %s, want %s", got.ID, rel.ID)
	}

	// A node downloads the files, with Range like the image download.
	n := newNode("dl-node")
	mustRegister(t, v, n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
	req, _ := http.NewRequest(http.MethodGet, v.AgentURL+quantix.PathNodeRelease(n.ID, rel.ID, "quantix-os.iso"), nil)
	req.Header.Set("Authorization", "Bearer "+n.Secret)
	req.Header.Set("Range", "bytes=100-199")
	resp, err := v.AgentClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, iso[100:200]) || resp.Header.Get("X-Quantix-SHA256") != isoFile.SHA256 {
		t.Fatalf("ranged download: %d, %d bytes (match %v), sha header %q", resp.StatusCode, len(part), bytes.Equal(part, iso[100:200]), resp.Header.Get("X-Quantix-SHA256"))
	}
	if code, b := call(t, http.MethodGet, v.AgentURL+quantix.PathNodeRelease(n.ID, rel.ID, "quantix-os.iso"), "wrong", nil); code != http.StatusUnauthorized {
		t.Fatalf("download with a wrong secret: %d %s, want 401", code, b)
	}
	if code, b := call(t, http.MethodGet, v.AgentURL+quantix.PathNodeRelease(n.ID, rel.ID, "other.iso"), n.Secret, nil); code != http.StatusNotFound {
		t.Fatalf("download of a file not in the release: %d %s, want 404", code, b)
	}

	other := vdctest.NewReleaseKey(t, "stranger")
	damaged := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.2.0", 64<<10)
	os.WriteFile(filepath.Join(damaged, "quantix-os.iso"), []byte("changed after signing"), 0o644)
	garbled := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.3.0", 1024)
	os.WriteFile(filepath.Join(garbled, quantix.BundleSignature), []byte("ed25519 bm90IGEgc2lnbmF0dXJl\n"), 0o644)
	unsigned := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.4.0", 1024)
	os.Remove(filepath.Join(unsigned, quantix.BundleSignature))
	for _, c := range []struct {
		name string
		dir  string
		code int
		want string
	}{
		{"untrusted key", vdctest.ReleaseBundle(t, other, quantix.ImageQuantixOS, "1.5.0", 1024), http.StatusUnprocessableEntity, "not from a key this image trusts"},
		{"damaged", damaged, http.StatusUnprocessableEntity, "does not match its SHA256SUMS"},
		{"bad signature file", garbled, http.StatusUnprocessableEntity, "not an ed25519 signature"},
		{"unsigned", unsigned, http.StatusBadRequest, "holds 3 files"},
		{"not a release version", vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "tuesday", 1024), http.StatusUnprocessableEntity, "not MAJOR.MINOR.PATCH"},
		{"too big", vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.6.0", 2<<20), http.StatusRequestEntityTooLarge, "max_image_bytes"},
		{"uploaded already", good, http.StatusConflict, "uploaded already"},
	} {
		code, b := uploadBundle(t, v, c.dir)
		if code != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("%s: upload = %d %s, want %d %q", c.name, code, b, c.code, c.want)
		}
		if d := releaseDirs(t, v); len(d) != 1 || d[0] != rel.ID {
			t.Errorf("%s: data_dir/releases holds %v, want only %s", c.name, d, rel.ID)
		}
	}
	if code, b := call(t, http.MethodPost, v.URL+quantix.PathReleases, v.AdminToken, "{}"); code != http.StatusBadRequest || !strings.Contains(string(b), "multipart/form-data") {
		t.Errorf("JSON upload = %d %s, want 400 naming multipart/form-data", code, b)
	}
	var l quantix.ReleaseList
	v.Do(t, http.MethodGet, quantix.PathReleases, nil, &l, http.StatusOK)
	if len(l.Releases) != 1 {
		t.Fatalf("releases after the refusals = %+v, want the one good release", l.Releases)
	}
	v.Do(t, http.MethodDelete, quantix.PathRelease(rel.ID), nil, nil, http.StatusNoContent)
	if d := releaseDirs(t, v); len(d) != 0 {
		t.Fatalf("data_dir/releases after delete = %v, want empty", d)
	}

	// An upload cut off by a crash is removed at the next start.
	v.Stop(t)
	if err := os.MkdirAll(filepath.Join(v.DataDir, "releases", ".upload-crashed", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	v.Restart(t)
	if d := releaseDirs(t, v); len(d) != 0 {
		t.Fatalf("data_dir/releases after a restart = %v, want the broken upload gone", d)
	}
}

// simNode is an agent working on upgrades: it heartbeats its NodeOS, follows the
// DesiredUpgrade of its desired state (download, check, stage, reboot) and, as
// rollback says, comes back on the new version with its slot good or on the old
// one rolled back.
type simNode struct {
	n        *node
	v        *vdctest.VDC
	rollback string // "": the new release proves itself; else the failed gate

	mu         sync.Mutex
	os         quantix.NodeOS
	ordered    time.Time // first DesiredUpgrade seen
	good       time.Time // reported the new version, slot good
	downloaded int
}

func newSimNode(t *testing.T, v *vdctest.VDC, hostname, version string) *simNode {
	t.Helper()
	s := &simNode{n: newNode(hostname), v: v}
	mustRegister(t, v, s.n, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
	s.os = quantix.NodeOS{Image: quantix.ImageQuantixOS, Version: version, Slots: &quantix.SlotsStatus{
		Booted: quantix.SlotA, State: quantix.SlotGood, Order: []string{"a", "b"}, Next: "a",
		Slots: []quantix.SlotInfo{{Slot: "a", Good: true, Image: quantix.ImageQuantixOS, Version: version}, {Slot: "b"}}}}
	return s
}

func (s *simNode) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.v.AgentURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.n.Secret)
	resp, err := s.v.AgentClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if bs, ok := out.(*[]byte); ok {
		*bs = b
		return nil
	}
	return json.Unmarshal(b, out)
}

func (s *simNode) report(u *quantix.DesiredUpgrade, phase, errText string) {
	s.os.Upgrade = &quantix.UpgradeProgress{Upgrade: u.Upgrade, Release: u.Release, Version: u.Version, Phase: phase, Error: errText, At: time.Now()}
}

// run heartbeats every tick until ctx ends; errors go to t.Errorf.
func (s *simNode) run(ctx context.Context, t *testing.T, tick time.Duration) {
	rebootAt := time.Time{}
	var target *quantix.DesiredUpgrade
	handled := "" // the upgrade this node rebooted for: done with it, whatever came of it
	for ctx.Err() == nil {
		s.mu.Lock()
		hb := quantix.HeartbeatRequest{ManagementIP: s.n.IP, OS: &s.os}
		body, _ := json.Marshal(hb)
		s.mu.Unlock()
		var hr quantix.HeartbeatResponse
		if err := s.do(ctx, http.MethodPost, quantix.PathHeartbeat(s.n.ID), json.RawMessage(body), &hr); err != nil && ctx.Err() == nil {
			t.Errorf("%s heartbeat: %v", s.n.Hostname, err)
		}
		var d quantix.NodeDesired
		if err := s.do(ctx, http.MethodGet, quantix.PathDesired(s.n.ID), nil, &d); err != nil && ctx.Err() == nil {
			t.Errorf("%s desired: %v", s.n.Hostname, err)
		}
		s.mu.Lock()
		switch u := d.Upgrade; {
		case !rebootAt.IsZero() && time.Now().After(rebootAt):
			s.reboot(target)
			rebootAt, handled = time.Time{}, target.Upgrade
		case u == nil || !rebootAt.IsZero() || u.Upgrade == handled:
		case s.os.Upgrade == nil || s.os.Upgrade.Upgrade != u.Upgrade:
			if s.ordered.IsZero() {
				s.ordered = time.Now()
			}
			s.mu.Unlock()
			err := s.fetch(ctx, u)
			s.mu.Lock()
			if err != nil {
				s.report(u, quantix.UpgradeFailed, err.Error())
				break
			}
			// Staged: the other slot holds the release as the next boot's trial.
			other := &s.os.Slots.Slots[1]
			if s.os.Slots.Booted == quantix.SlotB {
				other = &s.os.Slots.Slots[0]
			}
			other.Image, other.Version, other.Tries, other.Good = u.Image, u.Version, quantix.SlotMaxTries, false
			s.report(u, quantix.UpgradeStaged, "")
		case u.Activate && s.os.Upgrade.Phase == quantix.UpgradeStaged:
			s.report(u, quantix.UpgradeActivating, "")
			target, rebootAt = u, time.Now().Add(3*tick)
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(tick):
		}
	}
}

// fetch downloads the order's files and checks them against their sha256.
func (s *simNode) fetch(ctx context.Context, u *quantix.DesiredUpgrade) error {
	for _, f := range u.Files {
		var b []byte
		if err := s.do(ctx, http.MethodGet, quantix.PathNodeRelease(s.n.ID, u.Release, f.Name), nil, &b); err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(b)) != f.SizeBytes {
			return fmt.Errorf("%s: got %d bytes sha256 %x, want %d %s", f.Name, len(b), sum, f.SizeBytes, f.SHA256)
		}
	}
	s.mu.Lock()
	s.downloaded++
	s.mu.Unlock()
	return nil
}

// reboot is the trial boot of the staged slot and its verdict (s.mu held).
func (s *simNode) reboot(u *quantix.DesiredUpgrade) {
	sl := s.os.Slots
	from := sl.Booted
	to := quantix.OtherSlot(from)
	s.os.Upgrade = nil // a new boot: the agent starts afresh
	if s.rollback != "" {
		idx := 0
		if to == quantix.SlotB {
			idx = 1
		}
		sl.Slots[idx].Tries = 0
		sl.State, sl.RolledBackFrom, sl.Reason = quantix.SlotRolledBack, to, s.rollback
		return
	}
	for i := range sl.Slots {
		sl.Slots[i].Good = sl.Slots[i].Slot == to
	}
	sl.Booted, sl.State, sl.Next, sl.Order = to, quantix.SlotGood, to, []string{to, from}
	s.os.Version = u.Version
	s.good = time.Now()
}

func (s *simNode) times() (ordered, good time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ordered, s.good
}

func startUpgrade(t *testing.T, v *vdctest.VDC, req quantix.UpgradeRequest) (int, quantix.Upgrade, []byte) {
	t.Helper()
	code, b := call(t, http.MethodPost, v.URL+quantix.PathUpgrades, v.AdminToken, req)
	var u quantix.Upgrade
	if code == http.StatusCreated {
		decodeInto(t, b, &u)
	}
	return code, u, b
}

func waitUpgrade(t *testing.T, v *vdctest.VDC, id string, timeout time.Duration) quantix.Upgrade {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var u quantix.Upgrade
		v.Do(t, http.MethodGet, quantix.PathUpgrade(id), nil, &u, http.StatusOK)
		if u.State != quantix.UpgradeRunning {
			return u
		}
		if time.Now().After(deadline) {
			t.Fatalf("upgrade %s still running after %s: %+v", id, timeout, u)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// upgradeEvents returns a node's "upgrade" history messages.
func upgradeEvents(t *testing.T, v *vdctest.VDC, id string) []string {
	t.Helper()
	var out []string
	for _, e := range v.NodeEvents(t, id) {
		if e.Kind == "upgrade" {
			out = append(out, e.Message)
		}
	}
	return out
}

const upgradeTick = 50 * time.Millisecond

// upgradeVDC starts a vDC trusting key; a second vDC on the same database gets
// the first one's admin token (the cluster's, kept in the database).
func upgradeVDC(t *testing.T, key vdctest.ReleaseKey, dbURL string, adminToken ...string) *vdctest.VDC {
	tok := ""
	if len(adminToken) > 0 {
		tok = adminToken[0]
	}
	return vdctest.Start(t, vdctest.Options{DatabaseURL: dbURL, AdminToken: tok, TrustedKeysFiles: []string{key.Pub}, Version: "2.0.0",
		HeartbeatInterval: time.Second, UpgradeNodeTimeout: 20 * time.Second, JoinTokens: []string{"upgrade-join-token-0123456789"}})
}

func runSims(t *testing.T, sims ...*simNode) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range sims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx, t, upgradeTick)
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func TestRollingUpgrade(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "release-test")
	v := upgradeVDC(t, key, vdctest.Shared(t).NewDatabase(t))
	n1, n2 := newSimNode(t, v, "up-1", "1.0.0"), newSimNode(t, v, "up-2", "1.0.0")
	runSims(t, n1, n2)
	rel := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 32<<10))
	// Until the nodes' first heartbeats with their OS, they are refused.
	deadline := time.Now().Add(10 * time.Second)
	for v.Node(t, n2.n.ID).OS == nil || v.Node(t, n1.n.ID).OS == nil {
		if time.Now().After(deadline) {
			t.Fatal("the nodes' OS never showed on GET node")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, u, b := startUpgrade(t, v, quantix.UpgradeRequest{Release: rel.ID, Nodes: []string{"up-1", n2.n.ID}})
	if code != http.StatusCreated {
		t.Fatalf("start upgrade: %d %s", code, b)
	}
	u = waitUpgrade(t, v, u.ID, 30*time.Second)
	if u.State != quantix.UpgradeSucceeded || len(u.Nodes) != 2 || u.Nodes[0].Phase != quantix.UpgradeNodeDone || u.Nodes[1].Phase != quantix.UpgradeNodeDone {
		t.Fatalf("upgrade = %+v, want succeeded with both nodes done", u)
	}
	ord1, good1 := n1.times()
	ord2, good2 := n2.times()
	if ord1.IsZero() || good1.IsZero() || ord2.IsZero() || good2.IsZero() {
		t.Fatalf("node 1 ordered %v good %v, node 2 ordered %v good %v: want all set", ord1, good1, ord2, good2)
	}
	if !ord2.After(good1) {
		t.Errorf("node 2 got its order at %v, before node 1 ran the release with its slot good (%v)", ord2, good1)
	}
	for _, s := range []*simNode{n1, n2} {
		n := v.Node(t, s.n.ID)
		if n.OS == nil || n.OS.Version != "1.1.0" || n.OS.Slots == nil || n.OS.Slots.Booted != quantix.SlotB {
			t.Errorf("node %s OS = %+v, want 1.1.0 from slot b", s.n.Hostname, n.OS)
		}
		evs := upgradeEvents(t, v, s.n.ID)
		want := []string{"staging (from 1.0.0)", "staged; activating", "done: runs 1.1.0 from slot b"}
		if len(evs) != len(want) {
			t.Fatalf("node %s upgrade events = %q, want %d: %q", s.n.Hostname, evs, len(want), want)
		}
		for i := range want {
			if !strings.Contains(evs[i], want[i]) || !strings.Contains(evs[i], u.ID) {
				t.Errorf("node %s upgrade event %d = %q, want it to name %s and %q", s.n.Hostname, i, evs[i], u.ID, want[i])
			}
		}
		if d := desired(t, v, s.n, ""); d.Upgrade != nil {
			t.Errorf("node %s still has a DesiredUpgrade after the upgrade: %+v", s.n.Hostname, d.Upgrade)
		}
	}

	// The next release: node 1 falls back to 1.1.0, which stops the upgrade
	// before node 2.
	n1.mu.Lock()
	n1.rollback = "health gate network: no address on the management bridge"
	n1.mu.Unlock()
	rel2 := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.2.0", 32<<10))
	code, u2, b := startUpgrade(t, v, quantix.UpgradeRequest{Release: "quantix-os-1.2.0", Nodes: []string{"up-1", "up-2"}})
	if code != http.StatusCreated {
		t.Fatalf("start the second upgrade: %d %s", code, b)
	}
	if code, b := call(t, http.MethodDelete, v.URL+quantix.PathRelease(rel2.ID), v.AdminToken, nil); code != http.StatusConflict {
		t.Errorf("delete the release of a running upgrade: %d %s, want 409", code, b)
	}
	u2 = waitUpgrade(t, v, u2.ID, 30*time.Second)
	if u2.State != quantix.UpgradeFailed || !strings.Contains(u2.Reason, "up-1") || !strings.Contains(u2.Reason, "rolled back to 1.1.0") ||
		!strings.Contains(u2.Reason, "no address on the management bridge") {
		t.Fatalf("second upgrade = %+v, want failed naming up-1, the rollback and its reason", u2)
	}
	if u2.Nodes[0].Phase != quantix.UpgradeNodeFailed || u2.Nodes[1].Phase != quantix.UpgradeNodePending {
		t.Errorf("second upgrade nodes = %+v, want up-1 failed and up-2 pending", u2.Nodes)
	}
	time.Sleep(5 * upgradeTick)
	n2.mu.Lock()
	got2 := n2.downloaded
	n2.mu.Unlock()
	if got2 != 1 {
		t.Errorf("node 2 downloaded %d releases, want 1 (the first upgrade's only)", got2)
	}
	if evs := upgradeEvents(t, v, n2.n.ID); len(evs) != 3 {
		t.Errorf("node 2 upgrade events after the failed upgrade = %q, want the first upgrade's 3 only", evs)
	}
	if d := desired(t, v, n1.n, ""); d.Upgrade != nil {
		t.Errorf("node 1 keeps a DesiredUpgrade after the failure: %+v", d.Upgrade)
	}
	v.Do(t, http.MethodDelete, quantix.PathRelease(rel2.ID), nil, nil, http.StatusNoContent)
}

func TestUpgradeRefusals(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "release-test")
	v := upgradeVDC(t, key, vdctest.Shared(t).NewDatabase(t))
	ok := newSimNode(t, v, "ok-node", "1.0.0")
	live := newSimNode(t, v, "live-node", "1.0.0")
	live.os.Slots = nil
	current := newSimNode(t, v, "current-node", "1.1.0")
	for _, s := range []*simNode{ok, live, current} {
		if code, _, b := heartbeat(t, v, s.n, quantix.HeartbeatRequest{OS: &s.os}); code != http.StatusOK {
			t.Fatalf("heartbeat %s: %d %s", s.n.Hostname, code, b)
		}
	}
	silent := newNode("no-os-node")
	mustRegister(t, v, silent, v.JoinToken, http.StatusCreated, quantix.RegistrationRegistered)
	rel := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 1024))
	newer := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "2.1.0", 1024))
	vdcRel := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQvDC, "1.1.0", 1024))

	for _, c := range []struct {
		name string
		req  quantix.UpgradeRequest
		code int
		want []string
	}{
		{"version skew", quantix.UpgradeRequest{Release: newer.ID, Nodes: []string{"ok-node"}}, http.StatusUnprocessableEntity,
			[]string{"2.1.0 is newer than this vDC's 2.0.0"}},
		{"qvdc bundle", quantix.UpgradeRequest{Release: vdcRel.ID, Nodes: []string{"ok-node"}}, http.StatusUnprocessableEntity,
			[]string{"qvdc 1.1.0 bundle: nodes run quantix-os"}},
		{"each node's reason", quantix.UpgradeRequest{Release: rel.ID, All: true}, http.StatusUnprocessableEntity,
			[]string{"node live-node: runs 1.0.0 from a live boot", "node no-os-node: has not reported its operating system"}},
		{"unknown node", quantix.UpgradeRequest{Release: rel.ID, Nodes: []string{"ok-node", "nowhere"}}, http.StatusUnprocessableEntity,
			[]string{"node nowhere: not registered"}},
		{"all on the version", quantix.UpgradeRequest{Release: rel.ID, Nodes: []string{"current-node"}}, http.StatusConflict,
			[]string{"runs quantix-os 1.1.0 already"}},
		{"no nodes", quantix.UpgradeRequest{Release: rel.ID}, http.StatusBadRequest, []string{"nodes"}},
		{"unknown release", quantix.UpgradeRequest{Release: "quantix-os-9.9.9", All: true}, http.StatusNotFound, []string{"quantix-os-9.9.9"}},
	} {
		code, _, b := startUpgrade(t, v, c.req)
		if code != c.code {
			t.Errorf("%s: %d %s, want %d", c.name, code, b, c.code)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s: %s, want it to say %q", c.name, b, w)
			}
		}
	}
	var l quantix.UpgradeList
	v.Do(t, http.MethodGet, quantix.PathUpgrades, nil, &l, http.StatusOK)
	if len(l.Upgrades) != 0 {
		t.Fatalf("refused requests stored upgrades: %+v", l.Upgrades)
	}

	// A node on the version is skipped; one upgrade at a time; cancel.
	code, u, b := startUpgrade(t, v, quantix.UpgradeRequest{Release: rel.ID, Nodes: []string{"current-node", "ok-node"}})
	if code != http.StatusCreated || u.Nodes[0].Phase != quantix.UpgradeNodeSkipped || u.Nodes[1].Phase != quantix.UpgradeNodePending {
		t.Fatalf("start with a node on the version: %d %s, want 201 with current-node skipped", code, b)
	}
	if code, _, b := startUpgrade(t, v, quantix.UpgradeRequest{Release: rel.ID, Nodes: []string{"ok-node"}}); code != http.StatusConflict ||
		!strings.Contains(string(b), u.ID+" is running") {
		t.Errorf("second upgrade while one runs: %d %s, want 409 naming %s", code, b, u.ID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for desired(t, v, ok.n, "").Upgrade == nil {
		if time.Now().After(deadline) {
			t.Fatal("ok-node never got its DesiredUpgrade")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var c quantix.Upgrade
	v.Do(t, http.MethodPost, quantix.PathUpgrade(u.ID)+"/cancel", nil, &c, http.StatusOK)
	if c.State != quantix.UpgradeCancelled || c.Nodes[1].Phase != quantix.UpgradeNodeCancelled {
		t.Fatalf("cancelled upgrade = %+v", c)
	}
	if d := desired(t, v, ok.n, ""); d.Upgrade != nil {
		t.Fatalf("ok-node keeps its DesiredUpgrade after the cancel: %+v", d.Upgrade)
	}
	v.Do(t, http.MethodPost, quantix.PathUpgrade(u.ID)+"/cancel", nil, nil, http.StatusConflict)
}

// TestUpgradeTwoVDCs drives one upgrade with two vDCs on one database, the nodes
// talking to both: every step is taken once (one event each).
func TestUpgradeTwoVDCs(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "release-test")
	db := vdctest.Shared(t).NewDatabase(t)
	a := upgradeVDC(t, key, db)
	b := upgradeVDC(t, key, db, a.AdminToken)
	n1, n2 := newSimNode(t, a, "ha-up-1", "1.0.0"), newSimNode(t, a, "ha-up-2", "1.0.0")
	n2.v = b // node 2 talks to the other vDC
	runSims(t, n1, n2)
	dir := vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 32<<10)
	rel := mustUpload(t, b, dir)
	// Each vDC keeps release files in its own data_dir: the vDC without them
	// says so, and the same bundle uploaded there too is the same release.
	if code, body := call(t, http.MethodGet, a.AgentURL+quantix.PathNodeRelease(n1.n.ID, rel.ID, quantix.BundleSums), n1.n.Secret, nil); code != http.StatusServiceUnavailable ||
		!strings.Contains(string(body), "upload the bundle to this vDC too") {
		t.Errorf("download from the vDC without the files: %d %s, want 503 saying what to do", code, body)
	}
	if code, body := uploadBundle(t, a, dir); code != http.StatusOK || !strings.Contains(string(body), rel.ID) {
		t.Fatalf("upload of the same bundle to the other vDC: %d %s, want 200 with release %s", code, body, rel.ID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Node(t, n1.n.ID).OS == nil || a.Node(t, n2.n.ID).OS == nil {
		if time.Now().After(deadline) {
			t.Fatal("the nodes' OS never showed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, u, body := startUpgrade(t, a, quantix.UpgradeRequest{Release: rel.ID, All: true})
	if code != http.StatusCreated {
		t.Fatalf("start: %d %s", code, body)
	}
	if u = waitUpgrade(t, b, u.ID, 30*time.Second); u.State != quantix.UpgradeSucceeded {
		t.Fatalf("upgrade = %+v, want succeeded", u)
	}
	for _, s := range []*simNode{n1, n2} {
		if evs := upgradeEvents(t, a, s.n.ID); len(evs) != 3 {
			t.Errorf("node %s upgrade events = %q, want 3 (each step once)", s.n.Hostname, evs)
		}
	}
}

// TestHeartbeatOS checks that a node's OS shows once its heartbeat carries it, that
// a change is written and recorded, and that a vDC whose idea of the stored OS is
// stale (another vDC wrote a newer one) catches up on the next heartbeat.
func TestHeartbeatOS(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "release-test")
	db := vdctest.Shared(t).NewDatabase(t)
	a := upgradeVDC(t, key, db)
	b := upgradeVDC(t, key, db, a.AdminToken)
	s := newSimNode(t, a, "os-node", "1.0.0")
	os1 := s.os
	os2 := os1
	os2.Version = "1.1.0"
	for i, step := range []struct {
		v  *vdctest.VDC
		os quantix.NodeOS
	}{{a, os1}, {a, os1}, {b, os2}, {a, os1}, {a, os1}} {
		if code, _, body := heartbeat(t, step.v, s.n, quantix.HeartbeatRequest{OS: &step.os}); code != http.StatusOK {
			t.Fatalf("heartbeat %d: %d %s", i, code, body)
		}
	}
	n := a.Node(t, s.n.ID)
	if n.OS == nil || n.OS.Version != "1.0.0" || n.OS.Slots == nil || n.OS.Slots.Booted != "a" {
		t.Fatalf("node OS = %+v, want 1.0.0 from slot a (the last heartbeats)", n.OS)
	}
	var osEvents []string
	for _, e := range a.NodeEvents(t, s.n.ID) {
		if e.Kind == "os" {
			osEvents = append(osEvents, e.Message)
		}
	}
	if len(osEvents) != 2 || !strings.Contains(osEvents[0], "1.0.0 -> 1.1.0") || !strings.Contains(osEvents[1], "1.1.0 -> 1.0.0") {
		t.Errorf("os events = %q, want 1.0.0 -> 1.1.0 and back", osEvents)
	}
	if code, _, body := heartbeat(t, a, s.n, quantix.HeartbeatRequest{OS: &quantix.NodeOS{Image: "quantix-os"}}); code != http.StatusBadRequest {
		t.Errorf("heartbeat with an OS without version: %d %s, want 400", code, body)
	}
}

// TestUpgradeStageOnly stages a release on every node without rebooting any:
// each node is done once staged and keeps running its version.
func TestUpgradeStageOnly(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "release-test")
	v := upgradeVDC(t, key, vdctest.Shared(t).NewDatabase(t))
	n1, n2 := newSimNode(t, v, "stage-1", "1.0.0"), newSimNode(t, v, "stage-2", "1.0.0")
	runSims(t, n1, n2)
	rel := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 8<<10))
	deadline := time.Now().Add(10 * time.Second)
	for v.Node(t, n1.n.ID).OS == nil || v.Node(t, n2.n.ID).OS == nil {
		if time.Now().After(deadline) {
			t.Fatal("the nodes' OS never showed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	off := false
	code, u, b := startUpgrade(t, v, quantix.UpgradeRequest{Release: rel.ID, All: true, Activate: &off})
	if code != http.StatusCreated || u.Activate {
		t.Fatalf("start stage-only: %d %s", code, b)
	}
	if u = waitUpgrade(t, v, u.ID, 30*time.Second); u.State != quantix.UpgradeSucceeded {
		t.Fatalf("stage-only upgrade = %+v, want succeeded", u)
	}
	for _, s := range []*simNode{n1, n2} {
		if n := v.Node(t, s.n.ID); n.OS.Version != "1.0.0" || n.OS.Slots.Slots[1].Version != "1.1.0" {
			t.Errorf("node %s OS = %+v, want 1.0.0 running and 1.1.0 staged in slot b", s.n.Hostname, n.OS)
		}
		if evs := upgradeEvents(t, v, s.n.ID); len(evs) != 2 || !strings.Contains(evs[1], "not activated") {
			t.Errorf("node %s upgrade events = %q, want staging and staged, not activated", s.n.Hostname, evs)
		}
	}
}
