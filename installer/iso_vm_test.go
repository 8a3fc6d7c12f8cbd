package installer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/vdc/vdctest"
)

// The ISO tests boot the real images (out/*.iso, made by `make iso`) in the lab:
// the installer runs from the image against a blank virtio disk with an answer file
// on a QUANTIX-INSTALL config disk, powers off, and the installed disk is booted on
// SeaBIOS and on OVMF (twice), where init must mount the answer file's
// configuration. The ISO is attached as a CD (the boot medium the installer copies
// from); the kernel is started directly so the command line can carry
// quantix.install=install.toml (the ISO menu's install entry is interactive).

// testISO returns out/<image>.iso (vm.ISO), failing when it is missing or predates
// the installer.
func testISO(t *testing.T, image string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots the ISOs in QEMU: skipped with -short")
	}
	iso := vm.ISO(t, image)
	med, err := OpenMedium(iso)
	if err != nil {
		t.Fatal(err)
	}
	defer med.Close()
	if _, err := ReadSource(med); err != nil {
		t.Fatalf("%s cannot be installed from: %v: rebuild it with make iso once images/ ships qx-install, mkfs.ext4 and %s", iso, err, MediumBootDir)
	}
	return iso
}

// extract copies the ISO's kernel and initramfs to files for a direct kernel boot.
func extract(t *testing.T, iso string) (kernel, initrd string) {
	med, err := OpenMedium(iso)
	if err != nil {
		t.Fatal(err)
	}
	defer med.Close()
	dir := t.TempDir()
	for name, dst := range map[string]*string{MediumKernel: &kernel, MediumInitrd: &initrd} {
		b, err := med.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		*dst = filepath.Join(dir, filepath.Base(name))
		if err := os.WriteFile(*dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd
}

func blankDisk(t *testing.T, size int64) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func answerDisk(t *testing.T, answer string) string {
	p := filepath.Join(t.TempDir(), "answer.img")
	vm.ConfigDisk(t, p, quantix.LabelInstall, map[string][]byte{"install.toml": []byte(answer)})
	return p
}

// runInstaller boots the image's kernel with quantix.install=install.toml, the ISO
// as a CD, the target disks and the answer disk.
func runInstaller(t *testing.T, name, iso string, disks []string, answer string) (*vm.Machine, string) {
	kernel, initrd := extract(t, iso)
	ans := answerDisk(t, answer)
	var ds []vm.Disk
	for _, d := range disks {
		ds = append(ds, vm.Disk{Path: d})
	}
	ds = append(ds, vm.Disk{Path: ans})
	m := vm.Start(t, vm.Config{
		Name: name, Kernel: kernel, Initrd: initrd, MemoryMB: 2048,
		Append:  "console=ttyS0,115200 panic=-1 scsi_mod.scan=sync quantix.install=install.toml",
		Disks:   ds,
		Devices: []vm.Device{vm.CD{Path: iso}},
	})
	return m, ans
}

// isoAnswer is an answer file; token is the agent's join token (qx1.<pin>.<secret>:
// labVDC's for a node that joins, offlineToken for one that never reaches a vDC).
func isoAnswer(image, hostname, target string, wipe bool, token string) string {
	s := fmt.Sprintf("hostname = %q\nwipe = %v\nafter = \"poweroff\"\n[target]\n%s\n[network]\nmode = \"dhcp\"\n[network.dhcp]\ntimeout = \"3s\"\nfallback = \"link-local\"\n", hostname, wipe, target)
	if image == quantix.ImageQuantixOS {
		s += fmt.Sprintf("[agent]\ncontrol_plane = %q\njoin_token = %q\n", labVDCURL, token)
	} else {
		s += "[vdc]\nadmin_token = \"admin-token-0123456789\"\n"
	}
	return s
}

func TestISOInstall(t *testing.T) {
	for _, image := range []string{quantix.ImageQuantixOS, quantix.ImageQvDC} {
		t.Run(image, func(t *testing.T) {
			iso := testISO(t, image)
			target := blankDisk(t, 4<<30)
			hostname := "installed-" + strings.ReplaceAll(image, "-", "")
			t0 := time.Now()
			// The installed node joins a real vDC on the lab segment: the one
			// node_id it gets on its first boot must come back on every later boot.
			// Its join token carries that vDC's agent CA pin.
			hub := vm.NewHub(t, vm.HubConfig{Name: "hub-" + image})
			var vdc *vdctest.VDC
			token := offlineToken
			if image == quantix.ImageQuantixOS {
				vdc = labVDC(t, hub)
				token = vdc.JoinToken
			}
			m, ans := runInstaller(t, "install-"+image, iso, []string{target}, isoAnswer(image, hostname, "only_empty = true", false, token))
			mk := m.WaitMarker(t, quantix.MarkerInstallComplete, 10*time.Minute, "hostname", hostname)
			m.WaitExit(t, 2*time.Minute)
			t.Logf("%s: install took %s in the guest, %.1fs from QEMU start to power-off (%s)", image, mk.Get("seconds"), time.Since(t0).Seconds(), m.Accel())
			if log, err := exec.Command("debugfs", "-R", "cat /qx-install.log", ans).Output(); err != nil || !strings.Contains(string(log), "Install complete") {
				t.Errorf("qx-install.log on the answer disk: %v\n%s", err, log)
			}
			nodeID := ""
			for i, fw := range []vm.Firmware{vm.BIOS, vm.UEFI, vm.UEFI} {
				b0 := time.Now()
				b := vm.Start(t, vm.Config{Name: fmt.Sprintf("installed-%s-%d-%s", image, i, fw), Firmware: fw, MemoryMB: 2048,
					BootDisk: &vm.Disk{Path: target}, NICs: []vm.NIC{{Hub: hub}}})
				// The hostname line proves init mounted this disk's QUANTIX-CFG.
				b.Expect(t, "init: hostname "+hostname+" (from /quantix/hostname)", 3*time.Minute)
				// Markers of services that start in parallel come in any order.
				matchers := []vm.Matcher{vm.MatchMarker(quantix.MarkerBootComplete)}
				if vdc != nil {
					matchers = append(matchers, vm.MatchMarker(quantix.MarkerReady, "service", "agent"))
				}
				lines := b.ExpectAll(t, 5*time.Minute, matchers...)
				mk, _ := quantix.ParseMarker(lines[0])
				t.Logf("%s boot %d (%s): boot-complete at %s s guest uptime, %.1fs wall", image, i, fw, mk.Get("seconds"), time.Since(b0).Seconds())
				if vdc != nil {
					agent, _ := quantix.ParseMarker(lines[1])
					nodeID = checkRegistered(t, agent, vdc, hostname, nodeID, i)
				}
				b.PowerOff(t, 2*time.Minute)
			}
		})
	}
}

// A disk holding data without wipe = true is refused by the image's installer and
// left byte-identical; the failure is a fatal marker, not a reboot.
func TestISOInstallRefusesDataDisk(t *testing.T) {
	iso := testISO(t, quantix.ImageQuantixOS)
	target := blankDisk(t, 4<<30)
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", "-L", "precious", target).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s (apt-get install e2fsprogs)", err, out)
	}
	before := fileSHA(t, target)
	m, _ := runInstaller(t, "install-refused", iso, []string{target}, isoAnswer(quantix.ImageQuantixOS, "refused", `path = "/dev/vda"`, false, offlineToken))
	_, err := m.AwaitMarker(quantix.MarkerInstallComplete, 10*time.Minute)
	var me *quantix.MarkerError
	if !errors.As(err, &me) || !strings.Contains(me.Marker.Get("err"), "set wipe = true") {
		t.Fatalf("installer on a disk holding ext4 without wipe: %v, want a fatal marker saying set wipe = true", err)
	}
	m.Kill(t)
	if after := fileSHA(t, target); after != before {
		t.Fatalf("refused disk changed: sha256 %s -> %s", before, after)
	}
}

