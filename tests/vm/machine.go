package vm

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// Firmware selects the VM firmware.
type Firmware int

const (
	// BIOS is SeaBIOS, QEMU's default.
	BIOS Firmware = iota
	// UEFI is OVMF from the Debian ovmf package (code read-only, a private copy of
	// the variable store per machine).
	UEFI
)

func (f Firmware) String() string {
	if f == UEFI {
		return "uefi"
	}
	return "bios"
}

// OVMF firmware files (Debian's ovmf package).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// DiskInterface is how a disk is attached.
type DiskInterface string

// Disk interfaces.
const (
	VirtioBlk DiskInterface = "virtio" // virtio-blk-pci (default)
	IDE       DiskInterface = "ide"    // ide-hd on the PIIX IDE controller
)

// Disk is a raw disk image attached to the VM.
type Disk struct {
	Path      string
	Interface DiskInterface // default VirtioBlk
	ReadOnly  bool
	// Snapshot sends writes to a temporary overlay: the file stays unchanged (boot an
	// ISO "written raw to a disk" without touching it).
	Snapshot bool
}

// NIC is a network card: on a Hub, or QEMU user networking (restrict=on: no way
// out, only the forwarded ports in).
type NIC struct {
	Hub  *Hub
	User bool
	// Forward lists guest TCP ports of a user NIC to forward from 127.0.0.1:<free
	// port> (see Machine.ForwardedAddr).
	Forward []int
	// MAC defaults to 52:54:00 plus a hash of test, machine name and NIC index.
	MAC net.HardwareAddr
	// Model is the QEMU device; default virtio-net-pci (e1000 also works).
	Model string
}

// Config describes a VM. Exactly one boot source: Kernel (with Initrd and Append),
// ISO (booted as CD) or BootDisk (a raw disk image).
type Config struct {
	// Name names the machine in messages and artifacts; default "vm".
	Name string

	Kernel string
	Initrd string
	// Append is the kernel command line; "console=ttyS0" and "panic=-1" are added
	// unless it sets console= or panic= itself.
	Append string

	ISO      string
	BootDisk *Disk
	// Disks are extra disks (config disks, data disks), after the boot source.
	Disks []Disk

	Firmware Firmware
	MemoryMB int // default 1024
	CPUs     int // default 1 (PLATFORM.md: -smp 2 is not faster under TCG)
	NICs     []NIC

	// AllowReboot lets a guest reboot restart the VM. By default QEMU runs with
	// -no-reboot, so a guest reboot (and a kernel panic with panic=-1) ends QEMU;
	// Machine.Reboot (QMP system_reset) reboots either way.
	AllowReboot bool

	// Machine is the QEMU machine type; default "pc" (i440fx, PIIX IDE).
	Machine string
	// Accel forces "tcg" or "kvm"; default Accel(t).
	Accel string
	// ExtraArgs are appended to the QEMU command line.
	ExtraArgs []string

	// probe marks the KVM probe boot: it takes a slot of its own, never a reserved one.
	probe bool
}

// Machine is a running (or exited) QEMU VM.
type Machine struct {
	cfg       Config
	name      string
	accel     string
	args      []string
	dir       string // short folder for sockets and the UEFI variable store
	artifacts string
	qmpPath   string
	console   *console
	serialLog *os.File
	stderrLog *os.File
	nics      []attachedNIC

	mu          sync.Mutex
	cmd         *exec.Cmd
	qmp         *QMP
	exited      chan struct{}
	exitErr     error
	cursor      int
	slot        *slot
	tailPrinted bool
	stopped     bool
}

type attachedNIC struct {
	id   string
	mac  net.HardwareAddr
	port *Port
	fwd  map[int]int // guest port -> host port
}

