package vm

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDeviceArgs: each device adds exactly its own arguments.
func TestDeviceArgs(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	for _, tc := range []struct {
		name string
		dev  Device
		want []string
	}{
		{"base", Base{Name: "n1", Machine: "pc", Accel: "tcg", MemoryMB: 1536, CPUs: 1, QMP: "/tmp/q.sock"}, []string{
			"-name", "n1", "-machine", "pc", "-accel", "tcg", "-m", "1536", "-smp", "1",
			"-nodefaults", "-vga", "std", "-display", "none", "-serial", "stdio", "-monitor", "none",
			"-qmp", "unix:/tmp/q.sock,server=on,wait=off", "-device", "virtio-rng-pci"}},
		{"no reboot", NoReboot{}, []string{"-no-reboot"}},
		{"uefi", UEFIFirmware{Code: "/c.fd", Vars: "/v.fd"}, []string{
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/c.fd", "-drive", "if=pflash,format=raw,unit=1,file=/v.fd"}},
		{"kernel", KernelBoot{Kernel: "/k", Append: "console=ttyS0"}, []string{"-kernel", "/k", "-append", "console=ttyS0"}},
		{"kernel and initrd", KernelBoot{Kernel: "/k", Initrd: "/i", Append: "a"}, []string{"-kernel", "/k", "-append", "a", "-initrd", "/i"}},
		{"boot cd", CD{ID: "cd0", Path: "/x.iso", Boot: true}, []string{
			"-drive", "file=/x.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on", "-device", "ide-cd,drive=cd0,bootindex=0"}},
		{"second cd, default id", CD{Path: "/y.iso"}, []string{
			"-drive", "file=/y.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on", "-device", "ide-cd,drive=cd0"}},
		{"virtio disk", Drive{ID: "disk0", Disk: Disk{Path: "/d"}}, []string{"-drive", "file=/d,format=raw,if=none,id=disk0", "-device", "virtio-blk-pci,drive=disk0"}},
		{"ide boot disk, read-only snapshot", Drive{ID: "disk1", Disk: Disk{Path: "/d", Interface: IDE, ReadOnly: true, Snapshot: true}, Boot: true}, []string{
			"-drive", "file=/d,format=raw,if=none,id=disk1,readonly=on,snapshot=on", "-device", "ide-hd,drive=disk1,bootindex=0"}},
		{"hub nic", HubNIC{ID: "nic0", Netdev: "n0", Model: "virtio-net-pci", MAC: mac, PeerPath: "/p", HubPath: "/h"}, []string{
			"-netdev", "dgram,id=n0,local.type=unix,local.path=/p,remote.type=unix,remote.path=/h",
			"-device", "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:12:34:56"}},
		{"user nic", UserNIC{ID: "nic1", Netdev: "n1", Model: "e1000", MAC: mac, Forwards: []Forward{{Guest: 8080, Host: 40001}, {Guest: 22, Host: 40002}}}, []string{
			"-netdev", "user,id=n1,restrict=on,hostfwd=tcp:127.0.0.1:40001-:8080,hostfwd=tcp:127.0.0.1:40002-:22",
			"-device", "e1000,netdev=n1,id=nic1,mac=52:54:00:12:34:56"}},
		{"serial socket", SerialSocket{ID: "ttyS1", Path: "/s.sock"}, []string{
			"-chardev", "socket,id=ttyS1,path=/s.sock,server=on,wait=off", "-serial", "chardev:ttyS1"}},
	} {
		if diff := cmp.Diff(tc.want, tc.dev.Args()); diff != "" {
			t.Errorf("%s: Args (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestPlan turns a whole Config into the command line, without QEMU: devices in
// order, defaults filled in, the hub port and forwarded ports made.
func TestPlan(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kernel, initrd, cfgDisk, data := file("vmlinuz"), file("initrd"), file("cfg.img"), file("data.img")
	hub := NewHub(t, HubConfig{DHCPOff: true})
	cfg := Config{Name: "node", Kernel: kernel, Initrd: initrd, Append: "quantix.x=1",
		Disks:   []Disk{{Path: cfgDisk}, {Path: data, Interface: IDE, Snapshot: true}},
		NICs:    []NIC{{Hub: hub}, {User: true, Forward: []int{8080}, Model: "e1000"}},
		Devices: []Device{SerialSocket{ID: "ttyS1", Path: "/s.sock"}},
		Accel:   "tcg"}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	devices, nics, err := plan(cfg, t.Name(), dir, "/q.sock")
	if err != nil {
		t.Fatal(err)
	}
	if len(nics) != 2 || nics[0].port == nil || nics[0].id != "nic0" || nics[1].fwd[8080] == 0 || nics[1].id != "nic1" {
		t.Fatalf("NICs %+v: want a hub port on nic0 and port 8080 forwarded on nic1", nics)
	}
	if hub.Port("node-nic0") != nics[0].port {
		t.Errorf("the hub has no port node-nic0 for the hub NIC")
	}
	mac0 := defaultMAC(t.Name(), "node", 0)
	if !strings.HasPrefix(nics[0].mac.String(), "52:54:00:") || nics[0].mac.String() != mac0.String() {
		t.Errorf("default MAC = %s, want %s", nics[0].mac, mac0)
	}
	want := Base{Name: "node", Machine: "pc", Accel: "tcg", MemoryMB: 1024, CPUs: 1, QMP: "/q.sock"}.Args()
	want = append(want, "-no-reboot",
		"-kernel", kernel, "-append", "quantix.x=1 console=ttyS0,115200 panic=-1", "-initrd", initrd,
		"-drive", "file="+cfgDisk+",format=raw,if=none,id=disk0", "-device", "virtio-blk-pci,drive=disk0",
		"-drive", "file="+data+",format=raw,if=none,id=disk1,snapshot=on", "-device", "ide-hd,drive=disk1",
		"-netdev", "dgram,id=n0,local.type=unix,local.path="+nics[0].port.PeerPath+",remote.type=unix,remote.path="+nics[0].port.HubPath,
		"-device", "virtio-net-pci,netdev=n0,id=nic0,mac="+mac0.String(),
		"-netdev", "user,id=n1,restrict=on,hostfwd=tcp:127.0.0.1:"+strconv.Itoa(nics[1].fwd[8080])+"-:8080",
		"-device", "e1000,netdev=n1,id=nic1,mac="+nics[1].mac.String(),
		"-chardev", "socket,id=ttyS1,path=/s.sock,server=on,wait=off", "-serial", "chardev:ttyS1")
	if diff := cmp.Diff(want, qemuArgs(devices)); diff != "" {
		t.Errorf("command line (-want +got):\n%s", diff)
	}

	// A boot disk comes first and boots; an ISO is a boot CD; UEFI brings its own
	// variable store; AllowReboot drops -no-reboot; a console= or panic= of the
	// test's own is kept.
	for _, tc := range []struct {
		name string
		cfg  Config
		has  []string
		not  []string
	}{
		{"boot disk", Config{BootDisk: &Disk{Path: data}, Disks: []Disk{{Path: cfgDisk}}},
			[]string{"virtio-blk-pci,drive=disk0,bootindex=0", "virtio-blk-pci,drive=disk1"}, []string{"-kernel"}},
		{"iso", Config{ISO: kernel, AllowReboot: true}, []string{"ide-cd,drive=cd0,bootindex=0"}, []string{"-no-reboot"}},
		{"own console", Config{Kernel: kernel, Append: "console=ttyS1 panic=5"}, []string{"console=ttyS1 panic=5"}, []string{"ttyS0"}},
		{"uefi", Config{Kernel: kernel, Firmware: UEFI}, []string{"if=pflash,format=raw,unit=1,file=" + filepath.Join(dir, "OVMF_VARS.fd")}, nil},
	} {
		tc.cfg.Name, tc.cfg.Accel = "x", "tcg"
		tc.cfg.setDefaults()
		devices, _, err := plan(tc.cfg, t.Name(), dir, "/q.sock")
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		line := strings.Join(qemuArgs(devices), " ")
		for _, s := range tc.has {
			if !strings.Contains(line, s) {
				t.Errorf("%s: command line lacks %q: %s", tc.name, s, line)
			}
		}
		for _, s := range tc.not {
			if strings.Contains(line, s) {
				t.Errorf("%s: command line has %q: %s", tc.name, s, line)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "OVMF_VARS.fd")); err != nil {
		t.Errorf("UEFI variable store: %v", err)
	}
}

// TestPlanErrors: a config that cannot make a machine says what is wrong, before
// QEMU runs.
func TestPlanErrors(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "k")
	if err := os.WriteFile(k, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	hub := NewHub(t, HubConfig{DHCPOff: true})
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "exactly one boot source"},
		{Config{Kernel: k, ISO: k}, "exactly one boot source"},
		{Config{ISO: k, Initrd: k}, "Initrd and Append need Kernel"},
		{Config{Kernel: filepath.Join(dir, "missing")}, "config: Kernel:"},
		{Config{Kernel: k, Disks: []Disk{{Path: filepath.Join(dir, "missing")}}}, "config: disk 0:"},
		{Config{Kernel: k, Disks: []Disk{{Path: k, Interface: "scsi"}}}, `interface "scsi"`},
		{Config{Kernel: k, NICs: []NIC{{}}}, "config: NIC 0: set exactly one of Hub and User"},
		{Config{Kernel: k, NICs: []NIC{{Hub: hub, User: true}}}, "config: NIC 0: set exactly one of Hub and User"},
		{Config{Kernel: k, NICs: []NIC{{Hub: hub, Forward: []int{80}}}}, "config: NIC 0: Forward needs a user NIC"},
		{Config{Kernel: k, NICs: []NIC{{User: true, MAC: net.HardwareAddr{1, 2}}}}, "is not 6 bytes"},
	} {
		tc.cfg.Name, tc.cfg.Accel = "bad", "tcg"
		tc.cfg.setDefaults()
		if _, _, err := plan(tc.cfg, t.Name(), dir, "/q.sock"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("plan(%+v) = %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
	bad := Config{Name: "no spaces"}
	if err := bad.setDefaults(); err == nil {
		t.Errorf("name %q accepted", bad.Name)
	}
}

func TestCPUModelArgs(t *testing.T) {
	if got := strings.Join(NoNestedVirt.Args(), " "); got != "-cpu qemu64,-svm" {
		t.Errorf("NoNestedVirt.Args() = %q", got)
	}
}
