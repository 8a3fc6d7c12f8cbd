package installer

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

func TestNewPlan(t *testing.T) {
	for _, c := range []struct {
		size     int64
		dataSize int64 // 0: refused
	}{
		{MinDiskSize, MinDiskSize - 770*MiB - MiB}, // the last MiB holds the backup GPT
		{100 << 30, 100<<30 - 770*MiB - MiB},
		{4<<40 + 12345*512, 4<<40 + 6*MiB - 770*MiB}, // odd size: data ends MiB-aligned below the backup GPT
		{MinDiskSize - 1, 0},
	} {
		p, err := NewPlan(c.size)
		if c.dataSize == 0 {
			if err == nil {
				t.Errorf("NewPlan(%d) = nil error, want a refusal", c.size)
			}
			continue
		}
		if err != nil {
			t.Fatalf("NewPlan(%d): %v", c.size, err)
		}
		want := []struct {
			name  string
			fs    string
			start int64
			size  int64
		}{
			{quantix.LabelEFI, FSFat32, MiB, 512 * MiB},
			{BIOSBootName, FSNone, 513 * MiB, MiB},
			{quantix.LabelConfig, FSExt4, 514 * MiB, 256 * MiB},
			{quantix.LabelData, FSExt4, 770 * MiB, c.dataSize},
		}
		if len(p.Parts) != len(want) {
			t.Fatalf("NewPlan(%d): %d partitions", c.size, len(p.Parts))
		}
		for i, w := range want {
			q := p.Parts[i]
			if q.Name != w.name || q.FS != w.fs || q.Start != w.start || q.Size != w.size || q.Number != i+1 {
				t.Errorf("NewPlan(%d) part %d = %+v, want %+v", c.size, i+1, q, w)
			}
			if q.Start%MiB != 0 || q.Size%MiB != 0 {
				t.Errorf("part %s not MiB-aligned", q.Name)
			}
		}
		last := p.Parts[3]
		if last.End() > c.size-33*512 {
			t.Errorf("NewPlan(%d): data ends at %d, inside the backup GPT", c.size, last.End())
		}
		tab := p.Table()
		if tab.GUID != p.DiskGUID || len(tab.Partitions) != 4 || tab.Partitions[3].End != uint64(last.End()/512-1) {
			t.Errorf("Table() = %+v", tab)
		}
	}
	a, _ := NewPlan(10 << 30)
	b, _ := NewPlan(10 << 30)
	if a.DiskGUID == b.DiskGUID || a.Parts[0].GUID == b.Parts[0].GUID {
		t.Error("two plans share GUIDs")
	}
}

func TestPatchMBRAndCore(t *testing.T) {
	bootImg := make([]byte, 512)
	for i := range bootImg {
		bootImg[i] = 0xcc
	}
	bootImg[510], bootImg[511] = 0x55, 0xaa
	pmbr := make([]byte, 512)
	copy(pmbr[440:], []byte{1, 2, 3, 4})
	pmbr[446+4] = 0xee
	out, err := PatchMBR(bootImg, pmbr, 1050624)
	if err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint64(out[0x5c:]) != 1050624 || out[0x64] != 0xff || out[0x66] != 0x90 || out[0x67] != 0x90 {
		t.Errorf("kernel sector / boot drive / drive check not patched: % x", out[0x5c:0x68])
	}
	if !bytes.Equal(out[440:510], pmbr[440:510]) || out[510] != 0x55 || out[511] != 0xaa {
		t.Error("disk signature or partition table not kept")
	}
	if !bytes.Equal(out[3:0x5a], pmbr[3:0x5a]) || out[0] != 0xcc || out[0x100] != 0xcc {
		t.Error("BPB area must come from the disk, code from boot.img")
	}
	if _, err := PatchMBR(bootImg[:500], pmbr, 1); err == nil {
		t.Error("PatchMBR accepted a short boot.img")
	}

	core := make([]byte, 512*3+100)
	binary.LittleEndian.PutUint64(core[500:], 2)
	binary.LittleEndian.PutUint16(core[508:], 3)
	binary.LittleEndian.PutUint16(core[510:], 0x820)
	core[490] = 7 // garbage in the second block list slot
	pc, err := PatchCore(core, 1050624)
	if err != nil {
		t.Fatal(err)
	}
	if len(pc) != 4*512 || binary.LittleEndian.Uint64(pc[500:]) != 1050625 || binary.LittleEndian.Uint16(pc[508:]) != 3 || pc[490] != 0 {
		t.Errorf("PatchCore: len %d start %d len %d terminator %d", len(pc), binary.LittleEndian.Uint64(pc[500:]), binary.LittleEndian.Uint16(pc[508:]), pc[490])
	}
	binary.LittleEndian.PutUint16(core[510:], 0x7c0)
	if _, err := PatchCore(core, 1); err == nil {
		t.Error("PatchCore accepted a core.img without the GRUB segment")
	}
}

