package vms_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/hypervisor"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
	"github.com/quantix/quantix/agent/vms"
	"github.com/quantix/quantix/tests/guest"
	"github.com/quantix/quantix/tests/syncbuf"
)

const (
	testNode   = "node-a"
	testSecret = "s3cret"
)

// desiredServer is the vDC's side of the agent channel as vms.go describes it:
// PathDesired with its long-poll, PathNodeImage and PathNodeConsole, for one node.
type desiredServer struct {
	mu       sync.Mutex
	d        quantix.NodeDesired
	wake     chan struct{} // closed when d changes
	images   map[string][]byte
	consoles map[string][]byte
	down     bool // the vDC is away: every request gets 503
	waiting  int  // long-polls being held
	noWait   bool // answer long-polls at once, as a vDC without long-poll support
	fetches  int  // desired requests
}

func newDesiredServer(t *testing.T) (*desiredServer, *httptest.Server) {
	s := &desiredServer{wake: make(chan struct{}), images: map[string][]byte{}, consoles: map[string][]byte{}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return s, srv
}

// publish sets the desired state at the next generation and wakes the long-poll
// (quiet: the change is only learnt by a fetch, as from a heartbeat hint).
func (s *desiredServer) publish(vms []quantix.DesiredVM, deleted []quantix.DeletedVM, images []quantix.DesiredImage, quiet bool) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d = quantix.NodeDesired{Generation: s.d.Generation + 1, VMs: vms, Deleted: deleted, Images: images}
	if !quiet {
		close(s.wake)
		s.wake = make(chan struct{})
	}
	return s.d.Generation
}

func (s *desiredServer) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

func (s *desiredServer) console(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.consoles[id])
}

func (s *desiredServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down {
		http.Error(w, `{"error":"vdc unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+testSecret {
		http.Error(w, `{"error":"bad node secret"}`, http.StatusUnauthorized)
		return
	}
	imgPrefix := quantix.PathNodeImage(testNode, "")
	conPrefix := quantix.PathNodes + "/" + testNode + "/vms/"
	switch {
	case r.Method == http.MethodGet && r.URL.Path == quantix.PathDesired(testNode):
		after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
		wait, _ := strconv.Atoi(r.URL.Query().Get("wait"))
		s.mu.Lock()
		d, wake, noWait := s.d, s.wake, s.noWait
		s.fetches++
		s.mu.Unlock()
		if wait > 0 && d.Generation == after && !noWait {
			s.mu.Lock()
			s.waiting++
			s.mu.Unlock()
			defer func() { s.mu.Lock(); s.waiting--; s.mu.Unlock() }()
			select {
			case <-wake:
			case <-time.After(time.Duration(min(wait, quantix.MaxDesiredWait)) * time.Second):
			case <-r.Context().Done():
				return
			}
			s.mu.Lock()
			d = s.d
			s.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, imgPrefix):
		s.mu.Lock()
		b, ok := s.images[strings.TrimPrefix(r.URL.Path, imgPrefix)]
		s.mu.Unlock()
		if !ok {
			http.Error(w, `{"error":"no such image"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, conPrefix) && strings.HasSuffix(r.URL.Path, "/console"):
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, conPrefix), "/console")
		b := make([]byte, quantix.MaxConsoleBytes+1)
		n, _ := readFull(r, b)
		if n > quantix.MaxConsoleBytes {
			http.Error(w, `{"error":"console tail too large"}`, http.StatusRequestEntityTooLarge)
			return
		}
		s.mu.Lock()
		s.consoles[id] = b[:n]
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
	}
}