// A second disk carrying an earlier install's QUANTIX-* labels, attached before
// the installed disk (it is vda), does not change which partitions the installed
// system mounts: init follows quantix.disk=<GUID> to the disk it booted from.
func TestISOInstallIgnoresStaleDisk(t *testing.T) {
	iso := testISO(t, quantix.ImageQuantixOS)
	// The stale disk: a complete earlier install (made on the host) with another hostname.
	s := fakeSystem(t, fakeDisk{Name: "vda", Size: MinDiskSize, Serial: "QX-SERIAL-1"})
	if _, _, _, err := install(t, s, quantix.ImageQuantixOS, strings.Replace(testAnswerOS, `"Node-7"`, `"stale-node"`, 1)); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.DevDir, "vda")
	target := blankDisk(t, 4<<30)
	m, _ := runInstaller(t, "install-stale", iso, []string{stale, target}, isoAnswer(quantix.ImageQuantixOS, "fresh-node", `path = "/dev/vdb"`, false, offlineToken))
	m.WaitMarker(t, quantix.MarkerInstallComplete, 10*time.Minute, "hostname", "fresh-node")
	// The stale labels were reported (before the marker, so look back, not ahead).
	if len(m.Find(vm.Contains("carries QUANTIX-CFG"))) == 0 {
		t.Errorf("the installer did not report the stale disk's QUANTIX-CFG label")
	}
	m.WaitExit(t, 2*time.Minute)
	b := vm.Start(t, vm.Config{Name: "installed-with-stale", MemoryMB: 2048,
		BootDisk: &vm.Disk{Path: target}, Disks: []vm.Disk{{Path: stale, Snapshot: true}}})
	b.Expect(t, "init: hostname fresh-node (from /quantix/hostname)", 3*time.Minute)
}

// The lab vDC: a real vDC (real PostgreSQL) on the host, served on the lab
// segment at the workstation's address, as the installed nodes' answer file says.
const (
	labJoinToken = "installer-lab-join-token-5d2e"
	labVDCPort   = 8080
)