// Start boots a VM for test t and stops it when t ends. It waits for a machine-wide
// VM slot first (see Reserve). Any problem fails t.
func Start(t testing.TB, cfg Config) *Machine {
	t.Helper()
	m, err := start(t, cfg)
	if err != nil {
		t.Fatalf("start VM %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { m.cleanup(t) })
	accel := m.accel
	if r := AccelReason(); r != "" && cfg.Accel == "" {
		accel += " because " + r
	}
	t.Logf("VM %s started (%s, %s), artifacts in %s", m.name, accel, m.cfg.Firmware, m.artifacts)
	return m
}

func start(t testing.TB, cfg Config) (m *Machine, err error) {
	if cfg.Name == "" {
		cfg.Name = "vm"
	}
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("name %q: use letters, digits, '-', '_' and '.'", cfg.Name)
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 1024
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Machine == "" {
		cfg.Machine = "pc"
	}
	if _, err := TimeoutScale(); err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("qemu-system-x86_64 not found: run make deps (apt-get install qemu-system-x86)")
	}
	if cfg.Accel == "" {
		cfg.Accel = Accel(t)
	}
	m = &Machine{cfg: cfg, name: cfg.Name, accel: cfg.Accel, artifacts: ArtifactDir(t)}
	// Unix socket paths are limited to 107 bytes: keep them out of long test folders.
	if m.dir, err = os.MkdirTemp("", "qxvm-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.stop()
		}
	}()
	m.qmpPath = filepath.Join(m.dir, "qmp.sock")
	if m.args, err = m.buildArgs(t); err != nil {
		return nil, err
	}
	base := filepath.Join(m.artifacts, m.name)
	if err := os.WriteFile(base+".cmdline", []byte(shellQuote(append([]string{qemu}, m.args...))+"\n"), 0o644); err != nil {
		return nil, err
	}
	if m.serialLog, err = os.Create(base + ".serial.log"); err != nil {
		return nil, err
	}
	if m.stderrLog, err = os.Create(base + ".qemu-stderr.log"); err != nil {
		return nil, err
	}
	m.console = newConsole(m.serialLog)

	if cfg.probe {
		ss, err := acquireSlots(1, testDeadline(t), nil)
		if err != nil {
			return nil, err
		}
		m.slot = ss[0]
	} else if m.slot, err = takeSlot(t); err != nil {
		return nil, err
	}
	if err := m.launch(qemu); err != nil {
		return nil, err
	}
	return m, nil
}

func validName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return s != ""
}

