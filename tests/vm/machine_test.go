package vm

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// bootTimeout is the time a test kernel with the test initramfs needs to print its
// markers under TCG (docs/platform.md: 8-9 s to a console line; more when two VMs share
// the cores).
const bootTimeout = 60 * time.Second

func needVM(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU (slow); run without -short")
	}
}

// testMachine boots the test kernel and initramfs with the given command line.
func testMachine(t *testing.T, cfg Config) *Machine {
	t.Helper()
	cfg.Kernel = TestKernel(t).Vmlinuz
	cfg.Initrd = TestInitramfs(t)
	return Start(t, cfg)
}

// TestMachineLifecycle boots a VM with a forwarded user NIC and two extra disks and
// goes through everything a scenario does with one: markers, the forwarded port,
// QMP status, reset, power-off, restart.
func TestMachineLifecycle(t *testing.T) {
	needVM(t)
	dir := t.TempDir()
	var disks []Disk
	for i, iface := range []DiskInterface{VirtioBlk, IDE} {
		p := filepath.Join(dir, "disk"+string(rune('0'+i))+".img")
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, Disk{Path: p, Interface: iface, Snapshot: i == 1})
	}
	m := testMachine(t, Config{
		Name:   "life",
		Append: "vmtest.net=dhcp vmtest.http=8080 vmtest.disks=2",
		NICs:   []NIC{{User: true, Forward: []int{8080}}},
		Disks:  disks,
	})

	boot := m.WaitMarker(t, quantix.MarkerBoot, bootTimeout, "image", "vmtest")
	if boot.Get("version") == "" {
		t.Errorf("boot marker %q has no version", boot)
	}
	// The services start in parallel: their markers come in any order.
	lines := m.ExpectAll(t, bootTimeout,
		MatchMarker("vmtest-disks"),
		MatchMarker(quantix.MarkerReady, "service", "vmtest-http", "port", "8080"),
		// QEMU's user network hands out 10.0.2.15 even with restrict=on.
		MatchMarker(quantix.MarkerReady, "service", "vmtest-net", "addr", "10.0.2.15/24", "mac", m.MAC(0).String()),
	)
	if d, _ := quantix.ParseMarker(lines[0]); d.Get("names") != "sda,vda" {
		t.Errorf("guest disks = %q, want sda,vda (one IDE, one virtio)", d.Get("names"))
	}
	m.WaitMarker(t, quantix.MarkerBootComplete, bootTimeout)

	resp, err := http.Get(m.ForwardedURL(8080) + "/hello")
	if err != nil {
		t.Fatalf("GET through the forwarded port: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got, want := string(body), "quantix vmtest /hello\n"; got != want {
		t.Errorf("GET %s/hello = %q, want %q", m.ForwardedURL(8080), got, want)
	}

	if st, err := m.QMP().Status(); err != nil || st != "running" {
		t.Fatalf("QMP query-status = %q, %v; want running", st, err)
	}

	// Reboot works under -no-reboot too: the guest boots again.
	m.Reboot(t)
	m.WaitMarker(t, quantix.MarkerBoot, bootTimeout, "image", "vmtest")
	m.WaitMarker(t, quantix.MarkerBootComplete, bootTimeout)
	if st, err := m.QMP().Status(); err != nil || st != "running" {
		t.Fatalf("QMP query-status after reboot = %q, %v; want running", st, err)
	}

	// system_powerdown presses the ACPI button; testinit powers off; QEMU exits 0.
	m.PowerDown(t)
	m.WaitMarker(t, "vmtest-power", 30*time.Second, "button", "pressed")
	if err := m.WaitExit(t, 30*time.Second); err != nil {
		t.Fatalf("QEMU exit after power-off: %v", err)
	}
	if _, err := m.Await(Contains("anything"), time.Second); !errors.Is(err, ErrExited) {
		t.Errorf("Await after exit = %v, want ErrExited", err)
	}

	// Restart boots the same machine again.
	m.Restart(t)
	m.WaitMarker(t, quantix.MarkerBootComplete, bootTimeout)
	if n := len(m.Find(MatchMarker(quantix.MarkerBoot))); n != 3 {
		t.Errorf("boot markers in the console = %d, want 3 (boot, reset, restart)", n)
	}
	for _, suffix := range []string{".serial.log", ".qemu-stderr.log", ".cmdline"} {
		if _, err := os.Stat(filepath.Join(m.ArtifactDir(), "life"+suffix)); err != nil {
			t.Errorf("artifact: %v", err)
		}
	}
	if !strings.Contains(m.CommandLine(), "-device virtio-rng-pci") {
		t.Errorf("command line lacks virtio-rng: %s", m.CommandLine())
	}
}

