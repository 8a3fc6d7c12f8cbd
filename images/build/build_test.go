package build

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/gzip"
	"github.com/u-root/mkuimage/cpio"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/spec"
)

func TestConfigDiskRoundTrip(t *testing.T) {
	for _, label := range []string{quantix.LabelConfig, quantix.LabelInstall} {
		out := filepath.Join(t.TempDir(), "cfg.img")
		files := map[string][]byte{
			"hostname":             []byte("node-1\n"),
			"network/network.toml": []byte("mode = \"static\"\n"),
			"node/agent.toml":      []byte("control_plane = \"http://10.0.0.1:8080\"\n"),
			"install/answers.toml": bytes.Repeat([]byte("#"), 70000),
		}
		if err := ConfigDisk(out, label, 0, files); err != nil {
			t.Fatalf("ConfigDisk(%s) = %v", label, err)
		}
		st, _ := os.Stat(out)
		if st.Size() != DefaultConfigDiskSize {
			t.Errorf("size = %d, want %d", st.Size(), DefaultConfigDiskSize)
		}
		gotLabel, got, err := ReadConfigDisk(out)
		if err != nil {
			t.Fatalf("ReadConfigDisk = %v", err)
		}
		if gotLabel != label {
			t.Errorf("label = %q, want %q", gotLabel, label)
		}
		if diff := cmp.Diff(files, got); diff != "" {
			t.Errorf("files read back (-want +got):\n%s", diff)
		}
	}
}

func TestConfigDiskRejects(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		label   string
		size    int64
		files   map[string][]byte
		wantErr string
	}{
		{"QUANTIX-DATA", 0, nil, `label "QUANTIX-DATA" must be QUANTIX-CFG or QUANTIX-INSTALL`},
		{quantix.LabelConfig, 0, map[string][]byte{"/hostname": nil}, `file path "/hostname" must be relative`},
		{quantix.LabelConfig, 0, map[string][]byte{"a/../../b": nil}, `must be relative and clean`},
		{quantix.LabelConfig, 8 << 20, nil, "below 9 MiB"},
		{quantix.LabelConfig, 10 << 20, map[string][]byte{"big": make([]byte, 6<<20)}, "do not fit"},
	}
	for _, tt := range tests {
		err := ConfigDisk(filepath.Join(dir, "x.img"), tt.label, tt.size, tt.files)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ConfigDisk(%s, %d, %v) = %v, want %q", tt.label, tt.size, tt.files, err, tt.wantErr)
		}
	}
}

