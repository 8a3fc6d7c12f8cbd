package ab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/images/spec"
	"github.com/quantix/quantix/installer"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/installer/installertest"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/upgrade/upgradetest"
	"github.com/quantix/quantix/vdc/client"
	"github.com/quantix/quantix/vdc/vdctest"
)

// The lab of the A/B tests: the real Quantix-OS ISO installed onto a disk image
// on the host by the installer's own code (as qx-install does on a machine, but
// without the minutes of an emulated install), a real vDC on the lab segment
// that the node joins (its agent is a health gate), and releases made from the
// ISO's own kernel and initramfs: the same bytes under a newer version, or the
// initramfs with a cpio appended that breaks it in one chosen way (the kernel
// unpacks concatenated archives in order, so later files replace earlier ones).

const (
	labJoinToken = "ab-lab-join-token-7f3a"
	labVDCPort   = 8080
	diskSize     = 4 << 30
)

// release is a kernel and an initramfs.
type release struct {
	Kernel, Initrd []byte
	Version        string
}

// lab is one installed disk and what its boots need.
type lab struct {
	iso     string
	base    release // the ISO's release, in slot a after the install
	hub     *vm.Hub
	vdc     *vdctest.VDC
	disk    string
	version string
	// key is the site's release key: the node trusts it (the answer file's
	// trusted_keys) and so does the vDC (trusted_keys_files).
	key vdctest.ReleaseKey
}

func newLab(t *testing.T) *lab {
	if testing.Short() {
		t.Skip("boots the installed Quantix-OS in QEMU: skipped with -short")
	}
	l := openLab(t, quantix.ImageQuantixOS, "ab")
	// The vDC's own version bounds the nodes' (the version-skew rule).
	l.vdc = vdctest.Start(t, vdctest.Options{JoinTokens: []string{labJoinToken}, TrustedKeysFiles: []string{l.key.Pub}, Version: "9.0.0"})
	ws := vm.NewWorkstation(t, l.hub, vm.WorkstationMAC, vm.WorkstationAddr)
	ws.Forward(t, labVDCPort, strings.TrimPrefix(l.vdc.URL, "http://"))
	l.disk = l.install(t, "ab-node")
	return l
}

// openLab starts a lab of image's ISO: its release (slot a after the install),
// a hub "hub-<name>" and the site's release key "<name>-site".
func openLab(t *testing.T, image, name string) *lab {
	iso := vm.ISO(t, image)
	l := &lab{iso: iso, version: isoVersion(t, iso)}
	med, err := installer.OpenMedium(iso)
	must(t, err)
	src, err := installer.ReadSource(med)
	med.Close()
	must(t, err)
	l.base = release{Kernel: src.Kernel, Initrd: src.Initrd, Version: l.version}
	l.hub = vm.NewHub(t, vm.HubConfig{Name: "hub-" + name})
	l.key = vdctest.NewReleaseKey(t, name+"-site")
	return l
}

// uploadRelease signs rel as a bundle of image with the lab's key and uploads
// it through c; the vDC verifies it.
func (l *lab) uploadRelease(t *testing.T, c *client.Client, image string, rel release) quantix.Release {
	t.Helper()
	b, err := client.OpenBundle(upgradetest.Bundle(t, image, rel.Version, rel.Kernel, rel.Initrd, l.key.Key))
	must(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), vm.ScaleTimeout(10*time.Minute))
	defer cancel()
	t0 := time.Now()
	r, err := c.UploadRelease(ctx, b, b.Body)
	if err != nil {
		t.Fatalf("upload release %s %s: %v", image, rel.Version, err)
	}
	t.Logf("release %s %s (%d MB initramfs) uploaded and verified in %.1f s", r.Image, r.Version, len(rel.Initrd)>>20, time.Since(t0).Seconds())
	return r
}

// isoVersion is the version in the ISO's build manifest (out/<image>.manifest.json).
func isoVersion(t *testing.T, iso string) string {
	b, err := os.ReadFile(strings.TrimSuffix(iso, ".iso") + ".manifest.json")
	if err != nil {
		t.Fatalf("the ISO's manifest: %v (make iso writes it next to the ISO)", err)
	}
	var m struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Version == "" {
		t.Fatalf("the ISO's manifest: no version (%v)", err)
	}
	return m.Version
}

// install runs the installer on the host onto a new, empty disk image, from the
// ISO, with the answer a node of this lab would get. It returns the image.
func (l *lab) install(t *testing.T, hostname string) string {
	url := fmt.Sprintf("https://%s:%d", vm.WorkstationAddr.Addr(), labVDCPort)
	pub, err := os.ReadFile(l.key.Pub)
	must(t, err)
	answer := fmt.Sprintf("hostname = %q\nafter = \"poweroff\"\ntrusted_keys = [%q]\n[target]\nonly_empty = true\n[network]\nmode = \"dhcp\"\n[network.dhcp]\ntimeout = \"5s\"\nfallback = \"link-local\"\n[agent]\ncontrol_plane = %q\njoin_token = %q\n",
		hostname, strings.TrimSpace(string(pub)), url, l.vdc.JoinToken)
	return installImage(t, l.iso, quantix.ImageQuantixOS, l.version, "QUANTIX-OS", hostname, answer)
}

