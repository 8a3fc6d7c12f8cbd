// Package images_test boots the Quantix ISOs in QEMU (tests/vm): each image four
// ways, {SeaBIOS, OVMF} x {CD, raw disk}, to `QUANTIX: boot-complete`, and with a
// config disk that sets the hostname. BenchmarkBoot measures boot-complete for the
// four ways next to the floor: the lab's bare kernel and minimal initramfs, made
// into an ISO by the same builder and booted the same way.
package images_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/images/spec"
	"github.com/quantix/quantix/tests/vm"
)

const bootTimeout = 120 * time.Second

var (
	isoMu   sync.Mutex
	isoDone = map[string]string{}
	isoDir  string
)

// builtISO builds images/<name>.toml once per test binary (warm: seconds) into a
// temporary folder and returns the ISO path.
func builtISO(t testing.TB, name string) string {
	t.Helper()
	isoMu.Lock()
	defer isoMu.Unlock()
	if p, ok := isoDone[name]; ok {
		return p
	}
	if isoDir == "" {
		d, err := os.MkdirTemp("", "qx-images-test-")
		if err != nil {
			t.Fatal(err)
		}
		isoDir = d
	}
	b, err := build.New(build.Config{Spec: name + ".toml", OutDir: isoDir}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	res, err := b.Build(context.Background())
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	isoDone[name] = res.ISO
	return res.ISO
}

func TestMain(m *testing.M) {
	code := m.Run()
	if isoDir != "" {
		os.RemoveAll(isoDir)
	}
	os.Exit(code)
}

// bootWay is one of the four ways an ISO boots.
type bootWay struct {
	name string
	cfg  func(iso string) vm.Config
}

var bootWays = []bootWay{
	{"bios-cd", func(iso string) vm.Config { return vm.Config{ISO: iso} }},
	{"bios-disk", func(iso string) vm.Config {
		return vm.Config{BootDisk: &vm.Disk{Path: iso, Interface: vm.IDE, Snapshot: true}}
	}},
	{"uefi-cd", func(iso string) vm.Config { return vm.Config{ISO: iso, Firmware: vm.UEFI} }},
	{"uefi-disk", func(iso string) vm.Config {
		return vm.Config{BootDisk: &vm.Disk{Path: iso, Snapshot: true}, Firmware: vm.UEFI}
	}},
}

func needVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
}

// TestBoot boots both images the four ways to boot-complete and checks the boot
// marker, the console warning that nothing persists without QUANTIX-CFG, and the
// default hostname.
func TestBoot(t *testing.T) {
	needVM(t)
	for _, name := range []string{quantix.ImageQuantixOS, quantix.ImageQvDC} {
		img, err := spec.Load(name + ".toml")
		if err != nil {
			t.Fatal(err)
		}
		iso := builtISO(t, name)
		for _, way := range bootWays {
			t.Run(name+"/"+way.name, func(t *testing.T) {
				t.Parallel() // the lab's slots keep it to two VMs machine-wide
				cfg := way.cfg(iso)
				cfg.Name = name + "-" + way.name
				cfg.NICs = []vm.NIC{{Hub: vm.NewHub(t, vm.HubConfig{})}} // the network service needs a NIC
				m := vm.Start(t, cfg)
				m.WaitMarker(t, quantix.MarkerBoot, bootTimeout, "image", img.Name, "version", img.Version)
				m.WaitMarker(t, quantix.MarkerWarning, bootTimeout, "service", "init")
				m.Expect(t, "init: hostname "+img.Hostname+" (from image default)", bootTimeout)
				mk := m.WaitMarker(t, quantix.MarkerBootComplete, bootTimeout)
				t.Logf("%s %s: boot-complete seconds=%s", name, way.name, mk.Get("seconds"))
				if name == quantix.ImageQuantixOS && way.name == "bios-cd" {
					// The hypervisor comes up after boot-complete: the extension
					// mounted, libvirtd answering, the default pool running.
					lv := m.WaitMarker(t, quantix.MarkerReady, bootTimeout, "service", "libvirtd")
					if lv.Get("persistent") != "false" || lv.Get("version") == "" || lv.Get("qemu") == "" {
						t.Errorf("libvirtd ready marker %q: want libvirt and QEMU versions and persistent=false (no QUANTIX-DATA)", lv)
					}
					bc, _ := strconv.ParseFloat(mk.Get("seconds"), 64)
					up, _ := strconv.ParseFloat(lv.Get("uptime"), 64)
					t.Logf("%s %s: hypervisor ready at uptime %.1f s, %.1f s after boot-complete (libvirtd service start to ready %s s, first API call %s s)",
						name, way.name, up, up-bc, lv.Get("seconds"), lv.Get("first_call_seconds"))
				}
			})
		}
	}
}

