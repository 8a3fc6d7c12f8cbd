package installer

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/services/network"
)

const testAnswerOS = `
hostname = "Node-7"
after = "poweroff"
console_password = "correct horse"

[target]
serial = "QX-SERIAL-1"

[network]
mode = "static"
dns = ["10.0.0.1"]
[network.static]
address = "10.0.0.7/24"
gateway = "10.0.0.1"

[agent]
control_plane = "https://10.0.0.2:8080"
join_token = "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789"
`

// install runs the real installer against the disks of s with the test medium.
func install(t *testing.T, s Scanner, image, answer string) (*Result, *Installer, string, error) {
	t.Helper()
	if testing.Short() {
		t.Skip("installs onto a disk image file: skipped with -short")
	}
	a, err := ParseAnswer("install.toml", []byte(answer), image)
	if err != nil {
		t.Fatalf("ParseAnswer: %v", err)
	}
	med, err := OpenMedium(testMedium(t))
	if err != nil {
		t.Fatal(err)
	}
	defer med.Close()
	var console bytes.Buffer
	in, err := New(Config{
		Image: image, Version: "test", VolumeLabel: "QUANTIX-OS", Answer: a, Medium: med, Scanner: s,
		Cmdline: quantix.ParseCmdline("BOOT_IMAGE=/boot/vmlinuz console=ttyS0,115200 panic=-1 quantix.install=install.toml initrd=/boot/initrd.gz"),
		Console: &console,
	}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	res, err := in.Run(context.Background())
	t.Logf("console:\n%s", console.String())
	return res, in, console.String(), err
}

func TestInstallOntoImageFile(t *testing.T) {
	s := fakeSystem(t, fakeDisk{Name: "vda", Size: 3 << 30, Serial: "QX-SERIAL-1"},
		fakeDisk{Name: "vdb", Size: 3 << 30, Serial: "OTHER"})
	res, _, consoleOut, err := install(t, s, quantix.ImageQuantixOS, testAnswerOS)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	img := filepath.Join(s.DevDir, "vda")
	if res.Target.Path != img {
		t.Fatalf("target %s, want %s", res.Target.Path, img)
	}
	if m, ok := quantix.ParseMarker(lastLineWith(consoleOut, quantix.MarkerPrefix+quantix.MarkerInstallComplete)); !ok || m.Get("hostname") != "node-7" || m.Get("after") != "poweroff" {
		t.Errorf("install-complete marker = %+v, want hostname node-7 after poweroff", m)
	}

	// Re-open with go-diskfs: the GPT.
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tab, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	g := tab.(*gpt.Table)
	want := []struct {
		name string
		typ  gpt.Type
	}{{quantix.LabelEFI, TypeESP}, {BIOSBootName, TypeBIOSBoot}, {quantix.LabelConfig, TypeLinux}, {quantix.LabelData, TypeLinux}}
	for i, w := range want {
		p := g.Partitions[i]
		if p.Name != w.name || !strings.EqualFold(string(p.Type), string(w.typ)) || p.Start%2048 != 0 {
			t.Errorf("partition %d = %q %s start %d, want %q %s MiB-aligned", i+1, p.Name, p.Type, p.Start, w.name, w.typ)
		}
	}
	if !strings.EqualFold(g.GUID, res.Plan.DiskGUID) {
		t.Errorf("disk GUID %s, want %s", g.GUID, res.Plan.DiskGUID)
	}
	// ESP contents.
	esp, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	if l := strings.TrimSpace(esp.Label()); l != quantix.LabelEFI {
		t.Errorf("ESP label %q", l)
	}
	medium := testMedium(t)
	for espPath, medPath := range map[string]string{quantix.ESPSlotFile(quantix.SlotA, quantix.SlotKernel): MediumKernel,
		quantix.ESPSlotFile(quantix.SlotA, quantix.SlotInitrd): MediumInitrd, ESPEFI: MediumEFI} {
		got, err := readFS(esp, "/"+espPath)
		if err != nil {
			t.Fatalf("ESP %s: %v", espPath, err)
		}
		src, _ := os.ReadFile(filepath.Join(medium, medPath))
		if !bytes.Equal(got, src) {
			t.Errorf("ESP %s differs from the medium's %s", espPath, medPath)
		}
	}
	cfgText, err := readFS(esp, "/"+ESPGrubCfg)
	if err != nil {
		t.Fatal(err)
	}
	wantLine := "linux /EFI/quantix/a/vmlinuz console=ttyS0,115200 panic=-1 quantix.disk=" + strings.ToLower(res.Plan.DiskGUID) + " quantix.slot=a\n"
	if !strings.Contains(string(cfgText), wantLine) || strings.Contains(string(cfgText), "quantix.install") {
		t.Errorf("grub.cfg:\n%s\nwant the line %q and no quantix.install", cfgText, wantLine)
	}
	if _, err := readFS(esp, "/"+ESPIncomplete); err == nil {
		t.Errorf("%s still on the ESP after a successful install", ESPIncomplete)
	}

	// Config files, read back and loaded with their owners' loaders.
	cfg, err := d.GetFilesystem(3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"hostname", "network/network.toml", "node/agent.toml", "node/identity.toml", "console/password"} {
		b, err := readFS(cfg, name)
		if err != nil {
			t.Fatalf("QUANTIX-CFG %s: %v", name, err)
		}
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, b, 0o600)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hostname")); string(b) != "node-7\n" {
		t.Errorf("hostname file %q, want node-7", b)
	}
	ns, err := network.Load(filepath.Join(dir, "network/network.toml"))
	if err != nil || ns.Mode != "static" || ns.Static.Address != "10.0.0.7/24" {
		t.Errorf("network.toml: %+v, %v", ns, err)
	}
	ac, err := agent.Load(filepath.Join(dir, "node/agent.toml"))
	if err != nil || ac.ControlPlane != "https://10.0.0.2:8080" || ac.JoinToken != "qx1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.join-token-0123456789" {
		t.Errorf("agent.toml: %+v, %v", ac, err)
	}
	if _, err := agent.LoadIdentity(filepath.Join(dir, "node/identity.toml")); err != nil {
		t.Errorf("identity.toml: %v", err)
	}
	if st, err := statFS(cfg, "node/identity.toml"); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("identity.toml mode: %v %v, want 0600", st, err)
	}
	// The console password: where and as the console reads it, and the console's
	// own store accepts the answer file's password and nothing else.
	cb, _ := os.ReadFile(filepath.Join(dir, "console/password"))
	if bytes.Contains(cb, []byte("correct horse")) || !bytes.HasPrefix(cb, []byte("$argon2id$v=19$")) ||
		bytes.Count(cb, []byte("\n")) != 1 || !bytes.HasSuffix(cb, []byte("\n")) {
		t.Errorf("console/password must hold one argon2id PHC string and a newline:\n%q", cb)
	}
	if st, err := statFS(cfg, "console/password"); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("console/password mode: %v %v, want 0600", st, err)
	}
	ps := console.PasswordStore{Path: filepath.Join(dir, "console/password")}
	if err := ps.Verify("correct horse"); err != nil {
		t.Errorf("the console rejects the installed password: %v", err)
	}
	if err := ps.Verify("correct horsE"); !errors.Is(err, console.ErrWrongPassword) {
		t.Errorf("the console's Verify(wrong password) = %v, want ErrWrongPassword", err)
	}
	if _, err := statFS(cfg, "console/console.toml"); err == nil {
		t.Errorf("console/console.toml is on QUANTIX-CFG; the console reads console/password only")
	}

	// The real filesystem checkers agree.
	for _, c := range []struct {
		part int
		tool string
		args []string
	}{{1, "fsck.vfat", []string{"-n"}}, {3, "e2fsck", []string{"-fn"}}, {4, "e2fsck", []string{"-fn"}}} {
		q := res.Plan.Parts[c.part-1]
		if _, err := exec.LookPath(c.tool); err != nil {
			t.Fatalf("%s missing: run make deps (apt-get install dosfstools e2fsprogs)", c.tool)
		}
		part := sparseCopy(t, img, q.Start, q.Size)
		out, err := exec.Command(c.tool, append(c.args, part)...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %s on %s: %v\n%s", c.tool, c.args, q.Name, err, out)
		}
	}
	// util-linux reads the same GPT: the disk GUID (what quantix.disk= names, and
	// what init compares), partition names and types.
	bl, err := exec.Command("blkid", "-p", "-o", "export", img).Output()
	if err != nil {
		t.Fatalf("blkid (util-linux): %v", err)
	}
	if !strings.Contains(string(bl), "PTUUID="+strings.ToLower(res.Plan.DiskGUID)) || !strings.Contains(string(bl), "PTTYPE=gpt") {
		t.Errorf("blkid -p %s:\n%s\nwant PTUUID=%s PTTYPE=gpt", img, bl, res.Plan.DiskGUID)
	}
	px, err := exec.Command("partx", "--show", "-g", "-o", "NR,START,NAME,TYPE", img).Output()
	if err != nil {
		t.Fatalf("partx (util-linux): %v", err)
	}
	wantPX := "1 2048 QUANTIX-EFI c12a7328-f81f-11d2-ba4b-00a0c93ec93b\n" +
		"2 1050624 QUANTIX-BIOS 21686148-6449-6e6f-744e-656564454649\n" +
		"3 1052672 QUANTIX-CFG 0fc63daf-8483-4772-8e79-3d69d8477de4\n" +
		"4 1576960 QUANTIX-DATA 0fc63daf-8483-4772-8e79-3d69d8477de4\n"
	if got := strings.Join(strings.Fields(string(px)), " "); got != strings.Join(strings.Fields(wantPX), " ") {
		t.Errorf("partx --show:\n%s\nwant\n%s", px, wantPX)
	}
	// The other disk was not touched.
	if fileSHA(t, filepath.Join(s.DevDir, "vdb")) != zeroSHA(t, 3<<30) {
		t.Errorf("vdb was written")
	}
}