// TestConsoleFailures boots guests that fail and checks that a wait ends at once
// with the reason and the line, instead of running into its timeout.
func TestConsoleFailures(t *testing.T) {
	needVM(t)
	for _, tc := range []struct {
		name   string
		append string
		reason error
		line   string
	}{
		{name: "panic", append: "vmtest.action=panic", reason: ErrKernelPanic, line: KernelPanicText},
		{name: "fatal", append: "vmtest.action=fatal", reason: ErrFatalMarker, line: "QUANTIX: fatal service=vmtest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testMachine(t, Config{Name: tc.name, Append: tc.append})
			// A long timeout: only the failure detection can end this wait early.
			const long = 10 * time.Minute
			start := time.Now()
			_, err := m.Await(Contains("this line is never printed"), long)
			if !errors.Is(err, tc.reason) {
				t.Fatalf("Await = %v, want %v", err, tc.reason)
			}
			var ce *ConsoleError
			if !errors.As(err, &ce) || !strings.Contains(ce.Line, tc.line) {
				t.Errorf("error line = %q, want it to contain %q", ce.Line, tc.line)
			}
			if took := time.Since(start); took > long/2 {
				t.Errorf("the failure took %v to detect", took)
			}
			tail := strings.Join(m.Tail(50), "\n")
			if !strings.Contains(tail, tc.line) {
				t.Errorf("the console tail lacks %q", tc.line)
			}
			if tc.reason == ErrKernelPanic {
				// panic=-1 reboots at once and -no-reboot turns that into an exit.
				if err := m.WaitExit(t, 30*time.Second); err != nil {
					t.Errorf("QEMU exit after the panic: %v", err)
				}
			}
		})
	}
}

// TestUEFI boots the test kernel through OVMF.
func TestUEFI(t *testing.T) {
	needVM(t)
	m := testMachine(t, Config{Name: "uefi", Firmware: UEFI})
	m.WaitMarker(t, quantix.MarkerBootComplete, 2*bootTimeout)
	if !strings.Contains(m.CommandLine(), "if=pflash") {
		t.Errorf("UEFI command line without pflash: %s", m.CommandLine())
	}
	if !strings.Contains(strings.Join(m.Lines(), "\n"), "efi: EFI v") {
		t.Errorf("the kernel did not report booting through EFI")
	}
}

