package console

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/upgrade/upgradetest"
)

// needRoot fails a test that mounts real media unless it runs as root with the
// tools that make them.
func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("mounts loop devices: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Fatalf("media tests mount loop devices: they need root (or go test -short)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run make deps (apt-get install util-linux e2fsprogs)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// stick writes an ext4 image labelled label holding the folders in dirs (name on
// the stick -> local folder; "" is the stick's root) and attaches it to a loop
// device, detached again when the test ends. It returns the loop device. (ext4:
// the kernels tests run on may lack vfat and isofs; the images load them, and
// the scan mounts them the same way.)
func stick(t *testing.T, label string, dirs map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, local := range dirs {
		run(t, "cp", "-a", local+"/.", filepath.Join(root, name))
	}
	img := filepath.Join(t.TempDir(), "stick.img")
	run(t, "mkfs.ext4", "-q", "-L", label, "-d", root, img, "32M")
	dev := run(t, "losetup", "-f", "--show", img)
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}

// fakeSys is a /sys/class/block and a /dev for the devices a test adds: the
// hardware is faked, the device nodes may be real (links to loop devices).
type fakeSys struct {
	t                      *testing.T
	devices, sysBlock, dev string
}

func newFakeSys(t *testing.T) *fakeSys {
	root := t.TempDir()
	s := &fakeSys{t: t, devices: filepath.Join(root, "devices"), sysBlock: filepath.Join(root, "class", "block"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{s.devices, s.sysBlock, s.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// add adds the device at path under /sys/devices (its last element is its
// name; a parent device that is also added makes it a partition), with a node
// that links to node ("" for none) and removable as its flag (whole disks).
func (s *fakeSys) add(path, node string, removable bool) {
	name := filepath.Base(path)
	p := filepath.Join(s.devices, path)
	if err := os.MkdirAll(p, 0o755); err != nil {
		s.t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(p), "size")); err == nil {
		os.WriteFile(filepath.Join(p, "partition"), []byte("1\n"), 0o644)
	}
	os.WriteFile(filepath.Join(p, "size"), []byte("65536\n"), 0o644)
	if removable {
		os.WriteFile(filepath.Join(p, "removable"), []byte("1\n"), 0o644)
	}
	if err := os.Symlink(p, filepath.Join(s.sysBlock, name)); err != nil {
		s.t.Fatal(err)
	}
	if node != "" {
		if err := os.Symlink(node, filepath.Join(s.dev, name)); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *fakeSys) media(t *testing.T) Media {
	return Media{SysBlock: s.sysBlock, DevDir: s.dev, Dir: filepath.Join(t.TempDir(), "media"), BootLabel: "QUANTIX"}
}

// mountOptions returns the options of the mount on dir, "" when nothing is
// mounted there.
func mountOptions(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == dir {
			return f[5]
		}
	}
	return ""
}

func testBundle(t *testing.T, version, keyFile string) (dir string, kernel []byte) {
	kernel, initrd := make([]byte, 4096), make([]byte, 8192)
	rand.Read(kernel)
	rand.Read(initrd)
	return upgradetest.Bundle(t, quantix.ImageQuantixOS, version, kernel, initrd, keyFile), kernel
}

// TestMediaScan: on a USB stick (a real FAT filesystem on a loop device, behind a
// fake sysfs saying "USB") the bundle in a folder is found and stays mounted
// read-only; a stick without a bundle is unmounted again and says so; the
// machine's own disks, non-removable disks and a config stick are not touched.
func TestMediaScan(t *testing.T) {
	needRoot(t)
	_, keyFile := upgradetest.Keypair(t, "release")
	bundle, _ := testBundle(t, "0.2.0", keyFile)
	broken, _ := testBundle(t, "0.3.0", "")
	os.WriteFile(filepath.Join(broken, quantix.BundleSums), []byte(strings.Repeat("0", 64)+"  quantix-os.iso\n"), 0o644)
	withBundle := stick(t, "RELEASES", map[string]string{"quantix-0.2.0": bundle, "half": broken})
	empty := stick(t, "PHOTOS", map[string]string{"": t.TempDir()})
	other := stick(t, "DATA", map[string]string{"": t.TempDir()})

	s := newFakeSys(t)
	s.add("pci0/usb1/1-1/sdb", "", false) // a USB stick that says removable=0
	s.add("pci0/usb1/1-1/sdb/sdb1", withBundle, false)
	s.add("pci0/usb1/1-2/sdc", empty, true)
	s.add("pci0/ata1/sda", "", false) // the installed disk: not removable
	s.add("pci0/ata1/sda/sda1", other, false)
	s.add("pci0/usb1/1-3/sdd", "", true) // a removable disk with no filesystem
	s.add("pci0/usb1/1-3/sdd/sdd1", "", false)
	s.add("virtual/loop0", withBundle, false) // loop devices are never media

	m := s.media(t)
	t.Cleanup(func() { unmountAll(t, m.Dir) }) // when the test failed before Release
	cands, err := m.Candidates()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cands {
		names = append(names, filepath.Base(c.Device))
	}
	if strings.Join(names, " ") != "sdb1 sdc" {
		t.Errorf("candidates = %v, want sdb1 sdc", names)
	}

	media, err := m.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(media) != 2 {
		t.Fatalf("Scan = %+v, want sdb1 and sdc", media)
	}
	stick, photos := media[0], media[1]
	wantDir := filepath.Join(m.Dir, "sdb1")
	if stick.Err != nil || stick.Dir != wantDir || len(stick.Bundles) != 1 || len(stick.Broken) != 1 {
		t.Fatalf("sdb1 = %+v, want mounted on %s with one bundle and one broken folder", stick, wantDir)
	}
	b := stick.Bundles[0]
	if b.Dir != filepath.Join(wantDir, "quantix-0.2.0") || b.Image != quantix.ImageQuantixOS || b.Version != "0.2.0" || b.ISO != "quantix-os.iso" {
		t.Errorf("bundle = %+v", b)
	}
	if !strings.Contains(stick.Broken[0].Error(), "half") {
		t.Errorf("broken = %v, want the folder half named", stick.Broken)
	}
	opts := mountOptions(t, wantDir)
	for _, o := range []string{"ro", "nosuid", "nodev", "noexec"} {
		if !strings.Contains(","+opts+",", ","+o+",") {
			t.Errorf("%s mounted with %q, want %s", wantDir, opts, o)
		}
	}
	if err := os.WriteFile(filepath.Join(wantDir, "x"), nil, 0o644); err == nil {
		t.Errorf("wrote a file on the read-only medium")
	}
	if photos.Err != nil || photos.Dir != "" || len(photos.Bundles) != 0 {
		t.Errorf("sdc = %+v, want looked at and unmounted", photos)
	}
	if o := mountOptions(t, filepath.Join(m.Dir, "sdc")); o != "" {
		t.Errorf("sdc without a bundle is still mounted (%s)", o)
	}

	if err := Release(media); err != nil {
		t.Fatal(err)
	}
	if o := mountOptions(t, wantDir); o != "" {
		t.Errorf("after Release %s is still mounted (%s)", wantDir, o)
	}
	if _, err := os.Stat(wantDir); !os.IsNotExist(err) {
		t.Errorf("after Release %s is still there: %v", wantDir, err)
	}
}