func lastLineWith(s, sub string) string {
	out := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = l
		}
	}
	return out
}

func zeroSHA(t testing.TB, size int64) string {
	p := filepath.Join(t.TempDir(), "zero")
	f, _ := os.Create(p)
	f.Truncate(size)
	f.Close()
	return fileSHA(t, p)
}

// A disk holding data without wipe = true is refused and stays byte-identical.
func TestRefusedDiskLeftByteIdentical(t *testing.T) {
	img := filepath.Join(t.TempDir(), "data.img")
	f, _ := os.Create(img)
	f.Truncate(3 << 30)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", "-L", "precious", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s (apt-get install e2fsprogs)", err, out)
	}
	before := fileSHA(t, img)
	s := fakeSystem(t, fakeDisk{Name: "sda", Size: 3 << 30, Serial: "DATA-1", Image: img})
	for _, answer := range []string{
		strings.Replace(testAnswerOS, `serial = "QX-SERIAL-1"`, `serial = "DATA-1"`, 1),
		strings.Replace(testAnswerOS, `serial = "QX-SERIAL-1"`, `only_empty = true`, 1),
		strings.Replace(testAnswerOS, `serial = "QX-SERIAL-1"`, `path = "/dev/sda"`, 1),
	} {
		_, in, _, err := install(t, s, quantix.ImageQuantixOS, answer)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("install on a disk holding ext4 without wipe: err = %v, want ErrRefused", err)
		}
		if !strings.Contains(err.Error(), "precious") && !strings.Contains(err.Error(), "no disk is empty") {
			t.Errorf("refusal %q does not say what is on the disk", err)
		}
		if in.State != StateUntouched {
			t.Errorf("state %q, want untouched", in.State)
		}
		if after := fileSHA(t, img); after != before {
			t.Fatalf("refused disk changed: sha256 %s -> %s", before, after)
		}
	}
}

