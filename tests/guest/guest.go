// Package guest makes the smallest virtual machine that proves a VM executes, for
// tests of libvirt on the host and nested inside Quantix-OS (docs/platform.md: a
// 512-byte boot sector that writes a marker to COM1 and then idles). Under nested
// TCG anything bigger costs minutes.
package guest

import (
	"encoding/xml"
	"fmt"
)

// BootSector returns a 512-byte MBR boot sector that prints marker on COM1
// (port 0x3f8) and then loops for ever, so the VM keeps running.
func BootSector(marker string) ([]byte, error) {
	code := []byte{
		0x31, 0xC0, // xor ax, ax
		0x8E, 0xD8, // mov ds, ax
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0xBE, 0x14, 0x7C, // mov si, 0x7c14 (the marker)
		0xAC,       // next: lodsb
		0x84, 0xC0, // test al, al
		0x74, 0x03, // jz idle
		0xEE,       // out dx, al
		0xEB, 0xF8, // jmp next
		0xEB, 0xFE, // idle: jmp idle
	}
	msg := append([]byte(marker), '\r', '\n', 0)
	if len(code)+len(msg) > 510 {
		return nil, fmt.Errorf("marker of %d bytes does not fit a boot sector", len(marker))
	}
	b := make([]byte, 512)
	copy(b, code)
	copy(b[len(code):], msg)
	b[510], b[511] = 0x55, 0xAA
	return b, nil
}

// Domain is what DomainXML needs to know.
type Domain struct {
	Name, UUID string
	Disk       string // raw disk holding the boot sector
	Serial     string // file the guest's COM1 is written to
	Emulator   string // default /usr/bin/qemu-system-x86_64
	MemoryMiB  int    // default 16
}

// DomainXML is a libvirt definition of the tiny guest: domain type qemu (TCG, so it
// runs wherever QEMU does), machine pc, an IDE raw disk, COM1 into a file, no video.
func DomainXML(d Domain) (string, error) {
	if d.Emulator == "" {
		d.Emulator = "/usr/bin/qemu-system-x86_64"
	}
	if d.MemoryMiB == 0 {
		d.MemoryMiB = 16
	}
	type src struct {
		File string `xml:"file,attr,omitempty"`
		Path string `xml:"path,attr,omitempty"`
	}
	x := struct {
		XMLName xml.Name `xml:"domain"`
		Type    string   `xml:"type,attr"`
		Name    string   `xml:"name"`
		UUID    string   `xml:"uuid,omitempty"`
		Memory  struct {
			Unit  string `xml:"unit,attr"`
			Value int    `xml:",chardata"`
		} `xml:"memory"`
		VCPU int `xml:"vcpu"`
		OS   struct {
			Type struct {
				Arch    string `xml:"arch,attr"`
				Machine string `xml:"machine,attr"`
				Value   string `xml:",chardata"`
			} `xml:"type"`
			Boot struct {
				Dev string `xml:"dev,attr"`
			} `xml:"boot"`
		} `xml:"os"`
		Devices struct {
			Emulator string `xml:"emulator"`
			Disk     struct {
				Type   string `xml:"type,attr"`
				Device string `xml:"device,attr"`
				Driver struct {
					Name string `xml:"name,attr"`
					Type string `xml:"type,attr"`
				} `xml:"driver"`
				Source src `xml:"source"`
				Target struct {
					Dev string `xml:"dev,attr"`
					Bus string `xml:"bus,attr"`
				} `xml:"target"`
			} `xml:"disk"`
			Serial struct {
				Type   string `xml:"type,attr"`
				Source src    `xml:"source"`
			} `xml:"serial"`
			Video struct {
				Model struct {
					Type string `xml:"type,attr"`
				} `xml:"model"`
			} `xml:"video"`
			Memballoon struct {
				Model string `xml:"model,attr"`
			} `xml:"memballoon"`
		} `xml:"devices"`
	}{Type: "qemu", Name: d.Name, UUID: d.UUID, VCPU: 1}
	x.Memory.Unit, x.Memory.Value = "MiB", d.MemoryMiB
	x.OS.Type.Arch, x.OS.Type.Machine, x.OS.Type.Value = "x86_64", "pc", "hvm"
	x.OS.Boot.Dev = "hd"
	dv := &x.Devices
	dv.Emulator = d.Emulator
	dv.Disk.Type, dv.Disk.Device = "file", "disk"
	dv.Disk.Driver.Name, dv.Disk.Driver.Type = "qemu", "raw"
	dv.Disk.Source.File = d.Disk
	dv.Disk.Target.Dev, dv.Disk.Target.Bus = "hda", "ide"
	dv.Serial.Type, dv.Serial.Source.Path = "file", d.Serial
	dv.Video.Model.Type = "none"
	dv.Memballoon.Model = "none"
	out, err := xml.MarshalIndent(x, "", "  ")
	return string(out), err
}