func (m *Machine) buildArgs(t testing.TB) ([]string, error) {
	cfg := m.cfg
	args := []string{
		"-name", m.name,
		"-machine", cfg.Machine,
		"-accel", cfg.Accel,
		"-m", strconv.Itoa(cfg.MemoryMB),
		"-smp", strconv.Itoa(cfg.CPUs),
		"-nodefaults", "-vga", "std", "-display", "none",
		"-serial", "stdio",
		"-monitor", "none",
		"-qmp", "unix:" + m.qmpPath + ",server=on,wait=off",
		"-device", "virtio-rng-pci",
	}
	if !cfg.AllowReboot {
		args = append(args, "-no-reboot")
	}
	if cfg.Firmware == UEFI {
		for _, f := range []string{OVMFCode, OVMFVars} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("firmware uefi: %s missing: run make deps (apt-get install ovmf)", f)
			}
		}
		vars := filepath.Join(m.dir, "OVMF_VARS.fd")
		if err := copyFile(OVMFVars, vars); err != nil {
			return nil, fmt.Errorf("firmware uefi: %w", err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}

	sources := 0
	for _, s := range []bool{cfg.Kernel != "", cfg.ISO != "", cfg.BootDisk != nil} {
		if s {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("config: set exactly one boot source: Kernel, ISO or BootDisk")
	}
	if cfg.Initrd != "" && cfg.Kernel == "" || cfg.Append != "" && cfg.Kernel == "" {
		return nil, errors.New("config: Initrd and Append need Kernel")
	}
	for field, p := range map[string]string{"Kernel": cfg.Kernel, "Initrd": cfg.Initrd, "ISO": cfg.ISO} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("config: %s: %w", field, err)
		}
	}
	switch {
	case cfg.Kernel != "":
		app := cfg.Append
		if !hasParam(app, "console") {
			app = strings.TrimSpace(app + " console=ttyS0,115200")
		}
		if !hasParam(app, "panic") {
			app += " panic=-1"
		}
		args = append(args, "-kernel", cfg.Kernel, "-append", app)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
	case cfg.ISO != "":
		args = append(args,
			"-drive", "file="+cfg.ISO+",format=raw,if=none,id=cd0,media=cdrom,readonly=on",
			"-device", "ide-cd,drive=cd0,bootindex=0")
	}
	disks := cfg.Disks
	if cfg.BootDisk != nil {
		disks = append([]Disk{*cfg.BootDisk}, disks...)
	}
	for i, d := range disks {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("config: disk %d: %w", i, err)
		}
		id := fmt.Sprintf("disk%d", i)
		drive := "file=" + d.Path + ",format=raw,if=none,id=" + id
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		if d.Snapshot {
			drive += ",snapshot=on"
		}
		dev := ""
		switch d.Interface {
		case "", VirtioBlk:
			dev = "virtio-blk-pci,drive=" + id
		case IDE:
			dev = "ide-hd,drive=" + id
		default:
			return nil, fmt.Errorf("config: disk %d: interface %q: want %q or %q", i, d.Interface, VirtioBlk, IDE)
		}
		if i == 0 && cfg.BootDisk != nil {
			dev += ",bootindex=0"
		}
		args = append(args, "-drive", drive, "-device", dev)
	}

	for i, n := range cfg.NICs {
		a := attachedNIC{id: fmt.Sprintf("nic%d", i), mac: n.MAC}
		if a.mac == nil {
			a.mac = defaultMAC(t.Name(), m.name, i)
		}
		if len(a.mac) != 6 {
			return nil, fmt.Errorf("config: NIC %d: MAC %q is not 6 bytes", i, a.mac)
		}
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		netdev := fmt.Sprintf("n%d", i)
		switch {
		case n.Hub != nil && !n.User:
			if len(n.Forward) > 0 {
				return nil, fmt.Errorf("config: NIC %d: Forward needs a user NIC", i)
			}
			p, err := n.Hub.AddPort(fmt.Sprintf("%s-%s", m.name, a.id))
			if err != nil {
				return nil, fmt.Errorf("config: NIC %d: %w", i, err)
			}
			a.port = p
			args = append(args, "-netdev", fmt.Sprintf(
				"dgram,id=%s,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s", netdev, p.PeerPath, p.HubPath))
		case n.User && n.Hub == nil:
			spec := "user,id=" + netdev + ",restrict=on"
			a.fwd = map[int]int{}
			for _, g := range n.Forward {
				h, err := FreePort()
				if err != nil {
					return nil, fmt.Errorf("config: NIC %d: %w", i, err)
				}
				a.fwd[g] = h
				spec += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", h, g)
			}
			args = append(args, "-netdev", spec)
		default:
			return nil, fmt.Errorf("config: NIC %d: set exactly one of Hub and User", i)
		}
		args = append(args, "-device", fmt.Sprintf("%s,netdev=%s,id=%s,mac=%s", model, netdev, a.id, a.mac))
		m.nics = append(m.nics, a)
	}
	return append(args, cfg.ExtraArgs...), nil
}

func hasParam(cmdline, key string) bool {
	for _, f := range strings.Fields(cmdline) {
		if k, _, _ := strings.Cut(f, "="); k == key {
			return true
		}
	}
	return false
}

