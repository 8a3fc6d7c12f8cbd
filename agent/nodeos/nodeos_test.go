package nodeos_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/nodeos"
	"github.com/quantix/quantix/agent/vms"
	"github.com/quantix/quantix/services/initd/inittest"
)

const (
	testNode   = "node-1"
	testSecret = "node-secret"
	release    = "rel-2"
	iso        = quantix.ImageQuantixOS + ".iso"
)

// releaseServer serves release files the way the vDC does (node secret, Range
// through http.ServeContent) and records the requests. The vDC's own endpoint
// is written in parallel (vdc/api); this stands in for it.
type releaseServer struct {
	url string

	mu    sync.Mutex
	files map[string][]byte // name -> bytes
	// breakAfter, when > 0, makes the next download of a file larger than that
	// end its body after that many bytes, as a connection that breaks.
	breakAfter int64
	requests   []string // "name range"
}

func newReleaseServer(t *testing.T) *releaseServer {
	s := &releaseServer{files: map[string][]byte{}}
	h := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutPrefix(r.URL.Path, quantix.PathNodeRelease(testNode, release, ""))
		if r.Header.Get("Authorization") != "Bearer "+testSecret {
			http.Error(w, `{"error":"bad node secret"}`, http.StatusUnauthorized)
			return
		}
		s.mu.Lock()
		s.requests = append(s.requests, name+" "+r.Header.Get("Range"))
		b, found := s.files[name]
		cut := s.breakAfter
		if cut >= int64(len(b)) {
			cut = 0 // a small file: the break is for the ISO
		} else {
			s.breakAfter = 0
		}
		s.mu.Unlock()
		if !ok || !found {
			http.Error(w, `{"error":"no such release file"}`, http.StatusNotFound)
			return
		}
		if cut > 0 {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(h.Close)
	s.url = h.URL
	return s
}

func (s *releaseServer) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// lab is one node: QUANTIX-DATA in a temp folder (a mount table says it is a
// disk), a boot id, init's real control socket with 1.0.0 installed in slot a,
// and the vDC's files of a real signed release 2.0.0.
type lab struct {
	t      *testing.T
	data   string
	mounts string
	bootID string
	init   *inittest.Init
	srv    *releaseServer
	ch     *vms.Channel
	order  quantix.DesiredUpgrade
	iso    []byte
}

// labOptions: a live boot; a bundle signed by a key the image does not trust,
// of another image or version than quantix-os 2.0.0.
type labOptions struct {
	live, untrusted bool
	image, version  string
}

func newLab(t *testing.T) *lab { return newLabWith(t, labOptions{}) }

func newLabWith(t *testing.T, o labOptions) *lab {
	l := &lab{t: t, data: t.TempDir(), srv: newReleaseServer(t)}
	l.init = inittest.Start(t, inittest.Options{Version: "1.0.0", DataDir: l.data, Live: o.live})
	l.mounts = filepath.Join(t.TempDir(), "mountinfo")
	l.setMount("ext4", "/dev/vdb1")
	l.bootID = filepath.Join(t.TempDir(), "boot_id")
	l.reboot()
	l.ch = vms.NewChannel(func() string { return l.srv.url }, &http.Client{}, 5*time.Second)
	l.ch.SetNode(testNode, testSecret)
	if o.image == "" {
		o.image, o.version = quantix.ImageQuantixOS, "2.0.0"
	}
	bundle := l.init.Bundle(o.image, o.version, 3<<20, !o.untrusted)
	l.order = quantix.DesiredUpgrade{Upgrade: "up-1", Release: release, Image: o.image, Version: o.version}
	l.srv.files, l.order.Files = inittest.ReleaseFiles(t, bundle)
	l.iso = l.srv.files[o.image+".iso"]
	if len(l.iso) < 2<<20 {
		t.Fatalf("bundle %s has no ISO of some MiB", bundle)
	}
	return l
}

// stagedDirs are the folders init was asked to stage.
func (l *lab) stagedDirs() []string {
	var out []string
	for _, r := range l.init.Requests() {
		if d, ok := strings.CutPrefix(r, quantix.InitRequestStage+" "); ok {
			out = append(out, d)
		}
	}
	return out
}

func (l *lab) setMount(fstype, source string) {
	line := fmt.Sprintf("36 35 98:0 / %s rw,noatime - %s %s rw\n", l.data, fstype, source)
	if err := os.WriteFile(l.mounts, []byte(line), 0o644); err != nil {
		l.t.Fatal(err)
	}
}

// reboot gives the node a new boot id (the reboot itself is faked).
func (l *lab) reboot() {
	if err := os.WriteFile(l.bootID, []byte(fmt.Sprintf("boot-%d\n", time.Now().UnixNano())), 0o644); err != nil {
		l.t.Fatal(err)
	}
}

type running struct {
	u      *nodeos.Upgrader
	cancel context.CancelFunc
	done   chan error
}

// start runs an Upgrader of a node running version, as a new agent process does.
func (l *lab) start(version string) *running {
	return l.startWith(version, l.init.Client())
}

func (l *lab) startWith(version string, init quantix.InitClient) *running {
	l.t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	u, err := nodeos.New(nodeos.Config{Fetcher: l.ch, Init: init, Image: quantix.ImageQuantixOS, Version: version,
		DataDir: l.data, MountInfo: l.mounts, BootID: l.bootID, RetryEvery: 50 * time.Millisecond, TrialPoll: 50 * time.Millisecond}, log)
	if err != nil {
		l.t.Fatalf("nodeos.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{u: u, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- u.Run(ctx) }()
	l.t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	<-r.done
}

// waitPhase waits until the upgrade reported is in phase (and its error holds
// errText) and returns the OS reported.
func waitPhase(t *testing.T, r *running, phase, errText string) *quantix.NodeOS {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		os := r.u.OS()
		if p := os.Upgrade; p != nil && p.Phase == phase && strings.Contains(p.Error, errText) {
			return os
		}
		if time.Now().After(deadline) {
			t.Fatalf("upgrade not in phase %s with error %q within 15 s: OS %+v, upgrade %+v", phase, errText, os, os.Upgrade)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settle lets an Upgrader work on for a while (its retries are 50 ms apart).
func settle() { time.Sleep(400 * time.Millisecond) }

func bundleFiles(t *testing.T, l *lab) []string {
	t.Helper()
	var out []string
	filepath.Walk(filepath.Join(l.data, nodeos.BundlesDir), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, strings.TrimPrefix(p, l.data+"/"))
		}
		return nil
	})
	return out
}

// TestStageWithoutActivate: the order's files are downloaded into the bundle
// folder, init stages that folder and the node reports staged, the running
// version and its slots; it does not reboot without Activate.
func TestStageWithoutActivate(t *testing.T) {
	l := newLab(t)
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	os := waitPhase(t, r, quantix.UpgradeStaged, "")
	if os.Image != quantix.ImageQuantixOS || os.Version != "1.0.0" || os.Slots == nil || os.Slots.Next != "b" || os.Slots.Slots[1].Version != "2.0.0" {
		t.Errorf("OS = %+v (slots %+v), want quantix-os 1.0.0 with 2.0.0 in slot b next", os, os.Slots)
	}
	want := filepath.Join(l.data, nodeos.BundlesDir, release)
	if got := l.stagedDirs(); len(got) != 1 || got[0] != want {
		t.Errorf("init staged %q, want once %s", got, want)
	}
	settle()
	if n := l.init.Count(string(quantix.Reboot)); n != 0 {
		t.Errorf("%d reboot requests without Activate", n)
	}
	// A new order drops the old bundle.
	next := l.order
	next.Upgrade, next.Release = "up-2", "rel-3"
	r.u.Want(&next)
	waitPhase(t, r, quantix.UpgradeDownloading, "404")
	if got := bundleFiles(t, l); len(got) != 0 {
		t.Errorf("after a new order the bundle folder holds %q, want the old bundle gone", got)
	}
}

// TestSHA256MismatchRefused: bytes that do not match the order's sha256 are
// refused, nothing is staged and nothing is left; the order is not fetched
// again and again.
func TestSHA256MismatchRefused(t *testing.T) {
	l := newLab(t)
	l.srv.files[iso] = append([]byte("X"), l.iso[1:]...)
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	waitPhase(t, r, quantix.UpgradeFailed, "release rel-2 file "+iso+": sha256 mismatch")
	settle()
	if got := l.stagedDirs(); len(got) != 0 {
		t.Errorf("init was asked to stage %q", got)
	}
	if got := bundleFiles(t, l); len(got) != 0 {
		t.Errorf("a refused download left %q", got)
	}
	n := len(l.srv.Requests())
	r.stop()
	r = l.start("1.0.0")
	r.u.Want(&l.order)
	waitPhase(t, r, quantix.UpgradeFailed, "sha256 mismatch")
	settle()
	if got := l.srv.Requests(); len(got) != n {
		t.Errorf("after a restart the failed order was fetched again: requests %q", got[n:])
	}
}

// TestResumeAfterRestart: a download that broke off leaves its part file; the
// next agent continues it with a Range request and stages the complete, checked
// bundle.
func TestResumeAfterRestart(t *testing.T) {
	l := newLab(t)
	l.srv.breakAfter = 1 << 20
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	waitPhase(t, r, quantix.UpgradeDownloading, "broke off")
	r.stop()
	part := filepath.Join(l.data, nodeos.BundlesDir, release, "."+iso+".part")
	fi, err := os.Stat(part)
	if err != nil || fi.Size() == 0 || fi.Size() >= int64(len(l.iso)) {
		t.Fatalf("part file after the break: %v, %v; want a part of the ISO", fi, err)
	}
	have := fi.Size()

	r = l.start("1.0.0")
	r.u.Want(&l.order)
	waitPhase(t, r, quantix.UpgradeStaged, "")
	ranged := false
	for _, q := range l.srv.Requests() {
		ranged = ranged || q == fmt.Sprintf("%s bytes=%d-", iso, have)
	}
	if !ranged {
		t.Errorf("requests %q: want one resuming at byte %d", l.srv.Requests(), have)
	}
	b, err := os.ReadFile(filepath.Join(l.data, nodeos.BundlesDir, release, iso))
	if err != nil || !bytes.Equal(b, l.iso) {
		t.Errorf("the resumed ISO is not the release's bytes (%d bytes, %v)", len(b), err)
	}
	if _, err := os.Stat(part); !os.IsNotExist(err) {
		t.Errorf("the part file is still there: %v", err)
	}
}

// TestRestartsOverDamagedPart: a part file whose bytes are not the start of the
// file (a disk problem, another release) does not fail the order: it is fetched
// whole once more.
func TestRestartsOverDamagedPart(t *testing.T) {
	l := newLab(t)
	dir := filepath.Join(l.data, nodeos.BundlesDir, release)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "."+iso+".part"), []byte("not the iso"), 0o600)
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	waitPhase(t, r, quantix.UpgradeStaged, "")
}

