package upgrade

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/installer/medium"
	"github.com/quantix/quantix/installer/medium/mediumtest"
)

// writeISO writes a real ISO9660 file holding files (medium paths).
func writeISO(t testing.TB, out string, files map[string][]byte) { mediumtest.WriteISO(t, out, files) }

type release struct {
	kernel, initrd []byte
}

// makeBundle writes an unsigned bundle folder for image and version whose ISO
// holds a kernel and an initramfs of size bytes each.
func makeBundle(t testing.TB, image, version string, size int) (string, release) {
	t.Helper()
	dir := t.TempDir()
	r := release{kernel: make([]byte, size), initrd: make([]byte, size)}
	io.ReadFull(rand.Reader, r.kernel)
	io.ReadFull(rand.Reader, r.initrd)
	writeISO(t, filepath.Join(dir, image+".iso"), map[string][]byte{medium.Kernel: r.kernel, medium.Initrd: r.initrd})
	m, _ := json.Marshal(map[string]any{"image": image, "version": version, "volume_label": "QUANTIX"})
	if err := os.WriteFile(filepath.Join(dir, image+".manifest.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, r
}

func keypair(t testing.TB, name string) (quantix.PublicKey, string) {
	t.Helper()
	base := filepath.Join(t.TempDir(), name)
	pub, err := Keygen(base, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub, base + ".key"
}

func sign(t testing.TB, dir, keyFile string) {
	t.Helper()
	k, err := LoadPrivateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := Sign(dir, k); err != nil {
		t.Fatal(err)
	}
}

var nodeRules = Rules{Image: quantix.ImageQuantixOS, Running: "0.2.0"}

func TestKeygenFiles(t *testing.T) {
	pub, keyFile := keypair(t, "release-2026")
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key %s: %v, mode %v; want 0600", keyFile, err, st.Mode().Perm())
	}
	b, _ := os.ReadFile(strings.TrimSuffix(keyFile, ".key") + ".pub")
	keys, err := quantix.ParsePublicKeys(b)
	if err != nil || len(keys) != 1 || !bytes.Equal(keys[0].Key, pub.Key) || keys[0].Name != "release-2026" {
		t.Errorf("ParsePublicKeys(%q) = %+v, %v", b, keys, err)
	}
	if _, err := Keygen(strings.TrimSuffix(keyFile, ".key"), nil); err == nil {
		t.Error("Keygen over an existing key succeeded, want a refusal")
	}
	if _, err := quantix.ParsePublicKey("ed25519 AAAA x"); err == nil {
		t.Error("ParsePublicKey of a short key succeeded")
	}
}

func TestVerify(t *testing.T) {
	pub, keyFile := keypair(t, "release")
	dir, _ := makeBundle(t, quantix.ImageQuantixOS, "0.3.0", 4096)
	sign(t, dir, keyFile)
	b, err := Verify(dir, []quantix.PublicKey{pub}, nodeRules)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if b.Image != quantix.ImageQuantixOS || b.Version != "0.3.0" || b.SignedBy != "release" || b.ISO != filepath.Join(dir, "quantix-os.iso") {
		t.Errorf("Verify = %+v", b)
	}
}

func TestVerifyRefuses(t *testing.T) {
	pub, keyFile := keypair(t, "release")
	_, otherKey := keypair(t, "stranger")
	for _, c := range []struct {
		name    string
		image   string
		version string
		prepare func(t *testing.T, dir string)
		trusted []quantix.PublicKey
		rules   Rules
		want    error
		says    string
	}{
		{name: "unsigned", prepare: func(t *testing.T, dir string) {}, want: ErrUnsigned, says: "qx-image sign"},
		{name: "signature missing", prepare: func(t *testing.T, dir string) {
			sign(t, dir, keyFile)
			os.Remove(filepath.Join(dir, quantix.BundleSignature))
		}, want: ErrUnsigned},
		{name: "untrusted key", prepare: func(t *testing.T, dir string) { sign(t, dir, otherKey) }, want: ErrBadSignature, says: "trusted: release"},
		{name: "no trusted keys", trusted: []quantix.PublicKey{}, prepare: func(t *testing.T, dir string) { sign(t, dir, keyFile) }, want: ErrBadSignature, says: "trusts no release keys"},
		{name: "sums edited", prepare: func(t *testing.T, dir string) {
			sign(t, dir, keyFile)
			p := filepath.Join(dir, quantix.BundleSums)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte("quantix-os.iso"), []byte("quantix-os.iso "), 1), 0o644)
		}, want: ErrBadSignature},
		{name: "iso changed", prepare: func(t *testing.T, dir string) {
			sign(t, dir, keyFile)
			f, _ := os.OpenFile(filepath.Join(dir, "quantix-os.iso"), os.O_RDWR, 0)
			f.WriteAt([]byte("X"), 40000)
			f.Close()
		}, want: ErrDamaged, says: "copy the bundle again"},
		{name: "qvdc bundle on a node", image: quantix.ImageQvDC, prepare: func(t *testing.T, dir string) { sign(t, dir, keyFile) }, want: ErrWrongImage, says: "use a quantix-os bundle"},
		{name: "older", version: "0.1.9", prepare: func(t *testing.T, dir string) { sign(t, dir, keyFile) }, want: ErrVersion, says: "older than the running 0.2.0"},
		{name: "pre-release of the running one", version: "0.2.0-rc1", prepare: func(t *testing.T, dir string) { sign(t, dir, keyFile) }, want: ErrVersion},
		{name: "running version unknown", rules: Rules{Image: quantix.ImageQuantixOS, Running: "dev"}, prepare: func(t *testing.T, dir string) { sign(t, dir, keyFile) }, want: ErrVersion, says: "force"},
	} {
		t.Run(c.name, func(t *testing.T) {
			image, version := quantix.ImageQuantixOS, "0.3.0"
			if c.image != "" {
				image = c.image
			}
			if c.version != "" {
				version = c.version
			}
			dir, _ := makeBundle(t, image, version, 64<<10)
			c.prepare(t, dir)
			trusted := c.trusted
			if trusted == nil {
				trusted = []quantix.PublicKey{pub}
			}
			rules := c.rules
			if rules.Image == "" {
				rules = nodeRules
			}
			b, err := Verify(dir, trusted, rules)
			if !errors.Is(err, c.want) || (c.says != "" && !strings.Contains(err.Error(), c.says)) {
				t.Errorf("Verify = %+v, %v; want %v saying %q", b, err, c.want, c.says)
			}
		})
	}
	// Forced, an older release is accepted.
	dir, _ := makeBundle(t, quantix.ImageQuantixOS, "0.1.0", 4096)
	sign(t, dir, keyFile)
	if _, err := Verify(dir, []quantix.PublicKey{pub}, Rules{Image: quantix.ImageQuantixOS, Running: "0.2.0", Force: true}); err != nil {
		t.Errorf("forced Verify of an older bundle: %v", err)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"0.2.0", "0.2.0", 0}, {"0.10.0", "0.9.9", 1}, {"1.0.0-rc1", "1.0.0", -1}, {"1.0.0-rc2", "1.0.0-rc1", 1}, {"0.1.0", "0.2.0", -1}} {
		if got, err := CompareVersions(c.a, c.b); err != nil || got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, %v; want %d", c.a, c.b, got, err, c.want)
		}
	}
	if _, err := CompareVersions("1.0", "1.0.0"); err == nil {
		t.Error("CompareVersions(1.0, ...) succeeded")
	}
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// espWithSlotA is an ESP folder as qx-install leaves it: slot a good.
func espWithSlotA(t *testing.T) string {
	t.Helper()
	esp := t.TempDir()
	for _, n := range []string{quantix.SlotKernel, quantix.SlotInitrd} {
		if err := quantix.WriteFileAtomic(filepath.Join(esp, quantix.ESPSlotFile("a", n)), []byte("old "+n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := bootenv.OnESP(esp).Write(bootenv.Initial()); err != nil {
		t.Fatal(err)
	}
	return esp
}

func TestStageAndCommit(t *testing.T) {
	pub, keyFile := keypair(t, "release")
	dir, rel := makeBundle(t, quantix.ImageQuantixOS, "0.3.0", 256<<10)
	sign(t, dir, keyFile)
	b, err := Verify(dir, []quantix.PublicKey{pub}, nodeRules)
	if err != nil {
		t.Fatal(err)
	}
	esp := espWithSlotA(t)
	s, err := Stage(b, esp, "a", testLog(t))
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	if s.Slot != "b" {
		t.Errorf("staged slot %s, want b", s.Slot)
	}
	for n, want := range map[string][]byte{quantix.SlotKernel: rel.kernel, quantix.SlotInitrd: rel.initrd} {
		got, err := os.ReadFile(filepath.Join(esp, quantix.ESPSlotFile("b", n)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("slot b %s: %d bytes, %v; want the bundle's %d bytes", n, len(got), err, len(want))
		}
	}
	mb, _ := os.ReadFile(filepath.Join(esp, quantix.ESPSlotFile("b", quantix.SlotManifest)))
	if m, err := quantix.ParseSlotManifest(mb); err != nil || m.Version != "0.3.0" || m.Image != quantix.ImageQuantixOS {
		t.Errorf("slot b manifest = %+v, %v", m, err)
	}
	if old, _ := os.ReadFile(filepath.Join(esp, quantix.ESPSlotFile("a", quantix.SlotKernel))); string(old) != "old vmlinuz" {
		t.Errorf("slot a's kernel changed: %q", old)
	}
	st, _, err := bootenv.OnESP(esp).Read()
	if err != nil {
		t.Fatal(err)
	}
	want := bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: quantix.SlotMaxTries}}
	if st != want {
		t.Errorf("environment after Stage = %+v, want %+v", st, want)
	}

	// On the trial, staging again is refused and writes nothing.
	before, _ := os.ReadFile(bootenv.OnESP(esp).Primary)
	if _, err := Stage(b, esp, "b", testLog(t)); !errors.Is(err, ErrOnTrial) {
		t.Errorf("Stage on a trial = %v, want ErrOnTrial", err)
	}
	if after, _ := os.ReadFile(bootenv.OnESP(esp).Primary); !bytes.Equal(before, after) {
		t.Error("a refused Stage changed the environment")
	}

	// An ISO swapped after Verify is not staged.
	esp2 := espWithSlotA(t)
	f, _ := os.OpenFile(b.ISO, os.O_RDWR, 0)
	orig := make([]byte, 1)
	f.ReadAt(orig, 50000)
	f.WriteAt([]byte{orig[0] ^ 1}, 50000)
	if _, err := Stage(b, esp2, "a", testLog(t)); err == nil || !strings.Contains(err.Error(), "changed since it was verified") {
		t.Errorf("Stage of an ISO changed after Verify = %v", err)
	}
	f.WriteAt(orig, 50000)
	f.Close()
	if st, _, _ := bootenv.OnESP(esp2).Read(); st != bootenv.Initial() {
		t.Errorf("a refused Stage changed the environment: %+v", st)
	}

	c, err := bootenv.OnESP(esp).Commit("b")
	if err != nil {
		t.Fatal(err)
	}
	if c.RolledBack != "" || c.State != (bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{OK: true}}) {
		t.Errorf("Commit(b) = %+v", c)
	}
	if slot, trial, _ := c.State.Boot(); slot != "b" || trial {
		t.Errorf("after Commit(b) the next boot is %s trial=%v, want b without a trial", slot, trial)
	}
}

// A trial whose tries ran out: GRUB booted a, Commit says b was rolled back.
func TestCommitAfterRollback(t *testing.T) {
	esp := espWithSlotA(t)
	if err := bootenv.OnESP(esp).Write(bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}}); err != nil {
		t.Fatal(err)
	}
	c, err := bootenv.OnESP(esp).Commit("a")
	if err != nil {
		t.Fatal(err)
	}
	if c.RolledBack != "b" || c.State.Order != [2]string{"a", "b"} {
		t.Errorf("Commit(a) after b's failed trial = %+v, want rolled back from b, order a b", c)
	}
}