// labVDCURL is TLS: the agent port speaks both, agents only TLS.
var labVDCURL = fmt.Sprintf("https://%s:%d", vm.WorkstationAddr.Addr(), labVDCPort)

// offlineToken is a well-formed join token for nodes that never reach a vDC.
var offlineToken = quantix.FormatJoinToken(strings.Repeat("A", 43), labJoinToken)

func labVDC(t *testing.T, hub *vm.Hub) *vdctest.VDC {
	v := vdctest.Start(t, vdctest.Options{JoinTokens: []string{labJoinToken}})
	ws := vm.NewWorkstation(t, hub, vm.WorkstationMAC, vm.WorkstationAddr)
	ws.Forward(t, labVDCPort, strings.TrimPrefix(v.URL, "http://"))
	return v
}

// checkRegistered takes the agent's ready marker of boot i and checks that
// the vDC holds exactly one node of that hostname, with the same node_id on every
// boot, and that only the first boot registered it anew. It returns the node_id.
func checkRegistered(t *testing.T, mk quantix.Marker, v *vdctest.VDC, hostname, want string, i int) string {
	t.Helper()
	id, reg := mk.Get("node_id"), mk.Get("registration")
	if i == 0 && reg != quantix.RegistrationRegistered {
		t.Errorf("boot %d: first registration is %q, want %q", i, reg, quantix.RegistrationRegistered)
	}
	if want != "" && (id != want || reg == quantix.RegistrationRegistered) {
		t.Errorf("boot %d: agent is node %s (%s), want the first boot's node %s again", i, id, reg, want)
	}
	var mine []quantix.Node
	for _, n := range v.Nodes(t) {
		if n.Hostname == hostname {
			mine = append(mine, n)
		}
	}
	if len(mine) != 1 || mine[0].ID != id {
		t.Errorf("boot %d: the vDC lists %+v for %s, want one node %s", i, mine, hostname, id)
	}
	t.Logf("boot %d: node %s %s at the vDC", i, id, reg)
	return id
}

// The interactive installer driven through the serial console, as an operator
// at a serial terminal would: every question answered by typing (static
// network, a console password), the plan confirmed by the disk's name; the
// installed disk then boots with that hostname and address and joins the vDC.
func TestISOInstallInteractive(t *testing.T) {
	iso := testISO(t, quantix.ImageQuantixOS)
	target := blankDisk(t, 4<<30)
	hub := vm.NewHub(t, vm.HubConfig{Name: "hub-interactive"})
	vdc := labVDC(t, hub)
	kernel, initrd := extract(t, iso)
	m := vm.Start(t, vm.Config{
		Name: "install-interactive", Kernel: kernel, Initrd: initrd, MemoryMB: 2048,
		Append:  "console=ttyS0,115200 panic=-1 scsi_mod.scan=sync quantix.install=interactive",
		Disks:   []vm.Disk{{Path: target}},
		Devices: []vm.Device{vm.CD{Path: iso}},
	})
	lines := m.ExpectRegexp(t, `^\s*([0-9]+)\) .*\bvda\b`, 5*time.Minute)
	const hostname = "serial-node"
	for _, qa := range []struct{ prompt, answer string }{
		{"Install on which disk", lines[1]},
		{"Hostname", hostname},
		{"Network: dhcp or static", "static"},
		{"Network interface", ""},
		{"Address with prefix length", "10.77.0.50/24"},
		{"Gateway", ""},
		{"DNS servers", ""},
		{"vDC URL", labVDCURL},
		{"Join token", vdc.JoinToken},
		{"Console password (at least", "serial-pass-1"},
		{"Console password again", "serial-pass-1"},
		{"Write this plan to /dev/vda", "vda"},
	} {
		m.ExpectPrompt(t, qa.prompt, 2*time.Minute)
		m.Type(t, qa.answer+"\n")
	}
	mk := m.WaitMarker(t, quantix.MarkerInstallComplete, 10*time.Minute, "hostname", hostname)
	t.Logf("interactive install took %s s in the guest (%s)", mk.Get("seconds"), m.Accel())
	m.WaitExit(t, 2*time.Minute) // after = reboot: QEMU runs with -no-reboot

	b := vm.Start(t, vm.Config{Name: "installed-interactive", MemoryMB: 2048,
		BootDisk: &vm.Disk{Path: target}, NICs: []vm.NIC{{Hub: hub}}})
	b.Expect(t, "init: hostname "+hostname+" (from /quantix/hostname)", 3*time.Minute)
	got := b.ExpectAll(t, 5*time.Minute, vm.MatchMarker(quantix.MarkerReady, "service", "network", "addr", "10.77.0.50/24", "source", "static"),
		vm.MatchMarker(quantix.MarkerReady, "service", "agent"))
	agent, _ := quantix.ParseMarker(got[1])
	checkRegistered(t, agent, vdc, hostname, "", 0)
	b.PowerOff(t, 2*time.Minute)
}
