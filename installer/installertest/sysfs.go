// Package installertest fakes, in a folder, the block devices the installer's
// Scanner reads (sysfs, /dev and the mount table), so that tests can install
// onto disk image files on the host. Hardware is the one thing tests fake.
package installertest

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Disk is one disk of a fake sysfs tree; its /dev node is an image file.
type Disk struct {
	Name       string
	Size       int64 // bytes; the image file is created sparse unless Image is set
	Serial     string
	WWN        string
	Model      string
	Removable  bool
	RO         bool
	Parts      [][2]int64 // start, size in bytes (sysfs partitions)
	Image      string     // an existing image file to link as the node
	SectorSize int64      // 512 when 0
}

// System is where a fake tree lives: the installer's Scanner fields.
type System struct {
	SysBlock, DevDir, Mounts string
}

// FakeSystem builds sys/class/block, dev and an empty mount table under a
// temporary folder of t, with the disks in it.
func FakeSystem(t testing.TB, disks ...Disk) System {
	t.Helper()
	root := t.TempDir()
	s := System{SysBlock: filepath.Join(root, "sys/class/block"), DevDir: filepath.Join(root, "dev"), Mounts: filepath.Join(root, "mounts")}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(s.DevDir, 0o755))
	must(os.WriteFile(s.Mounts, nil, 0o644))
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	for _, d := range disks {
		dir := filepath.Join(s.SysBlock, d.Name)
		must(os.MkdirAll(filepath.Join(dir, "queue"), 0o755))
		must(os.MkdirAll(filepath.Join(dir, "device"), 0o755))
		w := func(p, v string) { must(os.WriteFile(filepath.Join(dir, p), []byte(v+"\n"), 0o644)) }
		w("size", strconv.FormatInt(d.Size/512, 10))
		w("removable", b(d.Removable))
		w("ro", b(d.RO))
		w("queue/rotational", "0")
		ss := d.SectorSize
		if ss == 0 {
			ss = 512
		}
		w("queue/logical_block_size", strconv.FormatInt(ss, 10))
		if d.Serial != "" {
			w("serial", d.Serial)
		}
		if d.WWN != "" {
			w("device/wwid", d.WWN)
		}
		if d.Model != "" {
			w("device/model", d.Model)
		}
		for i, p := range d.Parts {
			pn := d.Name + strconv.Itoa(i+1)
			pd := filepath.Join(dir, pn)
			must(os.MkdirAll(pd, 0o755))
			must(os.WriteFile(filepath.Join(pd, "partition"), []byte(strconv.Itoa(i+1)), 0o644))
			must(os.WriteFile(filepath.Join(pd, "start"), []byte(strconv.FormatInt(p[0]/512, 10)), 0o644))
			must(os.WriteFile(filepath.Join(pd, "size"), []byte(strconv.FormatInt(p[1]/512, 10)), 0o644))
		}
		node := filepath.Join(s.DevDir, d.Name)
		if d.Image != "" {
			must(os.Symlink(d.Image, node))
		} else {
			f, err := os.Create(node)
			must(err)
			must(f.Truncate(d.Size))
			must(f.Close())
		}
	}
	return s
}
