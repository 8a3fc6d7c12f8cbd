package vm

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Device is one part of a machine that knows its own QEMU arguments, as
// hugelgupf/vmtest's devices do: a machine's command line is its devices'
// arguments in order, and each device is tested without QEMU. Config.Devices adds
// devices of a test's own.
type Device interface {
	Args() []string
}

// qemuArgs is the command line (without the binary) of a machine made of devices.
func qemuArgs(devices []Device) []string {
	var args []string
	for _, d := range devices {
		args = append(args, d.Args()...)
	}
	return args
}

// Base is what every lab machine has: no default devices, a standard VGA card
// without a display, the serial console on QEMU's stdio (the harness reads it), no
// monitor, QMP on a unix socket, and a virtio RNG (docs/design.md §11: without
// entropy, DHCP and TLS block at boot under TCG).
type Base struct {
	Name     string
	Machine  string // QEMU machine type, e.g. "pc"
	Accel    string // "tcg" or "kvm"
	MemoryMB int
	CPUs     int
	QMP      string // the QMP socket's path
}

func (b Base) Args() []string {
	return []string{
		"-name", b.Name,
		"-machine", b.Machine,
		"-accel", b.Accel,
		"-m", strconv.Itoa(b.MemoryMB),
		"-smp", strconv.Itoa(b.CPUs),
		"-nodefaults", "-vga", "std", "-display", "none",
		"-serial", "stdio",
		"-monitor", "none",
		"-qmp", "unix:" + b.QMP + ",server=on,wait=off",
		"-device", "virtio-rng-pci",
	}
}

// Watchdog is an Intel 6300ESB watchdog (Linux: i6300esb); when it fires, QEMU
// resets the machine (its default -action watchdog=reset).
type Watchdog struct{}

func (Watchdog) Args() []string { return []string{"-device", "i6300esb"} }

// NoReboot makes a guest reboot, and a kernel panic under panic=-1, end QEMU.
type NoReboot struct{}

func (NoReboot) Args() []string { return []string{"-no-reboot"} }

// UEFIFirmware is OVMF: Code read-only, Vars the machine's own variable store.
type UEFIFirmware struct {
	Code, Vars string
}

func (u UEFIFirmware) Args() []string {
	return []string{
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + u.Code,
		"-drive", "if=pflash,format=raw,unit=1,file=" + u.Vars,
	}
}

// KernelBoot starts a kernel directly, with an optional initramfs and command line.
type KernelBoot struct {
	Kernel, Initrd, Append string
}

func (k KernelBoot) Args() []string {
	args := []string{"-kernel", k.Kernel, "-append", k.Append}
	if k.Initrd != "" {
		args = append(args, "-initrd", k.Initrd)
	}
	return args
}

// CD is a raw image in an IDE CD drive, read-only; Boot makes it the first boot
// device. ID names the drive (default "cd0").
type CD struct {
	ID   string
	Path string
	Boot bool
}

func (c CD) Args() []string {
	id := c.ID
	if id == "" {
		id = "cd0"
	}
	dev := "ide-cd,drive=" + id
	if c.Boot {
		dev += ",bootindex=0"
	}
	return []string{"-drive", "file=" + c.Path + ",format=raw,if=none,id=" + id + ",media=cdrom,readonly=on", "-device", dev}
}

// Drive is a raw disk image on Interface (virtio-blk by default).
type Drive struct {
	ID string
	Disk
	Boot bool // first boot device
}

func (d Drive) Args() []string {
	drive := "file=" + d.Path + ",format=raw,if=none,id=" + d.ID
	if d.ReadOnly {
		drive += ",readonly=on"
	}
	if d.Snapshot {
		drive += ",snapshot=on"
	}
	dev := "virtio-blk-pci,drive=" + d.ID
	if d.Interface == IDE {
		dev = "ide-hd,drive=" + d.ID
	}
	if d.Boot {
		dev += ",bootindex=0"
	}
	return []string{"-drive", drive, "-device", dev}
}

// HubNIC is a network card on a Hub port: a dgram netdev between the port's two
// unix sockets.
type HubNIC struct {
	ID, Netdev, Model string
	MAC               net.HardwareAddr
	PeerPath, HubPath string
}

func (n HubNIC) Args() []string {
	return []string{
		"-netdev", fmt.Sprintf("dgram,id=%s,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s", n.Netdev, n.PeerPath, n.HubPath),
		"-device", nicDevice(n.Model, n.Netdev, n.ID, n.MAC),
	}
}

// Forward is a guest TCP port reached at a host port on 127.0.0.1.
type Forward struct {
	Guest, Host int
}

// UserNIC is a network card on QEMU user networking with restrict=on: no way out,
// only the forwarded ports in.
type UserNIC struct {
	ID, Netdev, Model string
	MAC               net.HardwareAddr
	Forwards          []Forward
}

func (n UserNIC) Args() []string {
	spec := "user,id=" + n.Netdev + ",restrict=on"
	for _, f := range n.Forwards {
		spec += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", f.Host, f.Guest)
	}
	return []string{"-netdev", spec, "-device", nicDevice(n.Model, n.Netdev, n.ID, n.MAC)}
}

func nicDevice(model, netdev, id string, mac net.HardwareAddr) string {
	return fmt.Sprintf("%s,netdev=%s,id=%s,mac=%s", model, netdev, id, mac)
}

// SerialSocket is a further serial port (ttyS1 for the first) on a unix socket
// QEMU listens on, for a test that talks to a second console.
type SerialSocket struct {
	ID   string
	Path string
}

func (s SerialSocket) Args() []string {
	return []string{"-chardev", "socket,id=" + s.ID + ",path=" + s.Path + ",server=on,wait=off", "-serial", "chardev:" + s.ID}
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

// CPUModel picks the guest's CPU model (-cpu), e.g. "qemu64,-svm".
type CPUModel struct{ Model string }

func (c CPUModel) Args() []string { return []string{"-cpu", c.Model} }

// NoNestedVirt is the CPU model for a hypervisor host machine under TCG: the
// default qemu64 advertises AMD SVM, so kvm_amd loads in the guest and its /dev/kvm
// passes a one-instruction probe, yet cannot run real guests (docs/platform.md).
// Without the flag the guest's hypervisor knows it has no hardware virtualization.
var NoNestedVirt = CPUModel{Model: "qemu64,-svm"}