func defaultMAC(test, name string, i int) net.HardwareAddr {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s/%s/%d", test, name, i)
	s := h.Sum32()
	return net.HardwareAddr{0x52, 0x54, 0x00, byte(s >> 16), byte(s >> 8), byte(s)}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// launch starts QEMU and connects QMP.
func (m *Machine) launch(qemu string) error {
	// QEMU binds these itself and refuses stale files from an earlier run.
	os.Remove(m.qmpPath)
	for _, n := range m.nics {
		if n.port != nil {
			os.Remove(n.port.PeerPath)
		}
	}
	cmd := exec.Command(qemu, m.args...)
	cmd.Stdout = m.console
	cmd.Stderr = m.stderrLog
	// QEMU must not outlive a test binary that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", qemu, err)
	}
	exited := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.exited, m.exitErr = cmd, exited, nil
	m.mu.Unlock()
	go func() {
		err := cmd.Wait()
		m.console.flush()
		m.mu.Lock()
		m.exitErr = err
		// A VM that is off holds no CPU: give its slot back at once (unless the test
		// reserved it), so a test that powers one VM off and boots the next does not
		// wait on itself. Restart takes a slot again.
		if m.slot != nil && !m.slot.reserved {
			m.slot.release()
			m.slot = nil
		}
		m.mu.Unlock()
		close(exited)
	}()

	deadline := time.Now().Add(ScaleTimeout(15 * time.Second))
	for {
		q, err := DialQMP(m.qmpPath, 5*time.Second)
		if err == nil {
			m.mu.Lock()
			m.qmp = q
			m.mu.Unlock()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("QEMU exited at start (%v): %s", m.exitErr, m.stderrTail(10))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("QMP socket %s: %w", m.qmpPath, err)
		}
	}
}