// A rejected trial (a health gate failed) boots the other slot next.
func TestRejectTrial(t *testing.T) {
	esp := espWithSlotA(t)
	env := bootenv.OnESP(esp)
	if err := env.Write(bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: 2}}); err != nil {
		t.Fatal(err)
	}
	st, err := env.Reject("b")
	if err != nil {
		t.Fatal(err)
	}
	if slot, trial, _ := st.Boot(); slot != "a" || trial {
		t.Errorf("after Reject(b) the next boot is %s (trial %v), want a", slot, trial)
	}
	if _, err := env.Reject("a"); err == nil {
		t.Error("Reject of the good slot a succeeded")
	}
}

// A Stage that dies while writing the new slot's files leaves the booted slot as
// the next boot, never the half-written one.
func TestStageFailureKeepsBootedSlot(t *testing.T) {
	pub, keyFile := keypair(t, "release")
	dir, _ := makeBundle(t, quantix.ImageQuantixOS, "0.3.0", 4096)
	sign(t, dir, keyFile)
	b, err := Verify(dir, []quantix.PublicKey{pub}, nodeRules)
	if err != nil {
		t.Fatal(err)
	}
	esp := espWithSlotA(t)
	// A good slot b from an earlier release, then a file where b's folder must be.
	if err := bootenv.OnESP(esp).Write(bootenv.State{Order: [2]string{"a", "b"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{OK: true}}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(esp, quantix.ESPSlotsDir), 0o755)
	if err := os.WriteFile(filepath.Join(esp, quantix.ESPSlotsDir, "b"), []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Stage(b, esp, "a", testLog(t)); err == nil {
		t.Fatal("Stage succeeded with slot b's folder blocked")
	}
	st, _, err := bootenv.OnESP(esp).Read()
	if err != nil {
		t.Fatal(err)
	}
	if slot, trial, ok := st.Boot(); !ok || slot != "a" || trial || st.B.OK || st.B.Tries != 0 {
		t.Errorf("after a failed Stage: %+v boots %s (trial %v); want a, b neither good nor tried", st, slot, trial)
	}
}

// BenchmarkVerify32MiB verifies a signed bundle whose ISO is about 32 MiB.
func BenchmarkVerify32MiB(b *testing.B) {
	pub, keyFile := keypair(b, "release")
	dir, _ := makeBundle(b, quantix.ImageQuantixOS, "0.3.0", 16<<20)
	sign(b, dir, keyFile)
	st, _ := os.Stat(filepath.Join(dir, "quantix-os.iso"))
	b.SetBytes(st.Size())
	b.ResetTimer()
	for range b.N {
		if _, err := Verify(dir, []quantix.PublicKey{pub}, nodeRules); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStage32MiB stages a bundle of about 32 MiB (kernel and initramfs of
// 16 MiB each) onto an ESP folder on the test's temp filesystem, with the fsyncs.
func BenchmarkStage32MiB(b *testing.B) {
	pub, keyFile := keypair(b, "release")
	dir, _ := makeBundle(b, quantix.ImageQuantixOS, "0.3.0", 16<<20)
	sign(b, dir, keyFile)
	bundle, err := Verify(dir, []quantix.PublicKey{pub}, nodeRules)
	if err != nil {
		b.Fatal(err)
	}
	esp := b.TempDir()
	if err := bootenv.OnESP(esp).Write(bootenv.Initial()); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(32 << 20)
	b.ResetTimer()
	for range b.N {
		if _, err := Stage(bundle, esp, "a", testLog(b)); err != nil {
			b.Fatal(err)
		}
	}
}

// Inspect names what a bundle claims without trusting it: an unsigned or broken
// folder is no bundle; a bundle signed by a stranger is listed (Verify refuses it).
func TestInspect(t *testing.T) {
	_, keyFile := keypair(t, "stranger")
	dir, _ := makeBundle(t, quantix.ImageQuantixOS, "0.3.0", 4096)
	if _, err := Inspect(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Inspect(no SHA256SUMS) = %v, want not exist", err)
	}
	sign(t, dir, keyFile)
	sig, _ := os.ReadFile(filepath.Join(dir, quantix.BundleSignature))
	os.Remove(filepath.Join(dir, quantix.BundleSignature))
	if _, err := Inspect(dir); !errors.Is(err, ErrUnsigned) {
		t.Errorf("Inspect(no signature) = %v, want %v", err, ErrUnsigned)
	}
	os.WriteFile(filepath.Join(dir, quantix.BundleSignature), sig, 0o644)
	u, err := Inspect(dir)
	if err != nil || u.ISO != "quantix-os.iso" || u.Image != quantix.ImageQuantixOS || u.Version != "0.3.0" || u.Dir != dir {
		t.Errorf("Inspect = %+v, %v", u, err)
	}
	os.Remove(filepath.Join(dir, "quantix-os.iso"))
	if _, err := Inspect(dir); !errors.Is(err, ErrDamaged) {
		t.Errorf("Inspect(no iso) = %v, want %v", err, ErrDamaged)
	}
	if _, err := Inspect(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Inspect(empty folder) = %v, want not exist", err)
	}
}

// A power cut during an earlier stage leaves WriteFileAtomic's temp files in the
// slot's folder; the next stage removes them (they would fill the ESP) and
// leaves everything else alone.
func TestStageRemovesLeftovers(t *testing.T) {
	pub, keyFile := keypair(t, "release")
	dir, rel := makeBundle(t, quantix.ImageQuantixOS, "0.3.0", 4096)
	sign(t, dir, keyFile)
	b, err := Verify(dir, []quantix.PublicKey{pub}, nodeRules)
	if err != nil {
		t.Fatal(err)
	}
	esp := espWithSlotA(t)
	slotDir := filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile("b", "")))
	if err := os.MkdirAll(slotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	left := []string{"." + quantix.SlotInitrd + ".tmp-123456", "." + quantix.SlotKernel + ".tmp-9"}
	for _, n := range append(left, "notes.txt") {
		if err := os.WriteFile(filepath.Join(slotDir, n), []byte("half written"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Stage(b, esp, "a", testLog(t)); err != nil {
		t.Fatalf("Stage: %v", err)
	}
	for _, n := range left {
		if _, err := os.Stat(filepath.Join(slotDir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s still there after the stage (%v)", n, err)
		}
	}
	if _, err := os.Stat(filepath.Join(slotDir, "notes.txt")); err != nil {
		t.Errorf("a file that is no leftover was removed: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(slotDir, quantix.SlotInitrd)); !bytes.Equal(got, rel.initrd) {
		t.Errorf("slot b initramfs: %d bytes, want the bundle's %d", len(got), len(rel.initrd))
	}
}
