package libvirtd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/guest"
	"github.com/quantix/quantix/tests/syncbuf"
)

// session is a private, unprivileged libvirtd (session mode, as user nobody) run by
// the service under test, with a real QEMU driver.
type session struct {
	dir, socket string
	cfg         Config
	chown       func() // gives the session's folders to nobody
}

func newSession(t *testing.T) *session {
	t.Helper()
	for _, p := range []string{"/usr/sbin/libvirtd", "/usr/bin/qemu-system-x86_64"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s missing: run make deps (apt-get install libvirt-daemon qemu-system-x86)", p)
		}
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "qx-libvirtd-svc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, sub := range []string{"sock", "run", "config/libvirt", "cache", "home", "data", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("libvirtd.conf", fmt.Sprintf("unix_sock_dir = %q\nunix_sock_ro_perms = \"0700\"\nunix_sock_rw_perms = \"0700\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\n", filepath.Join(dir, "sock")))
	// The same QEMU settings as the image's (overlay/quantix-os/etc/libvirt/qemu.conf)
	// that apply in session mode: no virtlogd.
	write("config/libvirt/qemu.conf", "stdio_handler = \"file\"\n")
	s := &session{dir: dir, socket: filepath.Join(dir, "sock", "libvirt-sock")}
	s.cfg = Config{
		Args:   []string{"--config", filepath.Join(dir, "libvirtd.conf")},
		Socket: s.socket, URI: "qemu:///session", Extension: "-", DataDir: filepath.Join(dir, "data"),
		QEMULogDir: filepath.Join(dir, "log"), ConsoleDir: filepath.Join(dir, "vms"), ReadyTimeout: 90 * time.Second, StopGrace: 10 * time.Second,
		Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + filepath.Join(dir, "home"),
			"XDG_RUNTIME_DIR=" + filepath.Join(dir, "run"), "XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
			"XDG_CACHE_HOME=" + filepath.Join(dir, "cache")},
		SysProcAttr: &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}},
	}
	// The service makes its folders as root; the daemon runs as nobody.
	s.chown = func() {
		filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				os.Lchown(p, uid, gid)
			}
			return nil
		})
	}
	s.chown()
	return s
}