// A failure after the disk was cleared leaves it without a partition table, and a
// failure after the GPT leaves INSTALL-INCOMPLETE on the ESP; the error says which.
func TestFailedWriteLeavesDiskMarked(t *testing.T) {
	s := fakeSystem(t, fakeDisk{Name: "vda", Size: 3 << 30, Serial: "QX-SERIAL-1"})
	img := filepath.Join(s.DevDir, "vda")
	// An earlier install's GPT on the disk: wipe = true.
	if err := os.WriteFile(filepath.Join(t.TempDir(), "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := ParseAnswer("install.toml", []byte("wipe = true\n"+testAnswerOS), quantix.ImageQuantixOS)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Short() {
		t.Skip("writes a disk image: skipped with -short")
	}
	med, err := OpenMedium(testMedium(t))
	if err != nil {
		t.Fatal(err)
	}
	src, err := ReadSource(med)
	if err != nil {
		t.Fatal(err)
	}
	files, err := BuildConfig(a, quantix.ImageQuantixOS, "")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(3 << 30)
	if err != nil {
		t.Fatal(err)
	}
	job := Job{Plan: plan, Target: img, Source: src, Config: files, Title: "Quantix OS", Cmdline: "console=ttyS0", Mkfs: "false"}
	w, err := NewWriter(job, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	err = w.Write()
	var we *WriteError
	if !errors.As(err, &we) || we.State != StateBlank || !strings.Contains(err.Error(), "QUANTIX-DATA") {
		t.Fatalf("Write with a failing mkfs.ext4 = %v, want a WriteError at QUANTIX-DATA with state blank", err)
	}
	disks, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if disks[0].Table != "" || len(disks[0].Labels()) != 0 {
		t.Errorf("after a failed write the disk shows table %q labels %v, want none", disks[0].Table, disks[0].Labels())
	}

	// Now a write that succeeds but is never finished: the marker stays.
	job.Mkfs = ""
	w, err = NewWriter(job, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(job, true); err != nil {
		t.Fatalf("Verify before Finish: %v", err)
	}
	if _, err := Verify(job, false); err == nil || !strings.Contains(err.Error(), ESPIncomplete) {
		t.Errorf("Verify(marker gone) before Finish = %v, want an error naming %s", err, ESPIncomplete)
	}
	// A damaged file is caught by the read-back.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := plan.Part(quantix.LabelConfig)
	_ = cfg
	core := plan.Part(BIOSBootName)
	if _, err := f.WriteAt([]byte("garbage!"), core.Start+4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Verify(job, true); err == nil || !strings.Contains(err.Error(), "core.img") {
		t.Errorf("Verify after damaging core.img = %v, want a core.img mismatch", err)
	}
}
