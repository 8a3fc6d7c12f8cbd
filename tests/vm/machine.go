package vm

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Machine is a running (or exited) QEMU VM: its lifecycle (start, power, reset,
// kill, restart), its NICs, and its serial console, whose waits (Await*, Expect*,
// Wait*) it carries as its own.
type Machine struct {
	*Console

	cfg       Config
	name      string
	accel     string
	args      []string
	dir       string // short folder for sockets and the UEFI variable store
	artifacts string
	qmpPath   string
	serialLog *os.File
	stderrLog *os.File
	nics      []attachedNIC

	mu      sync.Mutex
	cmd     *exec.Cmd
	qmp     *QMP
	exited  chan struct{}
	exitErr error
	stdin   io.WriteCloser // the guest's first serial port (QEMU -serial stdio)
	slot    *slot
	stopped bool
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
	if err := cfg.setDefaults(); err != nil {
		return nil, err
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
	devices, nics, err := plan(cfg, t.Name(), m.dir, m.qmpPath)
	if err != nil {
		return nil, err
	}
	m.args, m.nics = qemuArgs(devices), nics
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
	m.Console = newConsole(m.name, m.serialLog)
	m.Console.diag = func() string { return m.stderrTail(10) }

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
	cmd.Stdout = m.Console.input()
	cmd.Stderr = m.stderrLog
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("start %s: %w", qemu, err)
	}
	// QEMU must not outlive a test binary that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", qemu, err)
	}
	exited := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.exited, m.exitErr, m.stdin = cmd, exited, nil, stdin
	m.mu.Unlock()
	m.Console.attach(exited, m.exitStatus)
	go func() {
		err := cmd.Wait()
		m.Console.flush()
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

// exitStatus describes how QEMU exited, for console waits that it ended.
func (m *Machine) exitStatus() string {
	m.mu.Lock()
	exitErr := m.exitErr
	m.mu.Unlock()
	status := "exit status 0"
	if exitErr != nil {
		status = exitErr.Error()
	}
	return status + "; stderr: " + m.stderrTail(5)
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
	m.Console.write([]byte("--- vmtest: starting " + m.name + " again ---\n"))
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
	if err, ok := m.exit(30 * time.Second); !ok || err != nil {
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

// Type sends s to the guest's first serial port, as typed on its console.
func (m *Machine) Type(t testing.TB, s string) {
	t.Helper()
	m.mu.Lock()
	w := m.stdin
	m.mu.Unlock()
	if _, err := io.WriteString(w, s); err != nil {
		t.Fatalf("type on %s's serial console: %v", m.name, err)
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
	err, ok := m.exit(timeout)
	if !ok {
		m.fail(t, fmt.Errorf("VM %s: QEMU still running after %v", m.name, ScaleTimeout(timeout)))
	}
	return err
}

// exit waits up to timeout (scaled) for QEMU to exit and returns its exit error
// and whether it exited.
func (m *Machine) exit(timeout time.Duration) (error, bool) {
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

// cleanup stops the machine when its test ends and prints the console tail of a
// failed test (unless a failing wait printed it).
func (m *Machine) cleanup(t testing.TB) {
	m.stop()
	if t.Failed() && !m.Console.tailPrinted() {
		m.Console.logTail(t)
	}
}