// installImage runs image's installer (version, from the ISO of volume label)
// on the host with answer onto a new, empty disk image behind a fake sysfs of
// one fixed virtio disk, as the ISO's install-answer entry does on a machine,
// and returns the image.
func installImage(t *testing.T, iso, image, version, label, hostname, answer string) string {
	fs := installertest.FakeSystem(t, installertest.Disk{Name: "vda", Size: diskSize, Serial: "QX-AB-" + hostname})
	s := installer.Scanner{SysBlock: fs.SysBlock, DevDir: fs.DevDir, Mounts: fs.Mounts}
	img := filepath.Join(s.DevDir, "vda")
	a, err := installer.ParseAnswer("install.toml", []byte(answer), image)
	must(t, err)
	med, err := installer.OpenMedium(iso)
	must(t, err)
	defer med.Close()
	var console bytes.Buffer
	in, err := installer.New(installer.Config{
		Image: image, Version: version, VolumeLabel: label, Answer: a, Medium: med, Scanner: s,
		// The ISO's default entry, as its boot menu starts it.
		Cmdline: quantix.ParseCmdline("BOOT_IMAGE=/boot/vmlinuz console=ttyS0,115200 panic=10 scsi_mod.scan=sync quantix.install=install.toml"),
		Console: &console,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	must(t, err)
	if _, err := in.Run(context.Background()); err != nil {
		t.Fatalf("install onto %s: %v\n%s", img, err, console.String())
	}
	return img
}

// copyDisk is a sparse copy of the installed disk, for a scenario of its own.
func (l *lab) copyDisk(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("cp", "--sparse=always", l.disk, p).CombinedOutput(); err != nil {
		t.Fatalf("copy the installed disk: %v: %s", err, out)
	}
	return p
}

// boot starts the installed disk; reboots stay in the same QEMU (GRUB counts
// them), and the trial's watchdog is QEMU's i6300esb.
func (l *lab) boot(t *testing.T, name, disk string, fw vm.Firmware) *vm.Machine {
	return vm.Start(t, vm.Config{Name: name, Firmware: fw, MemoryMB: 2048, AllowReboot: true,
		BootDisk: &vm.Disk{Path: disk}, NICs: []vm.NIC{{Hub: l.hub}}, Devices: []vm.Device{vm.Watchdog{}}})
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// esp opens QUANTIX-EFI of a disk image (the VM must be off).
func esp(t *testing.T, disk string) (filesystem.FileSystem, func()) {
	d, err := diskfs.Open(disk, diskfs.WithOpenMode(diskfs.ReadWrite))
	must(t, err)
	tab, err := d.GetPartitionTable()
	must(t, err)
	n := 0
	for i, p := range tab.(*gpt.Table).Partitions {
		if p.Name == quantix.LabelEFI {
			n = i + 1
		}
	}
	if n == 0 {
		t.Fatalf("%s: no %s partition", disk, quantix.LabelEFI)
	}
	fs, err := d.GetFilesystem(n)
	must(t, err)
	return fs, func() { d.Close() }
}

func readFAT(t *testing.T, fs filesystem.FileSystem, name string) []byte {
	f, err := fs.OpenFile("/"+name, os.O_RDONLY)
	if err != nil {
		t.Fatalf("QUANTIX-EFI: open %s: %v", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	must(t, err)
	// go-diskfs reads FAT files to the end of their last cluster: cut at the
	// size in the folder entry.
	dir, base := filepath.Split(name)
	ents, err := fs.ReadDir(strings.TrimSuffix(dir, "/"))
	must(t, err)
	for _, e := range ents {
		if strings.EqualFold(e.Name(), base) {
			info, err := e.Info()
			must(t, err)
			if info.Size() > int64(len(b)) {
				t.Fatalf("QUANTIX-EFI: %s: read %d bytes, the folder says %d", name, len(b), info.Size())
			}
			return b[:info.Size()]
		}
	}
	t.Fatalf("QUANTIX-EFI: %s is not in its folder", name)
	return nil
}

// writeFAT overwrites or creates name (the grubenv copies keep their size: an
// environment block is always 1024 bytes).
func writeFAT(t *testing.T, fs filesystem.FileSystem, name string, data []byte) {
	_ = fs.Mkdir("/" + filepath.Dir(name))
	f, err := fs.OpenFile("/"+name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	must(t, err)
	_, err = f.Write(data)
	must(t, err)
	must(t, f.Close())
}

// envCopies reads both copies of the GRUB environment from the disk image as
// GRUB and init find them: each decoded, or its decode error.
func envCopies(t *testing.T, disk string) (first, backup bootenv.State, firstErr, backupErr error) {
	fs, done := esp(t, disk)
	defer done()
	first, firstErr = bootenv.Decode(readFAT(t, fs, quantix.ESPEnv))
	backup, backupErr = bootenv.Decode(readFAT(t, fs, quantix.ESPEnvBackup))
	return
}

// env is the environment GRUB uses (the first valid copy), and both copies
// must agree once init has written them.
func env(t *testing.T, disk string) bootenv.State {
	t.Helper()
	a, b, aerr, berr := envCopies(t, disk)
	if aerr != nil || berr != nil || a != b {
		t.Fatalf("environment copies on %s: %+v (%v) and %+v (%v), want two equal valid copies", disk, a, aerr, b, berr)
	}
	return a
}

// stage writes rel into slot b of the disk image and makes it the next boot's
// trial, in the order upgrade.Stage writes (slot out of the order, files,
// manifest, then the trial): what init's stage request leaves on the ESP, with
// quantix.SlotMaxTries tries, or tries[0] (a test that needs one try only).
func stage(t *testing.T, disk string, rel release, tries ...int) {
	fs, done := esp(t, disk)
	defer done()
	st, err := bootenv.Decode(readFAT(t, fs, quantix.ESPEnv))
	must(t, err)
	st.B = bootenv.Slot{}
	writeEnv(t, fs, st)
	man, err := quantix.SlotManifestInfo{Image: quantix.ImageQuantixOS, Version: rel.Version, KernelSHA256: sha(rel.Kernel), InitrdSHA256: sha(rel.Initrd)}.Encode()
	must(t, err)
	writeFAT(t, fs, quantix.ESPSlotFile("b", quantix.SlotKernel), rel.Kernel)
	writeFAT(t, fs, quantix.ESPSlotFile("b", quantix.SlotInitrd), rel.Initrd)
	writeFAT(t, fs, quantix.ESPSlotFile("b", quantix.SlotManifest), man)
	st.Order = [2]string{"b", "a"}
	st.B = bootenv.Slot{Tries: quantix.SlotMaxTries}
	if len(tries) > 0 {
		st.B.Tries = tries[0]
	}
	writeEnv(t, fs, st)
}

func writeEnv(t *testing.T, fs filesystem.FileSystem, st bootenv.State) {
	b, err := st.Encode()
	must(t, err)
	writeFAT(t, fs, quantix.ESPEnv, b)
	writeFAT(t, fs, quantix.ESPEnvBackup, b)
}

// corruptFirstEnv overwrites the first environment copy with garbage of its size
// (a torn write): GRUB and init must go on with the backup.
func corruptFirstEnv(t *testing.T, disk string) {
	fs, done := esp(t, disk)
	defer done()
	b := readFAT(t, fs, quantix.ESPEnv)
	writeFAT(t, fs, quantix.ESPEnv, bytes.Repeat([]byte{0x5a}, len(b)))
}

// broken returns the base release under version with files appended to its
// initramfs (a newc archive after the original, 4-byte aligned).
func (l *lab) broken(t *testing.T, version string, files map[string][]byte, modes map[string]uint64) release {
	var buf bytes.Buffer
	buf.Write(l.base.Initrd)
	// The appended archive is compressed as the ISO's is: after an LZ4 legacy
	// frame (no end mark) the kernel takes nothing else, not even padding.
	comp := build.InitramfsCompression(l.base.Initrd)
	if comp == "" {
		t.Fatal("the ISO's initramfs is not lz4, zstd or gzip")
	}
	if comp != spec.CompressionLZ4 {
		for buf.Len()%4 != 0 {
			buf.WriteByte(0)
		}
	}
	zw, err := build.Compressor(&buf, comp)
	must(t, err)
	w := cpio.Newc.Writer(zw)
	var recs []cpio.Record
	for name, data := range files {
		mode := uint64(0o644)
		if m, ok := modes[name]; ok {
			mode = m
		}
		recs = append(recs, cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | mode}))
	}
	cpio.MakeAllReproducible(recs)
	must(t, cpio.WriteRecords(w, recs))
	must(t, cpio.WriteTrailer(w))
	must(t, zw.Close())
	return release{Kernel: l.base.Kernel, Initrd: buf.Bytes(), Version: version}
}

// imageConfig reads the image configuration out of the release's initramfs
// (in whichever compression the builder wrote it).
func (l *lab) imageConfig(t *testing.T) quantix.ImageConfig {
	r, err := build.OpenInitramfs(bytes.NewReader(l.base.Initrd))
	must(t, err)
	defer r.Close()
	raw, err := io.ReadAll(r)
	must(t, err)
	var cfg *quantix.ImageConfig
	err = cpio.ForEachRecord(cpio.Newc.Reader(bytes.NewReader(raw)), func(rec cpio.Record) error {
		if cpio.Normalize(rec.Name) != strings.TrimPrefix(quantix.ImageConfigPath, "/") {
			return nil
		}
		b, err := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
		if err != nil {
			return err
		}
		p := filepath.Join(t.TempDir(), "image.toml")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		cfg, err = quantix.LoadImageConfig(p)
		return err
	})
	if err != nil || cfg == nil {
		t.Fatalf("%s in the initramfs: %v", quantix.ImageConfigPath, err)
	}
	return *cfg
}
