package quantix

import (
	"fmt"
	"path"
)

// ExtensionDir holds an image's extensions (docs/design.md §13): read-only squashfs
// images carried inside the initramfs and mounted after boot by the service that
// needs them. The image builder writes <name>.squashfs here and symlinks every path
// an extension adds into its mount point <name>/.
const ExtensionDir = "/usr/lib/quantix/extensions"

// ExtensionImage is the squashfs image of the extension name.
func ExtensionImage(name string) string { return path.Join(ExtensionDir, name+".squashfs") }

// ExtensionMount is where the extension name is mounted.
func ExtensionMount(name string) string { return path.Join(ExtensionDir, name) }

// HypervisorExtension is Quantix-OS's extension with libvirt and QEMU.
const HypervisorExtension = "hypervisor"

// Hypervisor host paths on QUANTIX-DATA (docs/design.md §13). The image links
// libvirt's own folders into LibvirtStateDir: /etc/libvirt/qemu (domain
// definitions), /etc/libvirt/storage (pool definitions) and /var/lib/libvirt (NVRAM,
// the rest of libvirt's state) are LibvirtStateDir/qemu, /storage and /lib.
const (
	LibvirtStateDir = DataDir + "/libvirt"
	DefaultPool     = "default"
	DefaultPoolDir  = DataDir + "/pools/" + DefaultPool // VM disks
	ImageCacheDir   = DataDir + "/images"               // cached copies of vDC images
)

// LibvirtVersion turns libvirt's version numbers (major*1e6 + minor*1e3 + micro,
// for libvirt itself and for the hypervisor it drives) into "major.minor.micro".
func LibvirtVersion(v uint64) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}
