// Package installer puts a Quantix image (Quantix OS or QvDC) on a bare-metal disk,
// safely and verifiably (docs/design.md §2, §3 and §10): it reads an answer file from a
// filesystem labelled QUANTIX-INSTALL (or asks on the console), finds the disks in
// sysfs, applies the safety rules (never the boot medium, removable disks only when
// named, a disk holding anything only with wipe), plans a GPT with QUANTIX-EFI, a
// BIOS boot partition, QUANTIX-CFG and QUANTIX-DATA, writes it with go-diskfs (and
// mkfs.ext4 for the data filesystem), installs GRUB for UEFI and BIOS, writes the
// initial configuration, reads everything back to verify it, and powers off or
// reboots.
//
// Write order keeps a failed install harmless: the disk's first and last MiB are
// cleared first (no partition table: nothing boots or mounts it), the filesystems
// are written with an INSTALL-INCOMPLETE marker on the ESP, the GPT comes last, and
// the marker is removed only after the verification passed.
package installer