// TestConfigDiskHostname boots Quantix OS with a QUANTIX-CFG config disk (made by
// build.ConfigDisk, as qx-image config-disk does) whose hostname file wins over the
// kernel command line and the image default. Then it presses the ACPI power button:
// init stops the services, unmounts /quantix and powers off.
func TestConfigDiskHostname(t *testing.T) {
	needVM(t)
	iso := builtISO(t, quantix.ImageQuantixOS)
	cfgDisk := filepath.Join(t.TempDir(), "cfg.img")
	if err := build.ConfigDisk(cfgDisk, quantix.LabelConfig, 0, map[string][]byte{
		"hostname":             []byte("Lab-Node-7\n"),
		"network/network.toml": []byte("mode = \"dhcp\"\n"),
	}); err != nil {
		t.Fatal(err)
	}
	m := vm.Start(t, vm.Config{Name: "cfg-hostname", ISO: iso, Disks: []vm.Disk{{Path: cfgDisk}},
		NICs: []vm.NIC{{Hub: vm.NewHub(t, vm.HubConfig{})}}})
	m.Expect(t, "init: hostname lab-node-7 (from /quantix/hostname)", bootTimeout)
	m.WaitMarker(t, quantix.MarkerBootComplete, bootTimeout)
	for _, l := range m.Lines() {
		if mk, ok := quantix.ParseMarker(l); ok && mk.Kind == quantix.MarkerWarning && mk.Get("service") == "init" {
			t.Errorf("unexpected init warning with a config disk: %s", l)
		}
	}
	m.Expect(t, "power button ready", 60*time.Second) // its drivers load after boot-complete
	m.PowerDown(t)
	m.ExpectAll(t, 60*time.Second, vm.Contains("power button pressed"), vm.Contains("stopping services"),
		vm.Contains("msg=unmounted component=init dir=/quantix"), vm.Contains("action=poweroff"))
	if err := m.WaitExit(t, 60*time.Second); err != nil {
		t.Errorf("QEMU exit after power-off: %v", err)
	}
}

// BenchmarkBoot reports seconds to boot-complete for each image and way, and for
// the floor: from kernel start (the guest's uptime in the marker) and from QEMU start
// (firmware and boot menu included). TCG timings vary with the host's load: run
// several times, with
//
//	go test ./images -run '^$' -bench Boot -benchtime 3x -timeout 60m
func BenchmarkBoot(b *testing.B) {
	floor := floorISO(b)
	images := []struct{ name, iso string }{
		{"floor", floor},
		{quantix.ImageQuantixOS, builtISO(b, quantix.ImageQuantixOS)},
		{quantix.ImageQvDC, builtISO(b, quantix.ImageQvDC)},
	}
	for _, way := range bootWays {
		for _, img := range images {
			b.Run(way.name+"/"+img.name, func(b *testing.B) {
				var guest, wall float64
				for i := 0; i < b.N; i++ {
					cfg := way.cfg(img.iso)
					cfg.Name = fmt.Sprintf("bench-%s-%s-%d", img.name, way.name, i)
					cfg.NICs = []vm.NIC{{Hub: vm.NewHub(b, vm.HubConfig{})}}
					m := vm.Start(b, cfg)
					t0 := time.Now()
					mk := m.WaitMarker(b, quantix.MarkerBootComplete, bootTimeout)
					wall += time.Since(t0).Seconds()
					s, err := strconv.ParseFloat(mk.Get("seconds"), 64)
					if err != nil {
						b.Fatalf("boot-complete seconds=%q: %v", mk.Get("seconds"), err)
					}
					guest += s
					m.Kill(b)
				}
				// guest: kernel start to boot-complete (the guest's uptime);
				// wall: QEMU start (firmware, boot menu, kernel) to boot-complete.
				b.ReportMetric(guest/float64(b.N), "s-guest/boot")
				b.ReportMetric(wall/float64(b.N), "s-wall/boot")
			})
		}
	}
}

