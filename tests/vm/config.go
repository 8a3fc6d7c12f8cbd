package vm

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
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
	CPUs     int // default 1 (docs/platform.md: -smp 2 is not faster under TCG)
	NICs     []NIC
	// Devices are further devices (a second CD, a serial port on a socket), after
	// the NICs.
	Devices []Device

	// AllowReboot lets a guest reboot restart the VM. By default QEMU runs with
	// -no-reboot, so a guest reboot (and a kernel panic with panic=-1) ends QEMU;
	// Machine.Reboot (QMP system_reset) reboots either way.
	AllowReboot bool

	// Machine is the QEMU machine type; default "pc" (i440fx, PIIX IDE).
	Machine string
	// Accel forces "tcg" or "kvm"; default Accel(t).
	Accel string

	// probe marks the KVM probe boot: it takes a slot of its own, never a reserved one.
	probe bool
}

// setDefaults fills in the defaults that need no test (Accel does).
func (c *Config) setDefaults() error {
	if c.Name == "" {
		c.Name = "vm"
	}
	if !validName(c.Name) {
		return fmt.Errorf("name %q: use letters, digits, '-', '_' and '.'", c.Name)
	}
	if c.MemoryMB == 0 {
		c.MemoryMB = 1024
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Machine == "" {
		c.Machine = "pc"
	}
	return nil
}

func validName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return s != ""
}

// attachedNIC is a NIC as the machine holds it: its QEMU id, MAC, hub port (hub
// NICs) and forwarded ports (user NICs).
type attachedNIC struct {
	id   string
	mac  net.HardwareAddr
	port *Port
	fwd  map[int]int // guest port -> host port
}

// plan is a checked Config turned into devices: everything outside QEMU the
// machine needs (the UEFI variable store in dir, hub ports, free host ports) is
// made here, so that the command line itself is a pure function of the devices.
// test names the test for default MACs.
func plan(cfg Config, test, dir, qmpPath string) ([]Device, []attachedNIC, error) {
	devices := []Device{Base{Name: cfg.Name, Machine: cfg.Machine, Accel: cfg.Accel, MemoryMB: cfg.MemoryMB, CPUs: cfg.CPUs, QMP: qmpPath}}
	if !cfg.AllowReboot {
		devices = append(devices, NoReboot{})
	}
	if cfg.Firmware == UEFI {
		for _, f := range []string{OVMFCode, OVMFVars} {
			if _, err := os.Stat(f); err != nil {
				return nil, nil, fmt.Errorf("firmware uefi: %s missing: run make deps (apt-get install ovmf)", f)
			}
		}
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		if err := copyFile(OVMFVars, vars); err != nil {
			return nil, nil, fmt.Errorf("firmware uefi: %w", err)
		}
		devices = append(devices, UEFIFirmware{Code: OVMFCode, Vars: vars})
	}

	boot, err := bootSource(cfg)
	if err != nil {
		return nil, nil, err
	}
	devices = append(devices, boot...)
	disks := cfg.Disks
	if cfg.BootDisk != nil {
		disks = append([]Disk{*cfg.BootDisk}, disks...)
	}
	for i, d := range disks {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, nil, fmt.Errorf("config: disk %d: %w", i, err)
		}
		if d.Interface != "" && d.Interface != VirtioBlk && d.Interface != IDE {
			return nil, nil, fmt.Errorf("config: disk %d: interface %q: want %q or %q", i, d.Interface, VirtioBlk, IDE)
		}
		devices = append(devices, Drive{ID: fmt.Sprintf("disk%d", i), Disk: d, Boot: i == 0 && cfg.BootDisk != nil})
	}

	var nics []attachedNIC
	for i, n := range cfg.NICs {
		a, dev, err := planNIC(n, i, test, cfg.Name)
		if err != nil {
			return nil, nil, fmt.Errorf("config: NIC %d: %w", i, err)
		}
		nics = append(nics, a)
		devices = append(devices, dev)
	}
	return append(devices, cfg.Devices...), nics, nil
}

// bootSource checks that cfg has exactly one boot source and returns its devices.
func bootSource(cfg Config) ([]Device, error) {
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
		return []Device{KernelBoot{Kernel: cfg.Kernel, Initrd: cfg.Initrd, Append: app}}, nil
	case cfg.ISO != "":
		return []Device{CD{ID: "cd0", Path: cfg.ISO, Boot: true}}, nil
	}
	return nil, nil // the boot disk is the first disk
}

// planNIC makes NIC i of machine name: a hub port or forwarded host ports.
func planNIC(n NIC, i int, test, name string) (attachedNIC, Device, error) {
	a := attachedNIC{id: fmt.Sprintf("nic%d", i), mac: n.MAC}
	if a.mac == nil {
		a.mac = defaultMAC(test, name, i)
	}
	if len(a.mac) != 6 {
		return a, nil, fmt.Errorf("MAC %q is not 6 bytes", a.mac)
	}
	model := n.Model
	if model == "" {
		model = "virtio-net-pci"
	}
	netdev := fmt.Sprintf("n%d", i)
	switch {
	case n.Hub != nil && !n.User:
		if len(n.Forward) > 0 {
			return a, nil, errors.New("Forward needs a user NIC")
		}
		p, err := n.Hub.AddPort(fmt.Sprintf("%s-%s", name, a.id))
		if err != nil {
			return a, nil, err
		}
		a.port = p
		return a, HubNIC{ID: a.id, Netdev: netdev, Model: model, MAC: a.mac, PeerPath: p.PeerPath, HubPath: p.HubPath}, nil
	case n.User && n.Hub == nil:
		a.fwd = map[int]int{}
		var fwds []Forward
		for _, g := range n.Forward {
			h, err := FreePort()
			if err != nil {
				return a, nil, err
			}
			a.fwd[g] = h
			fwds = append(fwds, Forward{Guest: g, Host: h})
		}
		return a, UserNIC{ID: a.id, Netdev: netdev, Model: model, MAC: a.mac, Forwards: fwds}, nil
	}
	return a, nil, errors.New("set exactly one of Hub and User")
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