// TestTreeWrite checks the initramfs writer: sorted, parents first, overrides win,
// owners, inodes and times normalised, and byte-identical on a second run.
func TestTreeWrite(t *testing.T) {
	mk := func() []byte {
		tr := newTree()
		tr.file("etc/quantix/image.toml", []byte("a"), 0o644)
		tr.add(cpio.Record{Info: cpio.Info{Name: "bbin/bb", Mode: cpio.S_IFREG | 0o755, UID: 1000, GID: 1000, MTime: 12345, Ino: 77, FileSize: 2}, ReaderAt: bytes.NewReader([]byte("bb"))})
		tr.add(cpio.Symlink("init", "bbin/init"))
		tr.file("etc/passwd", []byte("old"), 0o644)
		tr.file("etc/passwd", []byte("new"), 0o600) // an overlay replaces the base
		var buf bytes.Buffer
		if _, _, err := tr.write(&buf, 1700000000, spec.CompressionGzip); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	a, b := mk(), mk()
	if !bytes.Equal(a, b) {
		t.Fatal("two writes of the same tree differ")
	}
	zr, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		if r.Name == "TRAILER!!!" {
			continue
		}
		if r.UID != 0 || r.GID != 0 || r.Ino != 0 || r.MTime != 1700000000 {
			t.Errorf("%s: uid %d gid %d ino %d mtime %d, want 0 0 0 1700000000", r.Name, r.UID, r.GID, r.Ino, r.MTime)
		}
		if r.Name == "etc/passwd" {
			data, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			// The overlay file is 0600 on disk; the image keeps what git tracks
			// (not executable: 0644), so the builder's umask cannot change it.
			if string(data) != "new" || r.Mode&0o777 != 0o644 {
				t.Errorf("etc/passwd = %q mode %o, want the overlay's \"new\" as 0644", data, r.Mode&0o777)
			}
		}
	}
	want := []string{"bbin", "bbin/bb", "etc", "etc/passwd", "etc/quantix", "etc/quantix/image.toml", "init"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func TestUpdateSums(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a.iso", "b.iso"} {
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	sums := filepath.Join(dir, "SHA256SUMS")
	os.WriteFile(sums, []byte("1111  b.iso\n9999  gone.iso\n"), 0o644)
	if err := updateSums(sums, "a.iso", "2222"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(sums)
	if want := "2222  a.iso\n1111  b.iso\n"; string(got) != want {
		t.Errorf("SHA256SUMS = %q, want %q", got, want)
	}
}

// TestBuildReproducible builds Quantix OS twice from scratch (the u-root busybox and
// the extension images rebuilt each time) with one SOURCE_DATE_EPOCH and wants
// identical ISOs: once in this process, once as a release engineer elsewhere would,
// with qx-image in another time zone (UTC+14), another locale and umask 077. It checks the manifest too. It needs the
// kernel package (downloaded into the cache on first use) and a minute or two; -short
// skips it.
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two ISOs; skipped with -short")
	}
	epoch := int64(1700000000)
	b, err := New(Config{
		Spec: "../quantix-os.toml", OutDir: t.TempDir(), SourceDateEpoch: &epoch, Rebuild: true,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Build(context.Background())
	if err != nil {
		t.Fatalf("build here: %v", err)
	}
	var m Manifest
	data, err := os.ReadFile(res.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.ISO.SHA256 != res.SHA256 || m.Kernel.SHA256 != b.Image().Kernel.SHA256 || len(m.Modules) == 0 ||
		len(m.Commands) == 0 || len(m.Commands[0].GoModules) == 0 || len(m.GoModules) < 10 || m.GoModules[0].Sum == "" || len(m.URoot.GoModules) == 0 || len(m.Overlay) == 0 || len(m.Boot) == 0 {
		t.Errorf("manifest lacks inputs: %s", data)
	}
	if len(m.Extensions) != 1 || m.Extensions[0].Name != quantix.HypervisorExtension || m.Extensions[0].Files < 50 || m.Extensions[0].Size < 1<<20 {
		t.Errorf("manifest extensions = %+v, want the hypervisor extension with its files", m.Extensions)
	}
	checkInitramfs(t, res.ISO, m.Kernel.Release)
	sumsFile, _ := os.ReadFile(filepath.Join(filepath.Dir(res.ISO), "SHA256SUMS"))
	if want := res.SHA256 + "  quantix-os.iso\n"; string(sumsFile) != want {
		t.Errorf("SHA256SUMS = %q, want %q", sumsFile, want)
	}

	// The same commit as a release engineer elsewhere builds it: another time
	// zone, locale and umask. Another folder still changes the bytes (the u-root
	// busybox, most likely; see README): not checked until that is fixed.
	repo, err := findRepo(".")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "-c", `umask 077 && exec "$GO" run ./images/cmd/qx-image build --rebuild --out "$OUT" images/quantix-os.toml`)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "GO="+goTool(), "OUT="+out, fmt.Sprintf("SOURCE_DATE_EPOCH=%d", epoch),
		"TZ=Pacific/Kiritimati", "LANG=de_DE.UTF-8", "LC_ALL=de_DE.UTF-8")
	if outb, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build elsewhere: %v\n%s", err, outb)
	}
	other, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if want := res.SHA256 + "  quantix-os.iso\n"; string(other) != want {
		t.Errorf("the build in another time zone, locale and umask differs:\n got %s want %s", other, want)
	}
}

func TestMissingCommandIsClear(t *testing.T) {
	err := goBuild("../..", t.TempDir(), "1", []string{"./services/cmd/qx-nonexistent"})
	if err == nil || !strings.Contains(err.Error(), "./services/cmd/qx-nonexistent: its main package does not exist yet") {
		t.Errorf("goBuild(missing) = %v", err)
	}
}

// checkInitramfs reads the initramfs back from the ISO: u-root's init as /init,
// qx-init as uinit and modprobe, the image config and modules, and no shell at all
// (Quantix OS has no /bin/sh; nothing is linked as u-root's default shell).
func checkInitramfs(t *testing.T, iso, release string) {
	t.Helper()
	f, err := os.Open(iso)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := OpenInitramfs(bytes.NewReader(isoFile(t, f, "boot/initrd.img")))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]string{}
	files := map[string]bool{}
	for _, r := range recs {
		files[r.Name] = true
		if r.Mode&cpio.S_IFMT == cpio.S_IFLNK {
			target, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			links[r.Name] = string(target)
		}
	}
	for name, want := range map[string]string{"init": "bbin/init", "bin/uinit": "../bbin/qx-init"} {
		if links[name] != want {
			t.Errorf("initramfs %s -> %q, want -> %q", name, links[name], want)
		}
	}
	// qx-init links /sbin/modprobe when it starts: before that, every module the
	// kernel asks for (crypto self-tests) would start a Go process.
	if files["sbin/modprobe"] {
		t.Errorf("initramfs has sbin/modprobe (-> %q): the kernel would run it before init", links["sbin/modprobe"])
	}
	for _, name := range []string{"bbin/bb", "bbin/qx-init", "etc/quantix/image.toml", "etc/passwd",
		"lib/modules/" + release + "/modules.dep", "lib/modules/" + release + "/modules.alias",
		"lib/modules/" + release + "/kernel/fs/ext4/ext4.ko"} {
		if !files[name] {
			t.Errorf("initramfs lacks %s", name)
		}
	}
	for _, name := range []string{"bin/sh", "bin/defaultsh", "bbin/sh", "bbin/gosh", "bbin/elvish"} {
		if files[name] {
			t.Errorf("initramfs has %s: nothing may offer a shell", name)
		}
	}
}