func (m *Machine) stderrTail(n int) string {
	if m.stderrLog == nil {
		return ""
	}
	b, err := os.ReadFile(m.stderrLog.Name())
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

// Restart boots the machine again after it exited (a power-off, a guest reboot
// under -no-reboot, Kill): same disks, UEFI variables, NICs and forwarded ports. The
// console continues in the same log, and waits continue after what was consumed.
func (m *Machine) Restart(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	exited := m.exited
	q := m.qmp
	m.mu.Unlock()
	select {
	case <-exited:
	default:
		t.Fatalf("restart VM %s: still running (PowerDown or Kill it first)", m.name)
	}
	if q != nil {
		q.Close()
	}
	m.mu.Lock()
	needSlot := m.slot == nil
	m.mu.Unlock()
	if needSlot {
		s, err := takeSlot(t)
		if err != nil {
			m.fail(t, fmt.Errorf("restart VM %s: %w", m.name, err))
		}
		m.mu.Lock()
		m.slot = s
		m.mu.Unlock()
	}
	m.console.Write([]byte("--- vmtest: starting " + m.name + " again ---\n"))
	if err := m.launch(m.cmd.Path); err != nil {
		m.fail(t, fmt.Errorf("restart VM %s: %w", m.name, err))
	}
}

// Name returns the machine's name.
func (m *Machine) Name() string { return m.name }

// Accel returns the accelerator the machine runs with.
func (m *Machine) Accel() string { return m.accel }

// ArtifactDir returns the folder with the machine's artifacts.
func (m *Machine) ArtifactDir() string { return m.artifacts }

// SerialLogPath returns the path of the serial console log.
func (m *Machine) SerialLogPath() string { return m.serialLog.Name() }

// CommandLine returns the QEMU command line (shell-quoted, as in <name>.cmdline).
func (m *Machine) CommandLine() string {
	return shellQuote(append([]string{"qemu-system-x86_64"}, m.args...))
}

// MAC returns the MAC address of NIC i.
func (m *Machine) MAC(i int) net.HardwareAddr { return m.nics[i].mac }

// Port returns the hub port of NIC i (nil for a user NIC).
func (m *Machine) Port(i int) *Port { return m.nics[i].port }

// ForwardedAddr returns "127.0.0.1:<port>" forwarded to guest TCP port guestPort on
// a user NIC; it panics if no NIC forwards that port (a bug in the test).
func (m *Machine) ForwardedAddr(guestPort int) string {
	for _, n := range m.nics {
		if h, ok := n.fwd[guestPort]; ok {
			return fmt.Sprintf("127.0.0.1:%d", h)
		}
	}
	panic(fmt.Sprintf("vm: machine %s forwards no guest port %d", m.name, guestPort))
}

// ForwardedURL returns "http://127.0.0.1:<port>" forwarded to guestPort.
func (m *Machine) ForwardedURL(guestPort int) string { return "http://" + m.ForwardedAddr(guestPort) }

// CutLink cuts the hub link of the first hub NIC (see Port.Cut).
func (m *Machine) CutLink() { m.firstHubPort().Cut() }

// HealLink heals the hub link of the first hub NIC.
func (m *Machine) HealLink() { m.firstHubPort().Heal() }

func (m *Machine) firstHubPort() *Port {
	for _, n := range m.nics {
		if n.port != nil {
			return n.port
		}
	}
	panic(fmt.Sprintf("vm: machine %s has no hub NIC", m.name))
}

// QMP returns the QMP connection of the current QEMU process.
func (m *Machine) QMP() *QMP {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.qmp
}

// Reboot resets the VM through QMP system_reset: a hard reset, the guest does not
// shut down first. QEMU 7.2 turns every reset into an exit under -no-reboot (the
// default, see Config.AllowReboot), QMP resets included; then Reboot waits for that
// exit and starts QEMU again with the same configuration, which to the guest is the
// same reset. With AllowReboot QEMU resets in place.
func (m *Machine) Reboot(t testing.TB) {
	t.Helper()
	if _, err := m.QMP().Execute("system_reset", nil); err != nil {
		m.fail(t, fmt.Errorf("reboot VM %s: %w", m.name, err))
	}
	if m.cfg.AllowReboot {
		return
	}
	if err, ok := m.awaitExit(30 * time.Second); !ok || err != nil {
		m.fail(t, fmt.Errorf("reboot VM %s: QEMU did not exit after system_reset under -no-reboot (exited %v, %v)", m.name, ok, err))
	}
	m.Restart(t)
}

// PowerDown presses the ACPI power button (QMP system_powerdown); the guest should
// shut down cleanly, and QEMU then exits (see WaitExit).
func (m *Machine) PowerDown(t testing.TB) {
	t.Helper()
	if _, err := m.QMP().Execute("system_powerdown", nil); err != nil {
		m.fail(t, fmt.Errorf("power down VM %s: %w", m.name, err))
	}
}

// PowerOff presses the ACPI power button every 5 s until QEMU exits, failing t
// if it has not within timeout. A single press can be lost while the guest has not
// loaded its power button driver yet; a real operator presses again too.
func (m *Machine) PowerOff(t testing.TB, timeout time.Duration) {
	t.Helper()
	if err := m.AwaitPowerOff(t, timeout); err != nil {
		m.fail(t, err)
	}
}

// AwaitPowerOff is PowerOff returning the error instead of failing t, for callers
// that carry on (and Kill the VM) after a guest that would not power off.
func (m *Machine) AwaitPowerOff(t testing.TB, timeout time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(ScaleTimeout(timeout))
	for presses := 0; ; presses++ {
		if exited, _ := m.Exited(); exited {
			if presses > 1 {
				t.Logf("VM %s powered off after %d presses of the power button", m.name, presses)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("VM %s did not power off within %v (%d presses of the power button)", m.name, ScaleTimeout(timeout), presses)
		}
		m.PowerDown(t)
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if exited, _ := m.Exited(); exited {
				break
			}
		}
	}
}

// SetLink sets the carrier of NIC i through QMP set_link (the guest sees link down).
func (m *Machine) SetLink(t testing.TB, i int, up bool) {
	t.Helper()
	if _, err := m.QMP().Execute("set_link", map[string]any{"name": m.nics[i].id, "up": up}); err != nil {
		m.fail(t, fmt.Errorf("set link of VM %s NIC %d: %w", m.name, i, err))
	}
}

// Kill ends QEMU at once (SIGKILL), like pulling the power cord, and waits for it.
func (m *Machine) Kill(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("kill VM %s: QEMU still running 10s after SIGKILL", m.name)
	}
}

// Exited reports whether QEMU has exited, and its exit error (nil for status 0).
func (m *Machine) Exited() (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.exited:
		return true, m.exitErr
	default:
		return false, nil
	}
}