// TestActivateAndRollback: with Activate the node reports activating and asks
// init to reboot only once a heartbeat saying so was acknowledged. Back on the
// old version after a rollback it reports failed with init's reason and does not
// download, stage or reboot again, also after another restart, until the order
// is cleared.
func TestActivateAndRollback(t *testing.T) {
	l := newLab(t)
	l.order.Activate = true
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	os1 := waitPhase(t, r, quantix.UpgradeActivating, "")
	settle()
	if n := l.init.Count(string(quantix.Reboot)); n != 0 {
		t.Fatalf("%d reboot requests before the vDC heard of the activation", n)
	}
	r.u.Reported(os1)
	deadline := time.Now().Add(5 * time.Second)
	for l.init.Count(string(quantix.Reboot)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no reboot request after the acknowledged heartbeat: %q", l.init.Requests())
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.stop()

	// The trial of 2.0.0 in slot b failed; the node is back on 1.0.0 in slot a.
	l.reboot()
	l.init.RollBack("1.0.0")
	requests, stages := len(l.srv.Requests()), l.init.Count(quantix.InitRequestStage)
	for range 2 {
		r = l.start("1.0.0")
		os2 := waitPhase(t, r, quantix.UpgradeFailed, "the trial of slot b (2.0.0) ended without a verdict on each of its 3 tries")
		r.u.Want(&l.order)
		r.u.Reported(os2)
		settle()
		waitPhase(t, r, quantix.UpgradeFailed, "rolled back to 1.0.0 in slot a: the trial of 2.0.0 in slot b failed: the trial of slot b")
		if os2.Slots == nil || os2.Slots.State != quantix.SlotRolledBack {
			t.Errorf("slots reported %+v, want rolled-back", os2.Slots)
		}
		r.stop()
	}
	if got := l.srv.Requests(); len(got) != requests {
		t.Errorf("the rolled-back order was downloaded again: %q", got[requests:])
	}
	if n := l.init.Count(quantix.InitRequestStage); n != stages {
		t.Errorf("the rolled-back order was staged again (%d stage requests, %d before)", n, stages)
	}
	if n := l.init.Count(string(quantix.Reboot)); n != 1 {
		t.Errorf("%d reboot requests, want the one of the activation", n)
	}

	r = l.start("1.0.0")
	waitPhase(t, r, quantix.UpgradeFailed, "rolled back")
	r.u.Want(nil)
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err := os.Stat(filepath.Join(l.data, nodeos.StateFile))
		if r.u.OS().Upgrade == nil && os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cleared order is still reported (%+v) or its state kept (%v)", r.u.OS().Upgrade, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := bundleFiles(t, l); len(got) != 0 {
		t.Errorf("a cleared order left %q", got)
	}
}

