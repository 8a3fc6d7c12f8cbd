package vm

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// bootTimeout is the time a test kernel with the test initramfs needs to print its
// markers under TCG (PLATFORM.md: 8-9 s to a console line; more when two VMs share
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