func readFull(r *http.Request, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Body.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// env is a private libvirtd with a real QEMU driver and a default dir pool, the
// agent's libvirt monitor on it, and the in-test vDC side.
type env struct {
	t        *testing.T
	daemon   *libvirtdtest.Daemon
	mon      *hypervisor.Monitor
	lv       *libvirt.Libvirt // the test's own connection
	srv      *desiredServer
	url      string
	images   string
	consoles string
	pool     string
	marker   string // the reconciler's HaltMarker
	log      *syncbuf.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("runs libvirtd and QEMU")
	}
	if _, err := os.Stat("/usr/bin/qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 missing: run make deps (apt-get install qemu-system-x86)")
	}
	e := &env{t: t, daemon: libvirtdtest.Start(t), log: &syncbuf.Buffer{}, marker: filepath.Join(t.TempDir(), "guests-stopping")}
	e.pool = e.daemon.Dir(t, "pool")
	e.consoles = e.daemon.Dir(t, "consoles")
	e.images = e.daemon.Dir(t, "images")
	e.srv, e.url = func() (*desiredServer, string) { s, h := newDesiredServer(t); return s, h.URL }()
	e.lv = e.connect()
	pool, err := e.lv.StoragePoolDefineXML(fmt.Sprintf(`<pool type="dir"><name>%s</name><target><path>%s</path></target></pool>`, quantix.DefaultPool, e.pool), 0)
	if err != nil {
		t.Fatalf("define pool: %v", err)
	}
	if err := e.lv.StoragePoolCreate(pool, 0); err != nil {
		t.Fatalf("start pool: %v", err)
	}
	mon, err := hypervisor.New(hypervisor.Config{URI: e.daemon.QEMUURI(), MaxBackoff: time.Second}, e.logger("libvirt"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mon.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("agent log:\n%s", e.log)
		}
	})
	e.mon = mon
	e.eventually(30*time.Second, "libvirt connected", func() (bool, string) { return mon.Conn() != nil, mon.Status().Reason })
	return e
}

func (e *env) logger(component string) *slog.Logger {
	return slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", component)
}

type connDialer struct{ c net.Conn }

func (d connDialer) Dial() (net.Conn, error) { return d.c, nil }

func (e *env) connect() *libvirt.Libvirt {
	e.t.Helper()
	c, err := net.Dial("unix", e.daemon.Socket)
	if err != nil {
		e.t.Fatal(err)
	}
	lv := libvirt.NewWithDialer(connDialer{c})
	if err := lv.ConnectToURI("qemu:///session"); err != nil {
		e.t.Fatalf("connect to the test libvirtd: %v", err)
	}
	e.t.Cleanup(func() { lv.Disconnect() })
	return lv
}

// reconciler starts a reconciler (an agent) and returns its stop function.
func (e *env) reconciler(resync time.Duration) (*vms.Reconciler, func()) {
	e.t.Helper()
	ch := vms.NewChannel(func() string { return e.url }, &http.Client{}, 5*time.Second)
	ch.SetNode(testNode, testSecret)
	r, err := vms.New(vms.Config{
		Channel: ch, Libvirt: e.mon.Conn,
		Accelerator: func() string { return e.mon.Status().Accelerator },
		ImagesDir:   e.images, ConsoleDir: e.consoles, HaltMarker: e.marker,
		PollWait: 30 * time.Second, RetryEvery: time.Second, ResyncEvery: resync, ConsoleEvery: 500 * time.Millisecond,
	}, e.logger("vms"))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	return r, stop
}

func (e *env) eventually(d time.Duration, what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %v (%s)", what, d, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitHeld waits until the in-test vDC holds a long-poll of the reconciler.
func (e *env) waitHeld() {
	e.t.Helper()
	e.eventually(5*time.Second, "a long-poll held", func() (bool, string) {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.waiting > 0, ""
	})
}

func (e *env) domain(id string) (libvirt.Domain, libvirt.DomainState, error) {
	dom, err := e.lv.DomainLookupByUUID(libvirt.UUID(uuid.MustParse(id)))
	if err != nil {
		return dom, 0, err
	}
	st, _, err := e.lv.DomainGetState(dom, 0)
	return dom, libvirt.DomainState(st), err
}

func (e *env) waitState(id string, want libvirt.DomainState, d time.Duration) libvirt.Domain {
	e.t.Helper()
	var dom libvirt.Domain
	e.eventually(d, fmt.Sprintf("domain %s in state %d", id, want), func() (bool, string) {
		var st libvirt.DomainState
		var err error
		dom, st, err = e.domain(id)
		return err == nil && st == want, fmt.Sprintf("state %d, err %v", st, err)
	})
	return dom
}

func (e *env) waitApplied(r *vms.Reconciler, gen int64, d time.Duration) {
	e.t.Helper()
	// A tight loop: the notice time is measured with it.
	deadline := time.Now().Add(d)
	for r.Applied() != gen {
		if time.Now().After(deadline) {
			e.t.Fatalf("generation %d applied: not within %v (applied %d, errors %v)", gen, d, r.Applied(), r.Errors())
		}
		time.Sleep(time.Millisecond)
	}
}

// qemuPID is the pid of a running session guest's QEMU (libvirt's pid file).
func (e *env) qemuPID(name string) int {
	e.t.Helper()
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(e.daemon.ConfigHome()), "*", "libvirt", "qemu", "run", name+".pid"))
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
	}
	e.t.Fatalf("no pid file for guest %s", name)
	return 0
}

