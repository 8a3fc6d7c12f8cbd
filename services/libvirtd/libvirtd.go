// Package libvirtd runs libvirt's daemon on Quantix-OS as a supervised service
// (docs/design.md §13): it mounts the hypervisor extension (libvirt and QEMU, a
// squashfs inside the initramfs), points libvirt's persistent state at QUANTIX-DATA
// (or RAM on a live boot without one, and says so), starts libvirtd on its local
// unix socket, creates the `default` dir storage pool once, and is ready when
// libvirt answers API calls, not when its socket file appears. libvirtd's QEMU
// processes run in sessions of their own, so a libvirtd that dies and is restarted
// leaves its guests running.
package libvirtd

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-libvirt"
	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// Name is the service name in the image definition and the ready marker.
const Name = "libvirtd"

// stateSubdirs are the folders of quantix.LibvirtStateDir the image links
// libvirt's own folders to.
var stateSubdirs = []string{"qemu", "storage", "lib"}

// Config says where things are; the zero value of a field means the Quantix-OS
// path, tests point them elsewhere.
type Config struct {
	// Libvirtd is the daemon (default /usr/sbin/libvirtd); Args its arguments. Env
	// and SysProcAttr, when set, are its environment and process attributes (tests
	// run it unprivileged, in libvirt's session mode).
	Libvirtd    string
	Args        []string
	Env         []string
	SysProcAttr *syscall.SysProcAttr
	// Socket is libvirtd's read-write unix socket (default /run/libvirt/libvirt-sock).
	Socket string
	// URI is the connection URI (default qemu:///system).
	URI string
	// Extension is the squashfs to mount first ("" = quantix.ExtensionImage of the
	// hypervisor; "-" = none, libvirt is installed on the host).
	Extension string
	// DataDir is QUANTIX-DATA's mount point (default quantix.DataDir): libvirt's
	// state, the default pool and the image cache are made under it.
	DataDir string
	// QEMULogDir is where libvirt writes each guest's QEMU log (default
	// /var/log/libvirt/qemu); it must exist before the first guest starts.
	QEMULogDir string
	// ConsoleDir is the VMs' serial console logs folder (default
	// quantix.VMConsoleDir): made before libvirtd starts, which autostarts guests
	// whose serial port writes there.
	ConsoleDir string
	// MountInfo is the mount table (default quantix.MountInfo).
	MountInfo string
	// ReadyTimeout bounds the wait for the first answered API call (default 120 s:
	// the first call probes QEMU, 8-10 s under TCG on a loaded machine).
	ReadyTimeout time.Duration
	// StopGrace is how long libvirtd has to exit after SIGTERM (default 15 s).
	StopGrace time.Duration
	// Stdout gets the ready marker; libvirtd's own output goes to Stderr.
	Stdout, Stderr io.Writer
}

// Service is one run of libvirtd.
type Service struct {
	cfg Config
	log *slog.Logger
}