// TestTwoVMsOnOneHub is the lab's network end to end: two VMs get DHCP leases from
// the hub, reach the gateway, and one is cut off and healed while the other goes on.
func TestTwoVMsOnOneHub(t *testing.T) {
	needVM(t)
	Reserve(t, 2)
	hub := NewHub(t, HubConfig{Name: "lan"})
	const cmdline = "vmtest.net=dhcp vmtest.ping=10.77.0.1"
	a := testMachine(t, Config{Name: "a", Append: cmdline, NICs: []NIC{{Hub: hub}}})
	b := testMachine(t, Config{Name: "b", Append: cmdline, NICs: []NIC{{Hub: hub}}})

	addrs := map[*Machine]string{}
	for _, m := range []*Machine{a, b} {
		mk := m.WaitMarker(t, quantix.MarkerReady, 2*bootTimeout, "service", "vmtest-net", "mac", m.MAC(0).String(), "source", "dhcp")
		addrs[m] = mk.Get("addr")
		l, ok := hub.Lease(m.MAC(0))
		if !ok || l.State != "bound" || l.IP.String()+"/24" != addrs[m] {
			t.Errorf("VM %s says %s, hub lease %v", m.Name(), addrs[m], l)
		}
		if mk.Get("gateway") != "10.77.0.1" || mk.Get("server") != "10.77.0.1" {
			t.Errorf("VM %s lease: gateway %q server %q, want 10.77.0.1", m.Name(), mk.Get("gateway"), mk.Get("server"))
		}
		m.WaitMarker(t, "vmtest-ping", bootTimeout, "addr", "10.77.0.1", "reachable", "true")
	}
	if addrs[a] == addrs[b] {
		t.Fatalf("both VMs got %s", addrs[a])
	}

	// Cut a: its pings stop reaching the gateway, and nothing of it reaches the
	// segment, while b carries on.
	cutAt := time.Now()
	a.CutLink()
	a.WaitMarker(t, "vmtest-ping", 30*time.Second, "reachable", "false")
	before, beforeB := a.Port(0).Stats(), b.Port(0).Stats()
	time.Sleep(2 * time.Second)
	after, afterB := a.Port(0).Stats(), b.Port(0).Stats()
	if after.RxFrames != before.RxFrames || after.RxDropped <= before.RxDropped {
		t.Errorf("cut port of a: frames in %d -> %d, dropped %d -> %d; want no frames in, more dropped",
			before.RxFrames, after.RxFrames, before.RxDropped, after.RxDropped)
	}
	if afterB.RxFrames <= beforeB.RxFrames {
		t.Errorf("port of b: frames in %d -> %d while a was cut; want b to go on", beforeB.RxFrames, afterB.RxFrames)
	}
	healAt := time.Now()
	a.HealLink()
	a.WaitMarker(t, "vmtest-ping", 30*time.Second, "reachable", "true")
	if got := b.Find(MatchMarker("vmtest-ping", "reachable", "false")); len(got) != 0 {
		t.Errorf("b lost the gateway while a was cut: %q", got)
	}

	// QMP set_link takes the carrier away instead: b loses the gateway, then has it back.
	b.SetLink(t, 0, false)
	b.WaitMarker(t, "vmtest-ping", 30*time.Second, "reachable", "false")
	b.SetLink(t, 0, true)
	b.WaitMarker(t, "vmtest-ping", 30*time.Second, "reachable", "true")

	frames, err := ReadPcap(hub.PcapPath())
	if err != nil {
		t.Fatal(err)
	}
	dhcp := map[string]map[string]bool{} // MAC -> DHCP message types
	fromA := 0
	for _, f := range frames {
		src := FrameSource(f.Data).String()
		if src == a.MAC(0).String() && f.Time.After(cutAt) && f.Time.Before(healAt) {
			fromA++
		}
		if msg, ok := ParseDHCP(f.Data); ok {
			c := msg.ClientHWAddr.String()
			if dhcp[c] == nil {
				dhcp[c] = map[string]bool{}
			}
			dhcp[c][msg.MessageType().String()] = true
		}
	}
	if fromA != 0 {
		t.Errorf("pcap: %d frames from a while its link was cut", fromA)
	}
	for _, m := range []*Machine{a, b} {
		for _, typ := range []string{"DISCOVER", "OFFER", "REQUEST", "ACK"} {
			if !dhcp[m.MAC(0).String()][typ] {
				t.Errorf("pcap: no DHCP %s for %s (%s); saw %v", typ, m.Name(), m.MAC(0), dhcp)
			}
		}
	}
}

// testISO makes a hybrid GRUB ISO (BIOS and UEFI, CD and raw disk) that boots the
// test kernel and initramfs on the serial console.
func testISO(t testing.TB) string {
	t.Helper()
	for _, tool := range []string{"grub-mkrescue", "xorriso", "mformat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run make deps (apt-get install grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools)", tool)
		}
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "boot", "grub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{TestKernel(t).Vmlinuz: "vmlinuz", TestInitramfs(t): "initrd"} {
		if err := copyFile(src, filepath.Join(root, dst)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := `serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry vmtest {
	linux /vmlinuz console=ttyS0,115200 panic=-1
	initrd /initrd
}
`
	if err := os.WriteFile(filepath.Join(root, "boot", "grub", "grub.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "vmtest.iso")
	if out, err := exec.Command("grub-mkrescue", "-o", iso, root).CombinedOutput(); err != nil {
		t.Fatalf("grub-mkrescue: %v\n%s", err, out)
	}
	return iso
}

// TestISOBoot boots a hybrid ISO the two ways the product's ISOs are booted that
// the kernel tests do not cover: as a CD, and written raw to a disk.
func TestISOBoot(t *testing.T) {
	needVM(t)
	iso := testISO(t)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"cd-bios", Config{ISO: iso}},
		{"disk-uefi", Config{BootDisk: &Disk{Path: iso, Snapshot: true}, Firmware: UEFI}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Name = tc.name
			m := Start(t, tc.cfg)
			m.WaitMarker(t, quantix.MarkerBootComplete, 2*bootTimeout)
		})
	}
}

// TestSequentialVMsFreeSlots boots more VMs one after another in one test than the
// machine has slots, each killed before the next: a VM that is off must give its
// slot back, or the last Start waits on the test itself until go test's timeout.
func TestSequentialVMsFreeSlots(t *testing.T) {
	needVM(t)
	n, err := Slots()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= n; i++ {
		m := testMachine(t, Config{Name: fmt.Sprintf("seq-%d", i)})
		m.WaitMarker(t, quantix.MarkerBoot, 2*bootTimeout)
		m.Kill(t)
	}
}