func (e *env) volumes() []string {
	e.t.Helper()
	pool, err := e.lv.StoragePoolLookupByName(quantix.DefaultPool)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.lv.StoragePoolRefresh(pool, 0); err != nil {
		e.t.Fatal(err)
	}
	vols, _, err := e.lv.StoragePoolListAllVolumes(pool, 1, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
	}
	return names
}

func bootImage(t *testing.T, srv *desiredServer, id, marker string) quantix.DesiredImage {
	t.Helper()
	mbr, err := guest.BootSector(marker)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(mbr)
	srv.mu.Lock()
	srv.images[id] = mbr
	srv.mu.Unlock()
	return quantix.DesiredImage{ID: id, Format: quantix.ImageRaw, SizeBytes: int64(len(mbr)), SHA256: hex.EncodeToString(sum[:])}
}

func tinyVM(id, name, image string) quantix.DesiredVM {
	return quantix.DesiredVM{
		UUID: id, Power: quantix.WantedRunning, Generation: 1,
		Spec: quantix.VMSpec{Name: name, VCPUs: 1, MemoryBytes: 16 << 20,
			Disks:              []quantix.DiskSpec{{ImageID: image, SizeBytes: 1 << 20}},
			StopTimeoutSeconds: 1},
	}
}

// TestReconcileLifecycle drives one TCG guest through the whole contract with a
// real libvirtd: create running (marker on the console, console PUT), idempotent
// re-apply, agent restart (also while the vDC is down) and libvirtd restart
// without a guest restart, a spec change kept for the next start, a domain of
// another node never started, an unmanaged domain and a bad image next to it,
// stop (ACPI ignored by the boot sector: forced after the timeout), start, reboot
// count, delete.
func TestReconcileLifecycle(t *testing.T) {
	e := newEnv(t)
	const marker = "QX-VM-AGENT-MARKER"
	img := bootImage(t, e.srv, "img-boot", marker)
	id := uuid.NewString()
	vm := tinyVM(id, "vm-a", img.ID)

	// An unmanaged domain (no Quantix metadata), defined and stopped.
	unmanaged := uuid.NewString()
	ux, err := guest.DomainXML(guest.Domain{Name: "not-ours", UUID: unmanaged, Disk: filepath.Join(e.pool, "none.img"), Serial: filepath.Join(e.consoles, "not-ours.log")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.lv.DomainDefineXML(ux); err != nil {
		t.Fatalf("define the unmanaged domain: %v", err)
	}
	t.Cleanup(func() {
		if d, err := e.lv.DomainLookupByUUID(libvirt.UUID(uuid.MustParse(unmanaged))); err == nil {
			e.lv.DomainUndefine(d)
		}
	})

	r, stop := e.reconciler(time.Hour)
	t0 := time.Now()
	gen := e.srv.publish([]quantix.DesiredVM{vm}, nil, []quantix.DesiredImage{img}, false)
	dom := e.waitState(id, libvirt.DomainRunning, 60*time.Second)
	running := time.Since(t0)
	consolePath := filepath.Join(e.consoles, id+".log")
	e.eventually(60*time.Second, "marker in the serial log", func() (bool, string) {
		b, _ := os.ReadFile(consolePath)
		return strings.Contains(string(b), marker), string(b)
	})
	atMarker := time.Since(t0)
	e.eventually(10*time.Second, "console PUT with the marker", func() (bool, string) {
		c := e.srv.console(id)
		return strings.Contains(c, marker), c
	})
	t.Logf("create -> domain running %v, -> marker on COM1 %v (TCG)", running.Round(time.Millisecond), atMarker.Round(time.Millisecond))
	e.waitApplied(r, gen, 10*time.Second)
	if auto, _ := e.lv.DomainGetAutostart(dom); auto != 1 {
		t.Errorf("autostart of a running VM = %d, want 1", auto)
	}
	x, _ := e.lv.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	meta, ok, err := vms.ParseMetadata(x)
	if err != nil || !ok || meta.Node != testNode || meta.Generation != 1 {
		t.Errorf("metadata = %+v, %v, %v; want node %s generation 1", meta, ok, err, testNode)
	}
	pid := e.qemuPID("vm-a")

	// Idempotent: the same VMs at a new generation change nothing.
	gen = e.srv.publish([]quantix.DesiredVM{vm}, nil, []quantix.DesiredImage{img}, false)
	e.waitApplied(r, gen, 10*time.Second)
	if d, st, _ := e.domain(id); d.ID != dom.ID || st != libvirt.DomainRunning || e.qemuPID("vm-a") != pid {
		t.Errorf("re-apply touched the guest: id %d -> %d, state %d, pid %d -> %d", dom.ID, d.ID, st, pid, e.qemuPID("vm-a"))
	}
	if n := strings.Count(e.log.String(), "vm started"); n != 1 {
		t.Errorf("%d starts logged, want 1", n)
	}

	// Agent restart: the new reconciler finds the guest as it is.
	stop()
	r, stop = e.reconciler(time.Hour)
	e.waitApplied(r, gen, 10*time.Second)
	if d, st, _ := e.domain(id); d.ID != dom.ID || st != libvirt.DomainRunning || e.qemuPID("vm-a") != pid {
		t.Errorf("agent restart touched the guest: id %d -> %d, state %d, pid %d -> %d", dom.ID, d.ID, st, pid, e.qemuPID("vm-a"))
	}

	// The vDC goes away and the agent restarts meanwhile: nothing is stopped.
	e.srv.setDown(true)
	stop()
	r, stop = e.reconciler(time.Hour)
	time.Sleep(3 * time.Second)
	if d, st, _ := e.domain(id); d.ID != dom.ID || st != libvirt.DomainRunning || e.qemuPID("vm-a") != pid {
		t.Errorf("with the vDC down the guest changed: id %d -> %d, state %d", dom.ID, d.ID, st)
	}
	if !strings.Contains(e.log.String(), "fetching the desired VMs failed; VMs keep their state") {
		t.Errorf("the failing fetch was not logged")
	}
	e.srv.setDown(false)
	e.waitApplied(r, gen, 10*time.Second)

	// A spec change of a running VM is defined for its next start; the guest
	// runs on as it is.
	vm.Generation, vm.Spec.MemoryBytes = 2, 32<<20
	gen = e.srv.publish([]quantix.DesiredVM{vm}, nil, []quantix.DesiredImage{img}, false)
	e.waitApplied(r, gen, 10*time.Second)
	if d, st, _ := e.domain(id); d.ID != dom.ID || st != libvirt.DomainRunning || e.qemuPID("vm-a") != pid {
		t.Errorf("a spec change restarted the guest: id %d -> %d, state %d", dom.ID, d.ID, st)
	}
	x, _ = e.lv.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if !strings.Contains(x, "<memory unit='KiB'>32768</memory>") {
		t.Errorf("the next start's definition does not have the new memory:\n%s", x)
	}
	live, _ := e.lv.DomainGetXMLDesc(dom, 0)
	if !strings.Contains(live, "<memory unit='KiB'>16384</memory>") {
		t.Errorf("the running guest's live definition changed:\n%s", live)
	}

	// A domain whose metadata names another node is never started here.
	other := uuid.NewString()
	ovm := tinyVM(other, "vm-other", img.ID)
	ox, err := vms.DomainXML(ovm, "vm-other", []vms.Disk{{Volume: "none.img", Format: quantix.ImageRaw}}, vms.Metadata{Node: "node-b", Generation: 1}, vms.Layout{Pool: quantix.DefaultPool, ConsoleDir: e.consoles, DomainType: "qemu"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.lv.DomainDefineXML(ox); err != nil {
		t.Fatalf("define node-b's domain: %v", err)
	}
	gen = e.srv.publish([]quantix.DesiredVM{vm, ovm}, nil, []quantix.DesiredImage{img}, false)
	e.waitApplied(r, gen, 10*time.Second)
	if err := r.Errors()[other]; !strings.Contains(err, "belongs to node node-b") {
		t.Errorf("error of node-b's VM = %q, want it refused", err)
	}
	if _, st, _ := e.domain(other); st != libvirt.DomainShutoff {
		t.Errorf("node-b's VM is in state %d, want never started", st)
	}
	if d, err := e.lv.DomainLookupByUUID(libvirt.UUID(uuid.MustParse(other))); err == nil {
		e.lv.DomainUndefine(d)
	}

	// A bad image and the unmanaged domain named for deletion: errors for those
	// two, vm-a untouched.
	bad := bootImage(t, e.srv, "img-bad", "QX-BAD")
	bad.SHA256 = strings.Repeat("0", 64)
	badID := uuid.NewString()
	gen = e.srv.publish([]quantix.DesiredVM{vm, tinyVM(badID, "vm-bad", bad.ID)}, []quantix.DeletedVM{{UUID: unmanaged}}, []quantix.DesiredImage{img, bad}, false)
	e.waitApplied(r, gen, 10*time.Second)
	errs := r.Errors()
	if want := "image img-bad: sha256 mismatch"; !strings.Contains(errs[badID], want) {
		t.Errorf("error of vm-bad = %q, want it to say %q", errs[badID], want)
	}
	if !strings.Contains(errs[unmanaged], "no Quantix metadata") {
		t.Errorf("error of deleting the unmanaged domain = %q, want a refusal", errs[unmanaged])
	}
	if _, _, err := e.domain(badID); err == nil {
		t.Errorf("vm-bad was defined from an image whose sha256 did not match")
	}
	if _, err := os.Stat(filepath.Join(e.images, bad.ID)); err == nil {
		t.Errorf("the mismatching image was kept in the cache")
	}
	if d, st, err := e.domain(unmanaged); err != nil || st != libvirt.DomainShutoff {
		t.Errorf("unmanaged domain: state %d, err %v; want defined and shut off", st, err)
	} else if x, _ := e.lv.DomainGetXMLDesc(d, libvirt.DomainXMLInactive); x != ux && strings.Contains(x, vms.MetadataNS) {
		t.Errorf("the unmanaged domain got Quantix metadata")
	}
	inv := r.Annotate([]quantix.VM{{UUID: id, Name: "vm-a", PowerState: quantix.PowerRunning}})
	if len(inv) != 3 || inv[0].Error+inv[1].Error+inv[2].Error == "" {
		t.Errorf("Annotate = %+v, want vm-a plus the two errors", inv)
	}
	if d, st, _ := e.domain(id); d.ID != dom.ID || st != libvirt.DomainRunning {
		t.Errorf("vm-a changed while other VMs failed: id %d, state %d", d.ID, st)
	}

	// libvirtd restarts: the guest runs on and the reconciler acts through the
	// new connection.
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the guest's QEMU died with libvirtd: %v", err)
	}
	if err := e.daemon.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	e.lv = e.connect()
	if d, st, _ := e.domain(id); d.ID != dom.ID || st != libvirt.DomainRunning || e.qemuPID("vm-a") != pid {
		t.Errorf("after a libvirtd restart: id %d -> %d, state %d", dom.ID, d.ID, st)
	}

	// Stop: the boot sector ignores ACPI, so it is forced off after 1 s.
	vm.Generation, vm.Power = 3, quantix.WantedStopped
	t1 := time.Now()
	gen = e.srv.publish([]quantix.DesiredVM{vm}, nil, []quantix.DesiredImage{img}, false)
	dom = e.waitState(id, libvirt.DomainShutoff, 30*time.Second)
	t.Logf("stop (ACPI ignored, 1 s timeout) -> shut off %v", time.Since(t1).Round(time.Millisecond))
	e.waitApplied(r, gen, 10*time.Second)
	if auto, _ := e.lv.DomainGetAutostart(dom); auto != 0 {
		t.Errorf("autostart of a stopped VM = %d, want 0", auto)
	}
	// The reconciler logs the forced stop after destroy returns, which may be after
	// the test saw the domain shut off.
	for end := time.Now().Add(5 * time.Second); !strings.Contains(e.log.String(), "after_acpi=true"); {
		if time.Now().After(end) {
			t.Errorf("the stop was not an ACPI shutdown forced after the timeout")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Start again, then a reboot: the count is recorded once.
	vm.Generation, vm.Power = 4, quantix.WantedRunning
	gen = e.srv.publish([]quantix.DesiredVM{vm}, nil, []quantix.DesiredImage{img}, false)
	dom = e.waitState(id, libvirt.DomainRunning, 30*time.Second)
	e.waitApplied(r, gen, 10*time.Second)
	vm.Generation, vm.RebootCount = 5, 1
	gen = e.srv.publish([]quantix.DesiredVM{vm}, nil, []quantix.DesiredImage{img}, false)
	e.waitApplied(r, gen, 10*time.Second)
	x, _ = e.lv.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if meta, _, _ := vms.ParseMetadata(x); meta.RebootCount != 1 || meta.Generation != 5 {
		t.Errorf("metadata after the reboot = %+v, want reboot count 1, generation 5", meta)
	}
	stop()
	r, stop = e.reconciler(time.Hour)
	e.waitApplied(r, gen, 10*time.Second)
	if n := strings.Count(e.log.String(), "vm rebooted"); n != 1 {
		t.Errorf("%d reboots logged across an agent restart, want 1", n)
	}

	// Delete: domain and disk gone.
	if vols := e.volumes(); !containsPrefix(vols, id) {
		t.Fatalf("volumes %v hold no disk of %s", vols, id)
	}
	gen = e.srv.publish(nil, []quantix.DeletedVM{{UUID: id}}, nil, false)
	e.waitApplied(r, gen, 20*time.Second)
	if _, _, err := e.domain(id); err == nil {
		t.Errorf("domain %s still defined after the delete", id)
	}
	if vols := e.volumes(); containsPrefix(vols, id) {
		t.Errorf("volumes %v still hold a disk of %s", vols, id)
	}
	if _, _, err := e.domain(unmanaged); err != nil {
		t.Errorf("the unmanaged domain disappeared: %v", err)
	}
}

func containsPrefix(names []string, prefix string) bool {
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			return true
		}
	}
	return false
}

// TestDesiredNotice measures how fast a change at the vDC reaches libvirt through
// the long-poll (no periodic resync), and checks that a heartbeat's desired
// generation fetches a change the long-poll was not woken for.
func TestDesiredNotice(t *testing.T) {
	e := newEnv(t)
	r, _ := e.reconciler(time.Hour)
	e.waitApplied(r, e.srv.publish(nil, nil, nil, false), 10*time.Second)
	var worst, sum time.Duration
	const rounds = 10
	for i := 0; i < rounds; i++ {
		time.Sleep(100 * time.Millisecond) // the next long-poll is open
		e.waitHeld()
		t0 := time.Now()
		e.waitApplied(r, e.srv.publish(nil, nil, nil, false), 5*time.Second)
		d := time.Since(t0)
		sum += d
		worst = max(worst, d)
	}
	t.Logf("vDC change -> applied via the long-poll: mean %v, max %v over %d changes", (sum / rounds).Round(time.Microsecond), worst.Round(time.Microsecond), rounds)
	if worst > 2*time.Second {
		t.Errorf("a change took %v to be applied, want about a second at most", worst)
	}

	// Quiet, once the long-poll is held: only a hint brings the change.
	e.waitHeld()
	gen := e.srv.publish(nil, nil, nil, true)
	time.Sleep(1500 * time.Millisecond)
	if r.Applied() == gen {
		t.Fatalf("a change the long-poll was not woken for was applied without a hint")
	}
	t0 := time.Now()
	r.Notify(gen)
	e.waitApplied(r, gen, 2*time.Second)
	t.Logf("heartbeat hint -> applied %v", time.Since(t0).Round(time.Microsecond))

	// A vDC that answers every long-poll at once is asked about once a second.
	e.srv.mu.Lock()
	e.srv.noWait, e.srv.fetches = true, 0
	close(e.srv.wake) // ends the poll held now
	e.srv.wake = make(chan struct{})
	e.srv.mu.Unlock()
	time.Sleep(3 * time.Second)
	e.srv.mu.Lock()
	n := e.srv.fetches
	e.srv.mu.Unlock()
	if n < 2 || n > 5 {
		t.Errorf("%d fetches in 3 s from a vDC without long-poll, want about 3", n)
	}
}

// TestFirmwareNICsAndPowerOff defines a UEFI guest (libvirt picks OVMF and keeps
// its NVRAM) and a stopped VM with a NIC on the bridge, an ISO as CD-ROM and a
// disk copied from a qcow2 image; powers the host's guests off the way a clean
// host power-off does (ACPI, forced after the timeout, autostart kept); deletes
// both, one keeping its disks.
func TestFirmwareNICsAndPowerOff(t *testing.T) {
	e := newEnv(t)
	r, _ := e.reconciler(time.Hour)
	uefi := uuid.NewString()
	nic := uuid.NewString()
	uvm := quantix.DesiredVM{UUID: uefi, Power: quantix.WantedRunning, Generation: 1,
		Spec: quantix.VMSpec{Name: "vm-uefi", VCPUs: 1, MemoryBytes: 32 << 20, Firmware: quantix.FirmwareUEFI,
			Disks: []quantix.DiskSpec{{SizeBytes: 16 << 20}}, BootOrder: []string{quantix.BootNetwork, quantix.BootDisk}}}
	// vm-nic: stopped, a NIC on the bridge, an ISO as CD-ROM and a disk copied
	// from a qcow2 image and grown.
	qcow := filepath.Join(t.TempDir(), "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", qcow, "8M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s (apt-get install qemu-utils)", err, out)
	}
	qb, err := os.ReadFile(qcow)
	if err != nil {
		t.Fatal(err)
	}
	qsum := sha256.Sum256(qb)
	iso := []byte(strings.Repeat("not really an ISO, but QEMU reads it as one ", 100))
	isum := sha256.Sum256(iso)
	e.srv.mu.Lock()
	e.srv.images["img-qcow"], e.srv.images["img-iso"] = qb, iso
	e.srv.mu.Unlock()
	imgs := []quantix.DesiredImage{
		{ID: "img-qcow", Format: quantix.ImageQCOW2, SizeBytes: int64(len(qb)), SHA256: hex.EncodeToString(qsum[:])},
		{ID: "img-iso", Format: quantix.ImageISO, SizeBytes: int64(len(iso)), SHA256: hex.EncodeToString(isum[:])},
	}
	nvm := quantix.DesiredVM{UUID: nic, Power: quantix.WantedStopped, Generation: 1,
		Spec: quantix.VMSpec{Name: "vm-nic", VCPUs: 2, MemoryBytes: 16 << 20, CDROM: "img-iso",
			Disks: []quantix.DiskSpec{{ImageID: "img-qcow", SizeBytes: 32 << 20}},
			NICs:  []quantix.NICSpec{{Network: quantix.NetworkManagement, MAC: "52:54:00:12:34:56"}}}}
	gen := e.srv.publish([]quantix.DesiredVM{uvm, nvm}, nil, imgs, false)
	dom := e.waitState(uefi, libvirt.DomainRunning, 60*time.Second)
	e.waitApplied(r, gen, 10*time.Second)
	if errs := r.Errors(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	x, err := e.lv.DomainGetXMLDesc(dom, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(x, "<nvram") || !strings.Contains(x, "OVMF") || !strings.Contains(x, "q35") {
		t.Errorf("UEFI domain without OVMF, NVRAM or q35:\n%s", x)
	}
	if i, j := strings.Index(x, "<boot dev='network'/>"), strings.Index(x, "<boot dev='hd'/>"); i < 0 || j < i {
		t.Errorf("boot order network, disk not kept:\n%s", x)
	}
	nvram := ""
	if i := strings.Index(x, "<nvram"); i >= 0 {
		rest := x[i:]
		nvram = rest[strings.Index(rest, ">")+1 : strings.Index(rest, "</nvram>")]
	}
	if _, err := os.Stat(nvram); err != nil {
		t.Errorf("NVRAM file %q: %v", nvram, err)
	}
	ndom, st, err := e.domain(nic)
	if err != nil || st != libvirt.DomainShutoff {
		t.Fatalf("vm-nic: state %d, %v; want defined and shut off", st, err)
	}
	nx, _ := e.lv.DomainGetXMLDesc(ndom, libvirt.DomainXMLInactive)
	for _, want := range []string{"<interface type='bridge'>", "<mac address='52:54:00:12:34:56'/>", "<source bridge='br0'/>", "<model type='virtio'/>",
		"<source file='" + filepath.Join(e.images, "img-iso") + "'/>", "<source pool='default' volume='" + nic + "-disk0.qcow2'/>"} {
		if !strings.Contains(nx, want) {
			t.Errorf("vm-nic definition lacks %s:\n%s", want, nx)
		}
	}
	if auto, _ := e.lv.DomainGetAutostart(ndom); auto != 0 {
		t.Errorf("autostart of a stopped VM = %d", auto)
	}
	pool, _ := e.lv.StoragePoolLookupByName(quantix.DefaultPool)
	e.lv.StoragePoolRefresh(pool, 0)
	vol, err := e.lv.StorageVolLookupByName(pool, nic+"-disk0.qcow2")
	if err != nil {
		t.Fatalf("vm-nic's disk: %v", err)
	}
	if _, capacity, _, err := e.lv.StorageVolGetInfo(vol); err != nil || capacity != 32<<20 {
		t.Errorf("vm-nic's disk from the 8 MiB qcow2 image: capacity %d (%v), want grown to 32 MiB", capacity, err)
	}

	// The host powers off: the OVMF guest idles without an OS, so ACPI does nothing
	// and it is forced off after the timeout; autostart stays on.
	t0 := time.Now()
	forced, err := vms.ShutdownAll(context.Background(), e.lv, time.Second, e.logger("poweroff"))
	if err != nil || forced != 1 {
		t.Errorf("ShutdownAll = %d, %v; want 1 guest forced off", forced, err)
	}
	t.Logf("host power-off of 1 guest (1 s ACPI timeout): %v", time.Since(t0).Round(time.Millisecond))
	if _, st, _ := e.domain(uefi); st != libvirt.DomainShutoff {
		t.Errorf("after ShutdownAll the guest is in state %d, want shut off", st)
	}
	if auto, _ := e.lv.DomainGetAutostart(dom); auto != 1 {
		t.Errorf("ShutdownAll changed autostart to %d", auto)
	}

	// While the host shuts its guests down, a re-apply starts none.
	if err := os.WriteFile(e.marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	gen = e.srv.publish([]quantix.DesiredVM{uvm, nvm}, nil, imgs, false)
	e.waitApplied(r, gen, 10*time.Second)
	if _, st, _ := e.domain(uefi); st != libvirt.DomainShutoff {
		t.Errorf("a guest was started while the host shuts its guests down (state %d)", st)
	}
	os.Remove(e.marker)

	// Delete takes the NVRAM along.
	gen = e.srv.publish(nil, []quantix.DeletedVM{{UUID: uefi}, {UUID: nic, KeepDisks: true}}, nil, false)
	e.waitApplied(r, gen, 20*time.Second)
	if _, _, err := e.domain(nic); err == nil {
		t.Errorf("vm-nic still defined after the delete")
	}
	if vols := e.volumes(); !containsPrefix(vols, nic) {
		t.Errorf("vm-nic's disk went with a delete that keeps disks: %v", vols)
	}
	if _, err := os.Stat(nvram); err == nil {
		t.Errorf("NVRAM %s left after the delete", nvram)
	}
	if vols := e.volumes(); containsPrefix(vols, uefi) {
		t.Errorf("volumes %v left after the delete", vols)
	}
}