// TestKernelErrors: a kernel apt cannot deliver, or a cached .deb with another
// hash, is an error naming the package, version and hash wanted.
func TestKernelErrors(t *testing.T) {
	k := spec.Kernel{Package: "linux-image-6.1.0-56-amd64", Version: "0.0.0-quantix-missing", SHA256: strings.Repeat("ab", 32)}
	cache := t.TempDir()
	_, err := fetchKernelDeb(k, cache, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "linux-image-6.1.0-56-amd64=0.0.0-quantix-missing (sha256 abab") || !strings.Contains(err.Error(), "cannot be had") {
		t.Errorf("fetchKernelDeb(missing version) = %v", err)
	}
	os.MkdirAll(filepath.Join(cache, "debs"), 0o755)
	os.WriteFile(filepath.Join(cache, "debs", "linux-image-6.1.0-56-amd64_0.0.0-quantix-missing_amd64.deb"), []byte("not it"), 0o644)
	_, err = fetchKernelDeb(k, cache, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "the image file pins "+k.SHA256) {
		t.Errorf("fetchKernelDeb(wrong hash) = %v", err)
	}
}

func TestExtractDebRejects(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.deb")
	os.WriteFile(p, []byte("garbage"), 0o644)
	if err := extractDeb(p, t.TempDir(), func(string) bool { return true }); err == nil || !strings.Contains(err.Error(), "not a Debian package") {
		t.Errorf("extractDeb(garbage) = %v", err)
	}
}

// TestBuildStepErrorNamesStep: a step that fails names itself, in the error and
// on the progress output, and no later step runs.
func TestBuildStepErrorNamesStep(t *testing.T) {
	data, err := os.ReadFile("../quantix-os.toml")
	if err != nil {
		t.Fatal(err)
	}
	img, err := spec.Parse("quantix-os.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	s = strings.Replace(s, `version = "`+img.Kernel.Version+`"`, `version = "0.0.0-quantix-missing"`, 1)
	s = strings.Replace(s, img.Kernel.SHA256, strings.Repeat("ab", 32), 1)
	specFile := filepath.Join(t.TempDir(), "quantix-os.toml")
	if err := os.WriteFile(specFile, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	// A cached package with another hash fails the kernel step without apt.
	cache := t.TempDir()
	os.MkdirAll(filepath.Join(cache, "debs"), 0o755)
	os.WriteFile(filepath.Join(cache, "debs", img.Kernel.Package+"_0.0.0-quantix-missing_amd64.deb"), []byte("not it"), 0o644)
	var progress bytes.Buffer
	b, err := New(Config{Spec: specFile, Repo: "../..", OutDir: t.TempDir(), CacheDir: cache, Progress: &progress},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Build(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "build quantix-os: kernel 0.0.0-quantix-missing: ") || !strings.Contains(err.Error(), "the image file pins") {
		t.Errorf("Build = %v, want an error naming the kernel step", err)
	}
	if p := progress.String(); !strings.Contains(p, "kernel 0.0.0-quantix-missing") || !strings.Contains(p, "failed after") || strings.Contains(p, "u-root") {
		t.Errorf("progress:\n%s\nwant the kernel step failed and no later step", p)
	}
}
