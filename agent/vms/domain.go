package vms

import (
	"encoding/xml"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/quantix/quantix"
)

// MetadataNS is the XML namespace of Quantix's <metadata> element in a domain
// definition. A domain carrying it is managed by the vDC; one without it is
// unmanaged and never touched.
const MetadataNS = "https://quantix.dev/vm"

// Metadata is what the agent keeps in the domain definition itself, so an agent
// restart learns what it last applied from libvirt, not from a file of its own.
type Metadata struct {
	XMLName xml.Name `xml:"https://quantix.dev/vm vm"`
	// Node is the vDC node the VM is assigned to; a node never starts a VM whose
	// metadata names another.
	Node string `xml:"node"`
	// Generation is the DesiredVM.Generation the definition was made from.
	Generation int64 `xml:"generation"`
	// RebootCount is the DesiredVM.RebootCount last acted on.
	RebootCount int64 `xml:"reboot-count"`
}

// ParseMetadata reads Quantix's metadata from a domain's XML; ok is false for an
// unmanaged domain.
func ParseMetadata(domainXML string) (m Metadata, ok bool, err error) {
	var d struct {
		Metadata struct {
			VM *Metadata `xml:"https://quantix.dev/vm vm"`
		} `xml:"metadata"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return Metadata{}, false, fmt.Errorf("parse domain xml: %w", err)
	}
	if d.Metadata.VM == nil {
		return Metadata{}, false, nil
	}
	return *d.Metadata.VM, true, nil
}

// Disk is one disk of a domain as built: a volume of the storage pool.
type Disk struct {
	Volume string // volume name in the pool
	Format string // quantix.ImageRaw or quantix.ImageQCOW2
}

// Layout is where a domain's files are on this host.
type Layout struct {
	Pool       string // storage pool of the disks (quantix.DefaultPool)
	ImagesDir  string // cached images (CD-ROM ISOs are used from there)
	ConsoleDir string // serial logs, <uuid>.log
	Bridge     string // bridge of NICs on network management
	// DomainType is "kvm" or "qemu" (TCG), from the accelerator probe.
	DomainType string
}

// ConsolePath is the serial log of a VM.
func (l Layout) ConsolePath(vmUUID string) string {
	return filepath.Join(l.ConsoleDir, vmUUID+".log")
}

// VolumeName is the name of disk i of a VM in the pool. Every volume of a VM
// starts with its UUID, which is how a delete finds them.
func VolumeName(vmUUID string, i int, format string) string {
	ext := "img"
	if format == quantix.ImageQCOW2 {
		ext = "qcow2"
	}
	return fmt.Sprintf("%s-disk%d.%s", vmUUID, i, ext)
}

type domainXML struct {
	XMLName  xml.Name `xml:"domain"`
	Type     string   `xml:"type,attr"`
	Name     string   `xml:"name"`
	UUID     string   `xml:"uuid"`
	Metadata struct {
		VM Metadata
	} `xml:"metadata"`
	Memory struct {
		Unit  string `xml:"unit,attr"`
		Value int64  `xml:",chardata"`
	} `xml:"memory"`
	VCPU int `xml:"vcpu"`
	OS   struct {
		Firmware string `xml:"firmware,attr,omitempty"`
		Type     struct {
			Arch    string `xml:"arch,attr"`
			Machine string `xml:"machine,attr"`
			Value   string `xml:",chardata"`
		} `xml:"type"`
		Boot []devAttr `xml:"boot"`
	} `xml:"os"`
	Features struct {
		ACPI *struct{} `xml:"acpi"`
		APIC *struct{} `xml:"apic"`
	} `xml:"features"`
	OnPoweroff string     `xml:"on_poweroff"`
	OnReboot   string     `xml:"on_reboot"`
	OnCrash    string     `xml:"on_crash"`
	Devices    devicesXML `xml:"devices"`
}

type devAttr struct {
	Dev string `xml:"dev,attr"`
}

type devicesXML struct {
	Disks      []diskXML `xml:"disk"`
	Interfaces []nicXML  `xml:"interface"`
	Serial     struct {
		Type   string `xml:"type,attr"`
		Source struct {
			Path string `xml:"path,attr"`
		} `xml:"source"`
		Target struct {
			Port int `xml:"port,attr"`
		} `xml:"target"`
	} `xml:"serial"`
	RNG struct {
		Model   string `xml:"model,attr"`
		Backend struct {
			Model string `xml:"model,attr"`
			Value string `xml:",chardata"`
		} `xml:"backend"`
	} `xml:"rng"`
}

type nicXML struct {
	Type string `xml:"type,attr"`
	MAC  struct {
		Address string `xml:"address,attr"`
	} `xml:"mac"`
	Source struct {
		Bridge string `xml:"bridge,attr"`
	} `xml:"source"`
	Model struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
}

type diskXML struct {
	Type   string `xml:"type,attr"`
	Device string `xml:"device,attr"`
	Driver struct {
		Name string `xml:"name,attr"`
		Type string `xml:"type,attr"`
	} `xml:"driver"`
	Source struct {
		Pool   string `xml:"pool,attr,omitempty"`
		Volume string `xml:"volume,attr,omitempty"`
		File   string `xml:"file,attr,omitempty"`
	} `xml:"source"`
	Target struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	} `xml:"target"`
	ReadOnly *struct{} `xml:"readonly"`
}

// DomainXML is the libvirt definition of a desired VM on this host. disks are the
// volumes of vm.Spec.Disks in order; name is the domain's name (the spec's, or
// the current one while a running domain cannot be renamed).
func DomainXML(vm quantix.DesiredVM, name string, disks []Disk, meta Metadata, l Layout) (string, error) {
	s := vm.Spec
	var d domainXML
	d.Type, d.Name, d.UUID = l.DomainType, name, vm.UUID
	d.Metadata.VM = meta
	d.Memory.Unit, d.Memory.Value = "KiB", s.MemoryBytes>>10
	d.VCPU = s.VCPUs
	d.OS.Type.Arch, d.OS.Type.Value = "x86_64", "hvm"
	// BIOS guests get the widely compatible i440fx machine; UEFI guests q35, with
	// OVMF picked by libvirt's firmware auto-selection, which also keeps the
	// guest's NVRAM in libvirt's own folder (LibvirtStateDir on Quantix-OS).
	d.OS.Type.Machine = "pc"
	cdBus, cdDev := "ide", "hdc"
	if s.Firmware == quantix.FirmwareUEFI {
		d.OS.Firmware = "efi"
		d.OS.Type.Machine = "q35"
		cdBus, cdDev = "sata", "sdz"
	}
	order := s.BootOrder
	if len(order) == 0 {
		order = []string{quantix.BootDisk, quantix.BootCDROM, quantix.BootNetwork}
	}
	for _, b := range order {
		dev := map[string]string{quantix.BootDisk: "hd", quantix.BootCDROM: "cdrom", quantix.BootNetwork: "network"}[b]
		if dev == "" {
			return "", fmt.Errorf("vm %s: boot device %q", vm.UUID, b)
		}
		d.OS.Boot = append(d.OS.Boot, devAttr{dev})
	}
	d.Features.ACPI, d.Features.APIC = &struct{}{}, &struct{}{}
	// A guest that powers off or crashes stays off until the reconciler decides;
	// a reboot stays inside the same QEMU.
	d.OnPoweroff, d.OnReboot, d.OnCrash = "destroy", "restart", "destroy"

	if len(disks) != len(s.Disks) {
		return "", fmt.Errorf("vm %s: %d volumes for %d disks", vm.UUID, len(disks), len(s.Disks))
	}
	for i, dk := range disks {
		var x diskXML
		x.Type, x.Device = "volume", "disk"
		x.Driver.Name, x.Driver.Type = "qemu", dk.Format
		x.Source.Pool, x.Source.Volume = l.Pool, dk.Volume
		x.Target.Dev, x.Target.Bus = "vd"+string(rune('a'+i)), "virtio"
		d.Devices.Disks = append(d.Devices.Disks, x)
	}
	if s.CDROM != "" {
		var x diskXML
		x.Type, x.Device = "file", "cdrom"
		x.Driver.Name, x.Driver.Type = "qemu", "raw"
		x.Source.File = filepath.Join(l.ImagesDir, s.CDROM)
		x.Target.Dev, x.Target.Bus = cdDev, cdBus
		x.ReadOnly = &struct{}{}
		d.Devices.Disks = append(d.Devices.Disks, x)
	}
	for i, n := range s.NICs {
		if n.Network != quantix.NetworkManagement {
			return "", fmt.Errorf("vm %s: nics[%d]: unknown network %q", vm.UUID, i, n.Network)
		}
		if err := quantix.ValidMAC(n.MAC); err != nil {
			return "", fmt.Errorf("vm %s: nics[%d]: %w", vm.UUID, i, err)
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, nicXML{Type: "bridge"})
		nic := &d.Devices.Interfaces[len(d.Devices.Interfaces)-1]
		nic.MAC.Address, nic.Source.Bridge, nic.Model.Type = strings.ToLower(n.MAC), l.Bridge, "virtio"
	}
	d.Devices.Serial.Type = "file"
	d.Devices.Serial.Source.Path = l.ConsolePath(vm.UUID)
	// Under TCG a guest without an entropy source blocks in getrandom at boot.
	d.Devices.RNG.Model, d.Devices.RNG.Backend.Model, d.Devices.RNG.Backend.Value = "virtio", "random", "/dev/urandom"
	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return "", fmt.Errorf("vm %s: domain xml: %w", vm.UUID, err)
	}
	return string(out), nil
}