// New returns the service for cfg.
func New(cfg Config, log *slog.Logger) (*Service, error) {
	if cfg.Libvirtd == "" {
		cfg.Libvirtd = "/usr/sbin/libvirtd"
	}
	if cfg.Socket == "" {
		cfg.Socket = "/run/libvirt/libvirt-sock"
	}
	if cfg.URI == "" {
		cfg.URI = string(libvirt.QEMUSystem)
	}
	if cfg.Extension == "" {
		cfg.Extension = quantix.ExtensionImage(quantix.HypervisorExtension)
	}
	if cfg.DataDir == "" {
		cfg.DataDir = quantix.DataDir
	}
	if cfg.ConsoleDir == "" {
		cfg.ConsoleDir = quantix.VMConsoleDir
	}
	if cfg.QEMULogDir == "" {
		cfg.QEMULogDir = "/var/log/libvirt/qemu"
	}
	if cfg.MountInfo == "" {
		cfg.MountInfo = quantix.MountInfo
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 120 * time.Second
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 15 * time.Second
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	return &Service{cfg: cfg, log: log}, nil
}

// Run prepares the host, runs libvirtd until ctx ends (then stops it with SIGTERM)
// and returns an error when libvirtd exits by itself, so the supervisor restarts it.
func (s *Service) Run(ctx context.Context) error {
	t0 := time.Now()
	if s.cfg.Extension != "-" {
		if err := MountExtension(s.cfg.Extension, quantix.ExtensionMount(quantix.HypervisorExtension), s.cfg.MountInfo); err != nil {
			return err
		}
	}
	persistent, err := s.prepareDirs()
	if err != nil {
		return err
	}
	if !persistent {
		fmt.Fprintln(s.cfg.Stdout, quantix.WarningMarker(Name, "no QUANTIX-DATA: VM definitions and disks are kept in RAM and will not survive a reboot"))
	}
	// A socket left by a libvirtd that was killed would look like a live daemon.
	_ = os.Remove(s.cfg.Socket)
	cmd := exec.Command(s.cfg.Libvirtd, s.cfg.Args...)
	cmd.Stdout, cmd.Stderr = s.cfg.Stderr, s.cfg.Stderr
	cmd.Env, cmd.SysProcAttr = s.cfg.Env, s.cfg.SysProcAttr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.cfg.Libvirtd, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	readyCtx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	info, err := s.awaitReady(readyCtx, exited)
	cancel()
	if err != nil {
		s.stop(cmd, exited)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	fmt.Fprintln(s.cfg.Stdout, quantix.ReadyMarker(Name, "version", info.version, "qemu", info.qemu,
		"persistent", fmt.Sprint(persistent), "seconds", fmt.Sprintf("%.2f", time.Since(t0).Seconds()),
		"first_call_seconds", fmt.Sprintf("%.2f", info.firstCall.Seconds()), "uptime", uptime()))
	select {
	case err := <-exited:
		return fmt.Errorf("libvirtd exited: %v", err)
	case <-ctx.Done():
		s.stop(cmd, exited)
		return nil
	}
}

// prepareDirs makes libvirt's state folders and the pool and image folders on
// QUANTIX-DATA, and reports whether that is a persistent filesystem.
func (s *Service) prepareDirs() (bool, error) {
	facts, err := quantix.ReadMountFacts(s.cfg.MountInfo, s.cfg.DataDir)
	if err != nil {
		return false, err
	}
	dirs := []string{filepath.Join(s.cfg.DataDir, "pools", quantix.DefaultPool), filepath.Join(s.cfg.DataDir, "images"), filepath.Dir(s.cfg.Socket), s.cfg.QEMULogDir, s.cfg.ConsoleDir}
	for _, d := range stateSubdirs {
		dirs = append(dirs, filepath.Join(s.cfg.DataDir, "libvirt", d))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return false, fmt.Errorf("prepare %s: %w", d, err)
		}
	}
	return facts.Persistent(), nil
}

type daemonInfo struct {
	version, qemu string
	// firstCall is how long the first answered call took: libvirt probes QEMU's
	// capabilities then (every boot: its cache is keyed on the binary's ctime).
	firstCall time.Duration
}

// awaitReady dials the socket until libvirt answers, then makes sure the default
// pool exists and runs: that call is libvirt's first real work (it probes QEMU).
func (s *Service) awaitReady(ctx context.Context, exited <-chan error) (daemonInfo, error) {
	var lastErr error
	for {
		select {
		case err := <-exited:
			return daemonInfo{}, fmt.Errorf("libvirtd exited before it answered: %v", err)
		case <-ctx.Done():
			return daemonInfo{}, fmt.Errorf("libvirtd did not answer within %v: %v", s.cfg.ReadyTimeout, lastErr)
		default:
		}
		info, answered, err := s.probe()
		if err == nil {
			return info, nil
		}
		if answered { // libvirt is up and said no: waiting will not change that
			return daemonInfo{}, err
		}
		lastErr = err
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// probe connects to libvirtd once; answered says whether libvirt answered at all
// (an error then is libvirt's, not a daemon still starting).
func (s *Service) probe() (info daemonInfo, answered bool, err error) {
	conn, err := net.DialTimeout("unix", s.cfg.Socket, 2*time.Second)
	if err != nil {
		return info, false, err
	}
	lv := libvirt.NewWithDialer(connDialer{conn})
	if err := lv.ConnectToURI(libvirt.ConnectURI(s.cfg.URI)); err != nil {
		conn.Close()
		return info, false, fmt.Errorf("connect %s: %w", s.cfg.URI, err)
	}
	defer lv.Disconnect()
	t0 := time.Now()
	lib, err := lv.ConnectGetLibVersion()
	if err != nil {
		return info, false, err
	}
	if err := EnsurePool(lv, quantix.DefaultPool, filepath.Join(s.cfg.DataDir, "pools", quantix.DefaultPool), s.log); err != nil {
		return info, true, err
	}
	// libvirt fsyncs a definition it writes but not its folder: a power cut within
	// ext4's commit interval lost the new pool (the lab's reset showed it). Commit
	// QUANTIX-DATA now, before saying ready.
	if err := syncFS(filepath.Join(s.cfg.DataDir, "libvirt")); err != nil {
		return info, true, err
	}
	info.firstCall = time.Since(t0)
	info.version = quantix.LibvirtVersion(lib)
	hv, err := lv.ConnectGetVersion()
	if err != nil {
		// libvirt answers but has no QEMU yet: its capabilities probe failed or
		// timed out (seen under nested emulation on a loaded machine, where the
		// ready marker then said qemu="" and the host stayed unavailable until a
		// restart). Not ready: asked again until ReadyTimeout, and after that the
		// service fails and init starts libvirtd again, which probes anew.
		return info, false, fmt.Errorf("libvirt answers but runs no QEMU yet: %w", err)
	}
	info.qemu = quantix.LibvirtVersion(hv)
	return info, true, nil
}

type connDialer struct{ c net.Conn }

func (d connDialer) Dial() (net.Conn, error) { return d.c, nil }

// poolXML is a dir storage pool definition.
type poolXML struct {
	XMLName xml.Name `xml:"pool"`
	Type    string   `xml:"type,attr"`
	Name    string   `xml:"name"`
	Target  struct {
		Path string `xml:"path"`
	} `xml:"target"`
}

// EnsurePool makes the dir pool name at dir exist, start automatically and run.
// It is idempotent: a pool that is defined and running is left as it is; one that
// is defined elsewhere is an error rather than redefined.
func EnsurePool(lv *libvirt.Libvirt, name, dir string, log *slog.Logger) error {
	pool, err := lv.StoragePoolLookupByName(name)
	if err != nil {
		if le := (libvirt.Error{}); !errors.As(err, &le) || le.Code != uint32(libvirt.ErrNoStoragePool) {
			return fmt.Errorf("look up pool %s: %w", name, err)
		}
		var p poolXML
		p.Type, p.Name, p.Target.Path = "dir", name, dir
		doc, err := xml.Marshal(p)
		if err != nil {
			return err
		}
		if pool, err = lv.StoragePoolDefineXML(string(doc), 0); err != nil {
			return fmt.Errorf("define pool %s at %s: %w", name, dir, err)
		}
		log.Info("storage pool defined", "pool", name, "path", dir)
	} else {
		desc, err := lv.StoragePoolGetXMLDesc(pool, 0)
		if err != nil {
			return fmt.Errorf("pool %s: %w", name, err)
		}
		var p poolXML
		if err := xml.Unmarshal([]byte(desc), &p); err != nil {
			return fmt.Errorf("pool %s: %w", name, err)
		}
		if filepath.Clean(p.Target.Path) != filepath.Clean(dir) {
			return fmt.Errorf("pool %s is defined at %s, not %s: undefine it (virsh pool-undefine %s) to let Quantix manage it", name, p.Target.Path, dir, name)
		}
	}
	if auto, err := lv.StoragePoolGetAutostart(pool); err != nil || auto == 0 {
		if err := lv.StoragePoolSetAutostart(pool, 1); err != nil {
			return fmt.Errorf("pool %s autostart: %w", name, err)
		}
	}
	active, err := lv.StoragePoolIsActive(pool)
	if err != nil {
		return fmt.Errorf("pool %s: %w", name, err)
	}
	if active == 0 {
		if err := lv.StoragePoolCreate(pool, 0); err != nil {
			return fmt.Errorf("start pool %s: %w", name, err)
		}
	}
	return nil
}

// stop sends SIGTERM to libvirtd and SIGKILL after the grace period. Guests are not
// touched: QEMU runs in a session of its own.
func (s *Service) stop(cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(s.cfg.StopGrace):
		s.log.Warn("libvirtd did not stop in time; killing it", "grace", s.cfg.StopGrace)
		_ = cmd.Process.Kill()
		<-exited
	}
}

// ErrNoExtension means the image has no hypervisor extension to mount.
var ErrNoExtension = errors.New("no hypervisor extension in this image")

// MountExtension mounts the squashfs image at dir read-only through a loop device,
// unless something is mounted there already (a restarted service).
func MountExtension(image, dir, mountinfo string) error {
	facts, err := quantix.ReadMountFacts(mountinfo, dir)
	if err != nil {
		return err
	}
	if facts.Mounted {
		return nil
	}
	if _, err := os.Stat(image); err != nil {
		return fmt.Errorf("%w: %v", ErrNoExtension, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dev, err := attachLoop(image)
	if err != nil {
		return fmt.Errorf("mount %s: %w", image, err)
	}
	defer dev.Close()
	if err := syscall.Mount(dev.Name(), dir, "squashfs", syscall.MS_RDONLY|syscall.MS_NODEV, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", image, dev.Name(), dir, err)
	}
	return nil
}

// uptime is the kernel's uptime in seconds as text ("?" when unknown), so a boot's
// markers can be compared in guest time.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f, _, _ := strings.Cut(string(b), " ")
	return f
}

// syncFS commits the filesystem holding dir to its disk.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