func TestInstalledCmdline(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"BOOT_IMAGE=/boot/vmlinuz initrd=/boot/initrd.gz panic=10 console=ttyS0,115200 console=tty0 quantix.install=interactive",
			// quantix.Cmdline keeps one value per key, the last: as qx-install has
			// always passed the running line on.
			"panic=10 console=tty0 quantix.disk=abc"},
		{"quantix.disk=old ip=dhcp quantix.install=a.toml", "ip=dhcp quantix.disk=abc"},
	} {
		if got := InstalledCmdline(quantix.ParseCmdline(c.in), "ABC"); got != c.want {
			t.Errorf("InstalledCmdline(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	g := GrubConfig("QvDC", "console=ttyS0 quantix.disk=x")
	for _, want := range []string{"menuentry 'QvDC (slot a)' --id quantix-a {",
		"linux /EFI/quantix/a/vmlinuz console=ttyS0 quantix.disk=x quantix.slot=a\n", "initrd /EFI/quantix/a/initrd.img",
		"menuentry 'QvDC (slot b, trial)' --id quantix-b-trial {", "linux /EFI/quantix/b/vmlinuz console=ttyS0 quantix.disk=x quantix.slot=b quantix.trial=1\n",
		"if [ -f /INSTALL-INCOMPLETE ]", "load_env --file /EFI/quantix/grubenv QX_ORDER", "save_env --file /EFI/quantix/grubenv.bak QX_A_TRIES QX_B_TRIES"} {
		if !strings.Contains(g, want) {
			t.Errorf("grub.cfg lacks %q:\n%s", want, g)
		}
	}
}

// Scan reads sysfs and the disks themselves: sizes, serials, WWNs, partitions with
// their filesystem labels and GPT names, emptiness, mounts.
func TestScan(t *testing.T) {
	if testing.Short() {
		t.Skip("installs onto a disk image: skipped with -short")
	}
	// An installed disk as the partitioned one.
	s0 := fakeSystem(t, fakeDisk{Name: "vda", Size: MinDiskSize, Serial: "QX-SERIAL-1"})
	res, _, _, err := install(t, s0, quantix.ImageQuantixOS, testAnswerOS)
	if err != nil {
		t.Fatal(err)
	}
	var parts [][2]int64
	for _, q := range res.Plan.Parts {
		parts = append(parts, [2]int64{q.Start, q.Size})
	}
	junk := filepath.Join(t.TempDir(), "junk.img")
	os.WriteFile(junk, nil, 0o644)
	os.Truncate(junk, 3<<30)
	f, _ := os.OpenFile(junk, os.O_RDWR, 0)
	f.WriteAt([]byte("LVM2 001"), (3<<30)-4096) // a signature near the end only
	f.Close()
	s := fakeSystem(t,
		fakeDisk{Name: "vda", Size: MinDiskSize, Image: filepath.Join(s0.DevDir, "vda"), Parts: parts, Model: "QEMU HARDDISK", WWN: "naa.5000c500a1b2c3d4"},
		fakeDisk{Name: "vdb", Size: 3 << 30, Serial: "EMPTY", Removable: true},
		fakeDisk{Name: "vdc", Size: 3 << 30, Image: junk},
		fakeDisk{Name: "loop0", Size: 3 << 30},
	)
	os.WriteFile(s.Mounts, []byte(filepath.Join(s.DevDir, "vda3")+" /quantix ext4 rw 0 0\n"), 0o644)
	disks, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 3 {
		t.Fatalf("Scan found %d disks, want vda, vdb, vdc (no loop0)", len(disks))
	}
	a, b, c := disks[0], disks[1], disks[2]
	if a.Table != "gpt" || a.Empty || len(a.Parts) != 4 || a.Model != "QEMU HARDDISK" || a.WWN != "naa.5000c500a1b2c3d4" {
		t.Errorf("vda = %+v", a)
	}
	if got := strings.Join(a.Labels(), ","); got != "QUANTIX-EFI,QUANTIX-BIOS,QUANTIX-CFG,QUANTIX-DATA" {
		t.Errorf("vda labels %s", got)
	}
	if len(a.Mounts) != 1 || a.Mounts[0] != "/quantix" {
		t.Errorf("vda mounts %v", a.Mounts)
	}
	if !b.Empty || !b.Removable || b.Serial != "EMPTY" || b.Size != 3<<30 {
		t.Errorf("vdb = %+v", b)
	}
	if c.Empty || c.Contents() != "unknown data" {
		t.Errorf("vdc with a signature in its last MiB: empty %v contents %q", c.Empty, c.Contents())
	}
}

// The interview asks for everything and insists on a typed confirmation before a
// disk holding data is chosen.
func TestInterview(t *testing.T) {
	disks := []*Disk{
		mkDisk("sr0", func(d *Disk) { d.Empty = false; d.Whole = &FSInfo{Type: "iso9660", Label: "QUANTIX-OS"} }),
		mkDisk("sda", withData),
		mkDisk("sdb", nil),
	}
	input := strings.Join([]string{
		"1",        // the boot medium: refused
		"2",        // data disk
		"no",       // not confirmed: choose again
		"2", "sda", // confirmed by typing its name
		"bad_name",    // invalid hostname: asked again
		"node9",       // hostname
		"static",      // network mode
		"",            // interface: auto
		"10.0.0.9/24", // address
		"10.0.0.1",    // gateway
		"10.0.0.1",    // dns
		"https://10.0.0.2:8080", "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789",
		"short",                  // the console's rules: asked again
		"password1", "password2", // differ: asked again
		"password1", "password1",
	}, "\n") + "\n"
	var out bytes.Buffer
	term := NewTerminal(&out, strings.NewReader(input))
	a, d, err := Interview(context.Background(), term, disks, quantix.ImageQuantixOS, Protect{VolumeLabel: "QUANTIX-OS"})
	if err != nil {
		t.Fatalf("Interview: %v\n%s", err, out.String())
	}
	if d.Name != "sda" || !a.Wipe || a.Hostname != "node9" || a.Network.Static.Address != "10.0.0.9/24" ||
		a.Agent.JoinToken != "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789" || a.ConsolePassword != "password1" {
		t.Errorf("Interview = %+v on %s", a, d.Name)
	}
	for _, want := range []string{"not selectable: it holds the running boot medium", "EVERYTHING ON IT WILL BE ERASED", "the passwords differ", "password: at least 8 characters needed, got 5", "invalid hostname"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the interview never said %q:\n%s", want, out.String())
		}
	}
	term = NewTerminal(io.Discard, strings.NewReader("sdX\n"))
	if err := Confirm(context.Background(), term, d); err != ErrAborted {
		t.Errorf("Confirm with the wrong name = %v, want ErrAborted", err)
	}
}