// run starts the service and waits for its ready marker; stop ends it cleanly.
func (s *session) run(t *testing.T) (out *syncbuf.Buffer, stop func() error, done <-chan error) {
	t.Helper()
	out = &syncbuf.Buffer{}
	cfg := s.cfg
	cfg.Stdout, cfg.Stderr = out, out
	svc, err := New(cfg, slog.New(slog.NewTextHandler(out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// The folders the service makes must belong to nobody before libvirtd looks.
	if _, err := svc.prepareDirs(); err != nil {
		t.Fatal(err)
	}
	s.chown()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- svc.Run(ctx) }()
	deadline := time.Now().Add(100 * time.Second)
	for !strings.Contains(out.String(), quantix.MarkerPrefix+quantix.MarkerReady+" service="+Name) {
		select {
		case err := <-ch:
			cancel()
			t.Fatalf("service ended before it was ready: %v\n%s", err, out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no ready marker:\n%s", out)
		}
	}
	return out, func() error { cancel(); return <-ch }, ch
}

func (s *session) connect(t *testing.T) *libvirt.Libvirt {
	t.Helper()
	c, err := net.Dial("unix", s.socket)
	if err != nil {
		t.Fatal(err)
	}
	lv := libvirt.NewWithDialer(connDialer{c})
	if err := lv.ConnectToURI("qemu:///session"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lv.Disconnect() })
	return lv
}

// TestServiceKeepsGuestsAcrossRestarts runs libvirtd through the service with a
// real QEMU: ready only once libvirt answers, the default pool created once; a TCG
// guest started; libvirtd killed (the service returns an error for the supervisor)
// and stopped cleanly: the guest's QEMU process runs on, and the next libvirtd
// finds it running.
func TestServiceKeepsGuestsAcrossRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs libvirtd and QEMU")
	}
	s := newSession(t)
	out, stop, done := s.run(t)
	if m := readyMarker(out.String()); m.Get("persistent") != "false" || m.Get("version") == "" || m.Get("qemu") == "" || !strings.Contains(out.String(), "no QUANTIX-DATA") {
		t.Errorf("a data folder that is not a mount must be reported as RAM:\n%s", out)
	}
	// Autostarted guests write their serial console there before the agent runs.
	if fi, err := os.Stat(s.cfg.ConsoleDir); err != nil || !fi.IsDir() {
		t.Errorf("the VMs' console folder %s is not made before libvirtd starts: %v", s.cfg.ConsoleDir, err)
	}
	lv := s.connect(t)
	pool, err := lv.StoragePoolLookupByName(quantix.DefaultPool)
	if err != nil {
		t.Fatalf("default pool: %v\n%s", err, out)
	}
	if active, _ := lv.StoragePoolIsActive(pool); active != 1 {
		t.Errorf("default pool not running")
	}
	if auto, _ := lv.StoragePoolGetAutostart(pool); auto != 1 {
		t.Errorf("default pool does not start automatically")
	}

	// The guest: a boot sector printing a marker on COM1.
	disk, serial := filepath.Join(s.dir, "data", "guest.img"), filepath.Join(s.dir, "data", "guest.serial")
	mbr, err := guest.BootSector("QX-GUEST-RUNNING")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, mbr, 0o644); err != nil {
		t.Fatal(err)
	}
	s.chown()
	id := uuid.New()
	doc, err := guest.DomainXML(guest.Domain{Name: "qx-restart-guest", UUID: id.String(), Disk: disk, Serial: serial})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := lv.DomainDefineXML(doc)
	if err != nil {
		t.Fatalf("define: %v", err)
	}
	t.Cleanup(func() {
		lv.DomainDestroy(dom)
		lv.DomainUndefine(dom)
	})
	if err := lv.DomainCreate(dom); err != nil {
		t.Fatalf("start guest: %v", err)
	}
	waitFile(t, serial, "QX-GUEST-RUNNING", 60*time.Second)
	qemuPID := guestPID(t, filepath.Join(s.dir, "config"), "qx-restart-guest")

	// libvirtd dies: the service says so (the supervisor restarts it) and the guest runs on.
	daemon := daemonPID(t, s.socket)
	if err := syscall.Kill(daemon, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "libvirtd exited") {
			t.Errorf("Run after libvirtd died = %v, want an error saying it exited", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after libvirtd died")
	}
	_ = stop
	if err := syscall.Kill(qemuPID, 0); err != nil {
		t.Fatalf("the guest's QEMU (pid %d) died with libvirtd: %v", qemuPID, err)
	}
	for round, how := range []string{"after libvirtd was killed", "after a clean stop of the service"} {
		out, stop, _ := s.run(t)
		lv := s.connect(t)
		dom, err := lv.DomainLookupByUUID(libvirt.UUID(id))
		if err != nil {
			t.Fatalf("%s: guest not found: %v\n%s", how, err, out)
		}
		state, _, err := lv.DomainGetState(dom, 0)
		if err != nil || libvirt.DomainState(state) != libvirt.DomainRunning {
			t.Errorf("%s: guest state %d (%v), want running", how, state, err)
		}
		if got := guestPID(t, filepath.Join(s.dir, "config"), "qx-restart-guest"); got != qemuPID {
			t.Errorf("%s: guest QEMU pid %d, want the same process %d", how, got, qemuPID)
		}
		p2, err := lv.StoragePoolLookupByName(quantix.DefaultPool)
		if err != nil || p2.UUID != pool.UUID {
			t.Errorf("%s: default pool %v (%v), want the one defined first (%x)", how, p2.UUID, err, pool.UUID)
		}
		if strings.Contains(out.String(), "storage pool defined") {
			t.Errorf("%s: the default pool was defined again", how)
		}
		if round == 1 {
			lv.DomainDestroy(dom)
		}
		if err := stop(); err != nil {
			t.Errorf("clean stop: %v", err)
		}
		if round == 0 {
			if err := syscall.Kill(qemuPID, 0); err != nil {
				t.Fatalf("the guest's QEMU died with a clean libvirtd stop: %v", err)
			}
		}
	}
}

func waitFile(t *testing.T, path, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never held %q (got %q)", path, want, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// guestPID reads the pid file libvirt keeps for a running session guest.
func guestPID(t *testing.T, configHome, name string) int {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(configHome), "*", "libvirt", "qemu", "run", name+".pid"))
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no pid file for guest %s (looked for %v)", name, matches)
	return 0
}

// daemonPID finds the libvirtd serving socket through its peer credentials.
func daemonPID(t *testing.T, socket string) int {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil {
		t.Fatal(err)
	}
	return int(cred.Pid)
}

func readyMarker(out string) quantix.Marker {
	for _, l := range strings.Split(out, "\n") {
		if m, ok := quantix.ParseMarker(l); ok && m.Kind == quantix.MarkerReady {
			return m
		}
	}
	return quantix.Marker{}
}
