// Package libvirtdtest starts a private libvirtd for tests: its own socket folder,
// pid file and runtime folders in a temporary directory, run as an unprivileged
// user (session mode) so it touches no system state and the test can stop and
// start it at will. Its test:///default driver gives a real libvirt hypervisor
// with a running domain and a storage pool.
package libvirtdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix/tests/syncbuf"
)

// Daemon is one private libvirtd.
type Daemon struct {
	// Socket is the read-write unix socket of the daemon.
	Socket string
	dir    string
	uid    int
	gid    int
	mu     sync.Mutex // guards cmd and done
	cmd    *exec.Cmd
	done   chan struct{}
	out    syncbuf.Buffer // what the daemon printed
}

// Start starts a libvirtd and stops it when the test ends. It fails the test with
// the install command when libvirtd is missing.
func Start(t testing.TB) *Daemon {
	t.Helper()
	if _, err := exec.LookPath("libvirtd"); err != nil {
		t.Fatalf("libvirtd not found: run make deps (apt-get install libvirt-daemon libvirt-daemon-system)")
	}
	d := &Daemon{uid: os.Getuid(), gid: os.Getgid()}
	if os.Getuid() == 0 {
		// libvirtd as root runs the system drivers (qemu, network, nwfilter) which
		// touch host state; as an unprivileged user it runs in session mode.
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("look up user nobody for the test libvirtd: %v", err)
		}
		d.uid, _ = strconv.Atoi(u.Uid)
		d.gid, _ = strconv.Atoi(u.Gid)
	}
	// t.TempDir is 0700 root; the daemon's user must be able to enter its folder.
	dir, err := os.MkdirTemp("", "qx-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d.dir = dir
	for _, sub := range []string{"sock", "run", "config/libvirt", "cache", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`unix_sock_dir = %q
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0777"
auth_unix_ro = "none"
auth_unix_rw = "none"
`, filepath.Join(dir, "sock"))
	if err := os.WriteFile(filepath.Join(dir, "libvirtd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// QEMU guests of the session driver log their stdio to files: no virtlogd
	// (the image's qemu.conf says the same).
	if err := os.WriteFile(filepath.Join(dir, "config", "libvirt", "qemu.conf"), []byte("stdio_handler = \"file\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, d.uid, d.gid)
	}); err != nil {
		t.Fatal(err)
	}
	d.Socket = filepath.Join(dir, "sock", "libvirt-sock")
	if err := d.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop libvirtd: %v", err)
		}
		if t.Failed() {
			t.Logf("libvirtd output:\n%s", d.Output())
		}
	})
	return d
}

// URI is the libvirt URI of the daemon's test:///default driver.
func (d *Daemon) URI() string {
	return "test+unix:///default?socket=" + url.QueryEscape(d.Socket)
}

// QEMUURI is the libvirt URI of the daemon's QEMU driver (session mode: guests run
// as the daemon's user, TCG unless KVM works for it).
func (d *Daemon) QEMUURI() string {
	return "qemu+unix:///session?socket=" + url.QueryEscape(d.Socket)
}

// Dir is a folder owned by the daemon's user, for files its guests use
// (disks, serial logs, a storage pool).
func (d *Daemon) Dir(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(d.dir, "data", name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	for q := p; q != d.dir; q = filepath.Dir(q) {
		if err := os.Lchown(q, d.uid, d.gid); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// ConfigHome is the daemon's XDG_CONFIG_HOME (session libvirt keeps its domain
// definitions and run files below it).
func (d *Daemon) ConfigHome() string { return filepath.Join(d.dir, "config") }

// Output returns what the daemon printed.
func (d *Daemon) Output() string { return d.out.String() }

// StartDaemon starts the daemon (again) and waits until its socket answers.
func (d *Daemon) StartDaemon() error {
	d.mu.Lock()
	if d.cmd != nil {
		d.mu.Unlock()
		return fmt.Errorf("libvirtd already running")
	}
	os.Remove(d.Socket)
	cmd := exec.Command("libvirtd", "--config", filepath.Join(d.dir, "libvirtd.conf"),
		"--pid-file", filepath.Join(d.dir, "run", "libvirtd.pid"))
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + filepath.Join(d.dir, "home"),
		"XDG_RUNTIME_DIR=" + filepath.Join(d.dir, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(d.dir, "config"),
		"XDG_CACHE_HOME=" + filepath.Join(d.dir, "cache"),
	}
	cmd.Stdout = &d.out
	cmd.Stderr = &d.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Getuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(d.uid), Gid: uint32(d.gid), Groups: []uint32{}}
	}
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("start libvirtd: %w", err)
	}
	done := make(chan struct{})
	d.cmd, d.done = cmd, done
	d.mu.Unlock()
	go func() { cmd.Wait(); close(done) }()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := net.Dial("unix", d.Socket)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			d.mu.Lock()
			d.cmd = nil
			d.mu.Unlock()
			return fmt.Errorf("libvirtd exited at start: %s", d.Output())
		case <-ctx.Done():
			return fmt.Errorf("libvirtd socket %s did not answer in 30s: %s", d.Socket, d.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop stops the daemon with SIGTERM (SIGKILL after 10 s) and waits for it.
func (d *Daemon) Stop() error {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.cmd = nil
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal libvirtd %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	return nil
}