// WaitExit waits until QEMU exits (a power-off, or a guest reboot under
// -no-reboot) and returns its exit error (nil for status 0). It fails t if QEMU is
// still running after timeout (scaled).
func (m *Machine) WaitExit(t testing.TB, timeout time.Duration) error {
	t.Helper()
	err, ok := m.awaitExit(timeout)
	if !ok {
		m.fail(t, fmt.Errorf("VM %s: QEMU still running after %v", m.name, ScaleTimeout(timeout)))
	}
	return err
}

func (m *Machine) awaitExit(timeout time.Duration) (error, bool) {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	select {
	case <-exited:
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.exitErr, true
	case <-time.After(ScaleTimeout(timeout)):
		return nil, false
	}
}

// stop ends QEMU (QMP quit, then SIGKILL) and frees everything the machine holds.
func (m *Machine) stop() {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.stopped = true
	cmd, exited, q := m.cmd, m.exited, m.qmp
	m.mu.Unlock()
	if cmd != nil {
		select {
		case <-exited:
		default:
			if q != nil {
				go q.Execute("quit", nil)
			}
			select {
			case <-exited:
			case <-time.After(3 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
	}
	if q != nil {
		q.Close()
	}
	m.mu.Lock()
	m.slot.release()
	m.slot = nil
	m.mu.Unlock()
	for _, f := range []*os.File{m.serialLog, m.stderrLog} {
		if f != nil {
			f.Close()
		}
	}
	os.RemoveAll(m.dir)
}

func (m *Machine) cleanup(t testing.TB) {
	m.stop()
	m.mu.Lock()
	printed := m.tailPrinted
	m.mu.Unlock()
	if t.Failed() && !printed {
		m.logTail(t)
	}
}

// logTail prints the last 50 console lines and where the artifacts are.
func (m *Machine) logTail(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	m.tailPrinted = true
	m.mu.Unlock()
	lines := m.console.tail(50)
	t.Logf("VM %s: last %d console lines (full log %s, command line in %s.cmdline):\n%s",
		m.name, len(lines), m.serialLog.Name(), filepath.Join(m.artifacts, m.name), strings.Join(lines, "\n"))
	if s := m.stderrTail(10); s != "" {
		t.Logf("VM %s: QEMU stderr:\n%s", m.name, s)
	}
}

// fail prints the console tail and fails t.
func (m *Machine) fail(t testing.TB, err error) {
	t.Helper()
	m.logTail(t)
	t.Fatal(err)
}

// Await waits up to timeout (scaled by TimeoutScale) for a console line, after the
// lines earlier waits consumed, that matches; it returns the line and consumes the
// console up to it (so waits see lines in console order; AwaitAll takes any order). It returns a *ConsoleError at once when a line shows a kernel
// panic or a `QUANTIX: fatal` marker first (unless the matcher accepts that line), or
// when QEMU exits.
func (m *Machine) Await(match Matcher, timeout time.Duration) (string, error) {
	return m.await(match, timeout)
}

func (m *Machine) await(match Matcher, timeout time.Duration) (string, error) {
	lines, err := m.awaitAll(timeout, match)
	if err != nil {
		return "", err
	}
	return lines[0], nil
}

// AwaitAll waits for one line per matcher, in any order (markers of services that
// start in parallel), and returns them in the matchers' order; the console is
// consumed up to the last of them. Failures are those of Await.
func (m *Machine) AwaitAll(timeout time.Duration, matchers ...Matcher) ([]string, error) {
	return m.awaitAll(timeout, matchers...)
}

func (m *Machine) awaitAll(timeout time.Duration, matchers ...Matcher) ([]string, error) {
	timeout = ScaleTimeout(timeout)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	found := make([]string, len(matchers))
	done := make([]bool, len(matchers))
	left := len(matchers)
	want := func() string {
		var w []string
		for i, mt := range matchers {
			if !done[i] {
				w = append(w, mt.String())
			}
		}
		return strings.Join(w, " and ")
	}
	for {
		m.console.mu.Lock()
		for m.cursor < len(m.console.lines) && left > 0 {
			line := m.console.lines[m.cursor]
			m.cursor++
			matched := false
			for i, mt := range matchers {
				if !done[i] && mt.Match(line) {
					found[i], done[i], matched = line, true, true
					left--
					break
				}
			}
			if matched {
				continue
			}
			if marker, reason := checkLine(line); reason != nil {
				m.console.mu.Unlock()
				return nil, &ConsoleError{Machine: m.name, Want: want(), Reason: reason, Line: line, Marker: marker}
			}
		}
		if left == 0 {
			m.console.mu.Unlock()
			return found, nil
		}
		changed := m.console.changed
		m.console.mu.Unlock()

		m.mu.Lock()
		exited := m.exited
		m.mu.Unlock()
		select {
		case <-exited:
			// The console was flushed before exited closed: one more pass sees
			// everything, then report the exit.
			m.console.mu.Lock()
			drained := m.cursor >= len(m.console.lines)
			m.console.mu.Unlock()
			if drained {
				m.mu.Lock()
				exitErr := m.exitErr
				m.mu.Unlock()
				status := "exit status 0"
				if exitErr != nil {
					status = exitErr.Error()
				}
				return nil, &ConsoleError{Machine: m.name, Want: want(), Reason: ErrExited,
					Detail: status + "; stderr: " + m.stderrTail(5)}
			}
			continue
		default:
		}
		select {
		case <-changed:
		case <-exited:
		case <-timer.C:
			return nil, &ConsoleError{Machine: m.name, Want: want(), Reason: ErrTimeout,
				Detail: fmt.Sprintf("after %v", timeout)}
		}
	}
}

// ExpectAll is AwaitAll failing t with the last console lines on error.
func (m *Machine) ExpectAll(t testing.TB, timeout time.Duration, matchers ...Matcher) []string {
	t.Helper()
	lines, err := m.awaitAll(timeout, matchers...)
	if err != nil {
		m.fail(t, err)
	}
	return lines
}

// Expect waits for a console line containing substr (see Await) and returns it; it
// fails t with the last console lines otherwise.
func (m *Machine) Expect(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	line, err := m.await(Contains(substr), timeout)
	if err != nil {
		m.fail(t, err)
	}
	return line
}

// ExpectRegexp waits for a console line matching expr and returns its submatches
// (index 0 is the whole match); it fails t otherwise.
func (m *Machine) ExpectRegexp(t testing.TB, expr string, timeout time.Duration) []string {
	t.Helper()
	mt := MatchRegexp(expr)
	line, err := m.await(mt, timeout)
	if err != nil {
		m.fail(t, err)
	}
	return mt.re.FindStringSubmatch(line)
}

// WaitMarker waits for a `QUANTIX: <kind>` marker whose fields hold the key/value
// pairs kv (an empty value: the field is present) and returns it parsed; it fails t
// otherwise. Example: m.WaitMarker(t, quantix.MarkerReady, time.Minute, "service", "network").
func (m *Machine) WaitMarker(t testing.TB, kind string, timeout time.Duration, kv ...string) quantix.Marker {
	t.Helper()
	mk, err := m.AwaitMarker(kind, timeout, kv...)
	if err != nil {
		m.fail(t, err)
	}
	return mk
}

// AwaitMarker is WaitMarker returning an error instead of failing a test.
func (m *Machine) AwaitMarker(kind string, timeout time.Duration, kv ...string) (quantix.Marker, error) {
	line, err := m.await(MatchMarker(kind, kv...), timeout)
	if err != nil {
		return quantix.Marker{}, err
	}
	mk, _ := quantix.ParseMarker(line)
	return mk, nil
}

// Lines returns every console line so far.
func (m *Machine) Lines() []string {
	m.console.mu.Lock()
	defer m.console.mu.Unlock()
	return append([]string(nil), m.console.lines...)
}

// Tail returns the last n console lines.
func (m *Machine) Tail(n int) []string { return m.console.tail(n) }

// Find returns every console line so far that matches, consumed or not.
func (m *Machine) Find(match Matcher) []string {
	var out []string
	for _, l := range m.Lines() {
		if match.Match(l) {
			out = append(out, l)
		}
	}
	return out
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// shellQuote joins args into one line a POSIX shell runs as the same command.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