// TestActivateCommits: after the reboot into the new version the node reports it;
// once init committed the trial the bundle is removed, and the order is not done
// again.
func TestActivateCommits(t *testing.T) {
	l := newLab(t)
	l.order.Activate = true
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	r.u.Reported(waitPhase(t, r, quantix.UpgradeActivating, ""))
	for l.init.Count(string(quantix.Reboot)) != 1 {
		time.Sleep(10 * time.Millisecond)
	}
	r.stop()
	l.reboot()
	l.init.Boot("2.0.0")
	r = l.start("2.0.0")
	r.u.Want(&l.order)
	os := waitPhase(t, r, quantix.UpgradeActivating, "")
	if os.Version != "2.0.0" || os.Slots == nil || os.Slots.Booted != "b" || !os.Slots.Trial {
		t.Errorf("after the reboot OS = %+v, slots %+v", os, os.Slots)
	}
	if got := bundleFiles(t, l); len(got) == 0 {
		t.Errorf("the bundle was removed before the trial was committed")
	}
	l.init.Commit()
	deadline := time.Now().Add(5 * time.Second)
	for len(bundleFiles(t, l)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the bundle is kept after the commit: %q", bundleFiles(t, l))
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.u.Reported(r.u.OS())
	settle()
	if n, s := l.init.Count(string(quantix.Reboot)), len(l.stagedDirs()); n != 1 || s != 1 {
		t.Errorf("after the commit: %d reboot and %d stage requests, want 1 and 1", n, s)
	}
}

// TestLiveBoot: init says the node is not an A/B install: the slots are reported
// as none, asked once, and an order fails at once with the reason.
func TestLiveBoot(t *testing.T) {
	l := newLabWith(t, labOptions{live: true})
	r := l.start("1.0.0")
	r.u.Want(&l.order)
	os := waitPhase(t, r, quantix.UpgradeFailed, "this node is not an A/B install (init: slots: not booted from an installed A/B disk (a live boot)")
	if os.Slots != nil || os.Version != "1.0.0" {
		t.Errorf("OS = %+v, slots %+v; want version 1.0.0 and no slots", os, os.Slots)
	}
	settle()
	if n := l.init.Count(quantix.InitRequestSlots); n != 1 {
		t.Errorf("init was asked for the slots %d times, want once", n)
	}
	if got := l.srv.Requests(); len(got) != 0 {
		t.Errorf("a live boot downloaded %q", got)
	}
}

// TestInitLate: while init does not answer (its socket is not there yet) an
// order waits, neither failed nor downloaded, and the slots are asked again
// until init answers; then the order goes on.
func TestInitLate(t *testing.T) {
	l := newLab(t)
	sock := filepath.Join(filepath.Dir(l.init.Socket), "late.sock")
	r := l.startWith("1.0.0", quantix.InitClient{Socket: sock})
	r.u.Want(&l.order)
	settle()
	if os := r.u.OS(); os.Slots != nil || os.Upgrade != nil {
		t.Errorf("without init: OS %+v, upgrade %+v; want no slots and no progress yet", os, os.Upgrade)
	}
	if got := l.srv.Requests(); len(got) != 0 {
		t.Errorf("downloaded %q before init answered", got)
	}
	if err := os.Symlink(l.init.Socket, sock); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, r, quantix.UpgradeStaged, "")
}