// BenchmarkBootPaired boots the floor and Quantix-OS (SeaBIOS, CD) in turn, b.N
// pairs, and reports both means and their ratio: TCG timings drift with the host's
// load, and interleaved boots see the same drift. QUANTIX_BASE_ISO adds a third
// ISO to each round (an earlier build, for before/after in one run):
//
//	QUANTIX_BASE_ISO=/tmp/old/quantix-os.iso go test ./images -run '^$' -bench BootPaired -benchtime 5x
func BenchmarkBootPaired(b *testing.B) {
	isos := []struct{ name, iso string }{{"floor", floorISO(b)}, {quantix.ImageQuantixOS, builtISO(b, quantix.ImageQuantixOS)}}
	if base := os.Getenv("QUANTIX_BASE_ISO"); base != "" {
		isos = append(isos, struct{ name, iso string }{"base", base})
	}
	sum := make([]float64, len(isos))
	for i := 0; i < b.N; i++ {
		for j, img := range isos {
			cfg := vm.Config{ISO: img.iso, Name: fmt.Sprintf("paired-%s-%d", img.name, i)}
			cfg.NICs = []vm.NIC{{Hub: vm.NewHub(b, vm.HubConfig{})}}
			m := vm.Start(b, cfg)
			mk := m.WaitMarker(b, quantix.MarkerBootComplete, bootTimeout)
			m.Kill(b)
			s, err := strconv.ParseFloat(mk.Get("seconds"), 64)
			if err != nil {
				b.Fatalf("%s boot-complete seconds=%q: %v", img.name, mk.Get("seconds"), err)
			}
			b.Logf("round %d %s: boot-complete at %.2f s guest uptime", i, img.name, s)
			sum[j] += s
		}
	}
	for j, img := range isos {
		b.ReportMetric(sum[j]/float64(b.N), "s-"+img.name)
		if j > 0 {
			b.ReportMetric(sum[j]/sum[0], "x-floor-"+img.name)
		}
	}
}

// floorISO is the lab's bare kernel and minimal initramfs (tests/vm testinit, which
// loads the same kind of drivers and prints boot-complete) in an ISO made by the
// same builder, with the same boot menu and timeout as the images.
func floorISO(b testing.TB) string {
	k := vm.TestKernel(b)
	initrd := vm.TestInitramfs(b)
	img, err := spec.Load(quantix.ImageQuantixOS + ".toml")
	if err != nil {
		b.Fatal(err)
	}
	boot := img.Boot
	// testinit writes to /dev/console: make the serial port the primary console.
	boot.Entries = []spec.BootEntry{{ID: "normal", Title: "floor", Cmdline: "console=tty0 console=ttyS0,115200", Default: true}}
	dir := b.TempDir()
	out := filepath.Join(dir, "floor.iso")
	if _, err := build.MakeISO(build.ISOConfig{
		Out: out, Name: "floor", Version: "0", VolumeLabel: "QXFLOOR", Boot: boot,
		Kernel: k.Vmlinuz, Initrd: initrd, WorkDir: filepath.Join(dir, "work"),
	}); err != nil {
		b.Fatal(err)
	}
	return out
}