// TestRefusals: an order the node cannot take reports why, and nothing is
// downloaded, or nothing is staged.
func TestRefusals(t *testing.T) {
	t.Run("QUANTIX-DATA in RAM", func(t *testing.T) {
		l := newLab(t)
		l.setMount("tmpfs", "tmpfs")
		r := l.start("1.0.0")
		r.u.Want(&l.order)
		waitPhase(t, r, quantix.UpgradeFailed, l.data+" is not a persistent filesystem (tmpfs on \"tmpfs\")")
		if got := l.srv.Requests(); len(got) != 0 {
			t.Errorf("downloaded %q onto RAM", got)
		}
	})
	t.Run("no space", func(t *testing.T) {
		l := newLab(t)
		l.order.Files[0].SizeBytes = 1 << 60
		r := l.start("1.0.0")
		r.u.Want(&l.order)
		waitPhase(t, r, quantix.UpgradeFailed, "MiB to spare: free space on QUANTIX-DATA")
		if got := l.srv.Requests(); len(got) != 0 {
			t.Errorf("downloaded %q without the space", got)
		}
	})
	for _, tc := range []struct {
		name string
		o    labOptions
		want string
	}{
		{"untrusted key", labOptions{untrusted: true}, "not from a key this image trusts"},
		{"another image", labOptions{image: quantix.ImageQvDC, version: "2.0.0"}, "qvdc"},
		{"older version", labOptions{image: quantix.ImageQuantixOS, version: "0.9.0"}, "0.9.0"},
	} {
		t.Run("init refuses: "+tc.name, func(t *testing.T) {
			l := newLabWith(t, tc.o)
			r := l.start("1.0.0")
			r.u.Want(&l.order)
			p := waitPhase(t, r, quantix.UpgradeFailed, "init refused the bundle: stage "+filepath.Join(l.data, nodeos.BundlesDir, release)+": ").Upgrade
			if !strings.Contains(p.Error, tc.want) {
				t.Errorf("reported %q, want init's refusal saying %q", p.Error, tc.want)
			}
			t.Logf("reported: %s", p.Error)
			r.u.Want(&l.order)
			settle()
			if n := l.init.Count(quantix.InitRequestStage); n != 1 {
				t.Errorf("%d stage requests, want 1", n)
			}
			if st, err := l.init.Client().Slots(context.Background()); err != nil || st.Next != "a" {
				t.Errorf("slots after a refusal = %+v, %v; want nothing staged", st, err)
			}
		})
	}
}
