package console

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/services/initd"
	"github.com/quantix/quantix/upgrade/upgradetest"
)

// upgradeInit is qx-init's real control socket with its real slot keeper over
// an ESP folder as qx-install leaves it (slot a good, holding running; b empty),
// trusting the key it returns; without ab it is a live boot's init (no slots).
// Reboot requests arrive on actions.
type upgradeInit struct {
	sock, esp string
	keyFile   string
	actions   chan quantix.HaltAction
}

func newUpgradeInit(t *testing.T, running string, ab bool) *upgradeInit {
	t.Helper()
	esp := t.TempDir()
	if err := bootenv.OnESP(esp).Write(bootenv.Initial()); err != nil {
		t.Fatal(err)
	}
	man, _ := quantix.SlotManifestInfo{Image: quantix.ImageQuantixOS, Version: running,
		KernelSHA256: strings.Repeat("a", 64), InitrdSHA256: strings.Repeat("b", 64)}.Encode()
	p := filepath.Join(esp, filepath.FromSlash(quantix.ESPSlotFile(quantix.SlotA, quantix.SlotManifest)))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, man, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, keyFile := upgradetest.Keypair(t, "release-2026")
	keys := filepath.Join(t.TempDir(), "trusted-keys")
	os.WriteFile(keys, []byte(pub.String()+"\n"), 0o644)

	log := slog.New(slog.DiscardHandler)
	k := initd.NewSlotKeeper(quantix.SlotA, false)
	k.WithESP = func(fn func(string) error) error { return fn(esp) }
	k.Image, k.Version, k.DataDir, k.Log, k.KeyFiles = quantix.ImageQuantixOS, running, t.TempDir(), log, []string{keys}
	sup, err := initd.NewSupervisor(initd.SupervisorConfig{LogDir: t.TempDir()}, log)
	if err != nil {
		t.Fatal(err)
	}
	in := &upgradeInit{esp: esp, keyFile: keyFile, actions: make(chan quantix.HaltAction, 1)}
	ctl := initd.NewControl(sup, in.actions, log)
	if ab {
		ctl.Slots = k
	}
	dir, err := os.MkdirTemp("", "qxupg") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	in.sock = filepath.Join(dir, "init.sock")
	ln, err := ctl.Listen(in.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return in
}

func (in *upgradeInit) espFiles(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	for _, p := range []string{quantix.ESPEnv, quantix.ESPEnvBackup, quantix.ESPSlotFile(quantix.SlotB, quantix.SlotKernel)} {
		data, _ := os.ReadFile(filepath.Join(in.esp, filepath.FromSlash(p)))
		b.Write(data)
	}
	return b.String()
}

// upgradeModel is the console model on in's socket and s's disks, its password
// set to abcdefgh.
func upgradeModel(t *testing.T, in *upgradeInit, s *fakeSys) (Model, *Config) {
	cfg := testConfig(t, quantix.ImageQuantixOS)
	cfg.InitSocket, cfg.Init = in.sock, InitClient{Socket: in.sock}
	cfg.SysBlock, cfg.DevDir = s.sysBlock, s.dev
	cfg.MediaDir = filepath.Join(t.TempDir(), "media")
	t.Cleanup(func() { unmountAll(t, cfg.MediaDir) }) // when the test failed before the screen did
	if err := (PasswordStore{Path: cfg.PasswordFile}).Set("abcdefgh"); err != nil {
		t.Fatal(err)
	}
	return update(t, NewModel(cfg), snapMsg{snapshot()}), cfg
}

// unmountAll unmounts what is still mounted in dir's folders.
func unmountAll(t *testing.T, dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if mountOptions(t, p) != "" {
			if err := unix.Unmount(p, 0); err != nil {
				t.Errorf("unmount %s: %v", p, err)
			}
		}
	}
}

func expectView(t *testing.T, m Model, what string, want ...string) {
	t.Helper()
	v := m.View()
	for _, w := range want {
		if !strings.Contains(v, w) {
			t.Fatalf("%s: the screen does not say %q:\n%s", what, w, v)
		}
	}
}

// TestUpgradeScreen drives the Upgrade screen by its keys against qx-init's real
// control socket and slot keeper, with real media (ext4 sticks on loop devices
// behind a fake sysfs): the slots as init reports them; a scan that finds a
// bundle signed by a key init does not trust, a good one, and a stick with none;
// the untrusted one refused with init's reason and nothing written; the good one
// staged into slot b and the media unmounted; then the reboot, asked of init.
func TestUpgradeScreen(t *testing.T) {
	needRoot(t)
	in := newUpgradeInit(t, "0.1.0", true)
	_, strangerKey := upgradetest.Keypair(t, "stranger")
	rogue, _ := testBundle(t, "0.2.0", strangerKey)
	good, kernel := testBundle(t, "0.2.0", in.keyFile)
	s := newFakeSys(t)
	s.add("pci0/usb1/1-1/sdb", stick(t, "ROGUE", map[string]string{"": rogue}), true)
	s.add("pci0/usb1/1-2/sdc", "", false)
	s.add("pci0/usb1/1-2/sdc/sdc1", stick(t, "RELEASES", map[string]string{"quantix-0.2.0": good}), false)
	s.add("pci0/usb1/1-3/sdd", stick(t, "PHOTOS", map[string]string{"": t.TempDir()}), true)

	m, cfg := upgradeModel(t, in, s)
	m = update(t, m, keys("u")...)
	expectView(t, m, "u asks for the password", "This needs the console password.")
	m = update(t, m, keys("abcdefgh\r")...)
	expectView(t, m, "slots", "booted: slot a, state good", "slot a: quantix-os 0.1.0 [booted, good]", "slot b: empty",
		"next boot: slot a (order a b)", "m Scan media  Esc Back")

	m = update(t, m, keys("m")...)
	expectView(t, m, "scan", "> quantix-os 0.2.0        sdb    ROGUE:/", "  quantix-os 0.2.0        sdc1   RELEASES:/quantix-0.2.0",
		"no bundle found on "+filepath.Join(s.dev, "sdd"), "Enter Stage")
	sdb, sdc1 := filepath.Join(cfg.MediaDir, "sdb"), filepath.Join(cfg.MediaDir, "sdc1")
	if mountOptions(t, sdb) == "" || mountOptions(t, sdc1) == "" || mountOptions(t, filepath.Join(cfg.MediaDir, "sdd")) != "" {
		t.Fatalf("after the scan: sdb %q, sdc1 %q, sdd %q mounted; want the two with bundles only",
			mountOptions(t, sdb), mountOptions(t, sdc1), mountOptions(t, filepath.Join(cfg.MediaDir, "sdd")))
	}

	before := in.espFiles(t)
	m = update(t, m, keys("\r")...)
	expectView(t, m, "stage asks", "Stage quantix-os 0.2.0 into slot b? y = yes")
	m = update(t, m, keys("y")...)
	expectView(t, m, "untrusted bundle", "Refused by init, nothing was written: quantix-os 0.2.0 on sdb",
		"bundle signature is not from", "this image trusts (trusted: release-2026)")
	if in.espFiles(t) != before {
		t.Errorf("a refused bundle changed the ESP")
	}
	if strings.Contains(m.View(), "r Reboot") {
		t.Errorf("a reboot is offered with nothing staged:\n%s", m.View())
	}

	m = update(t, m, keys("j\ry")...)
	expectView(t, m, "staged", "Staged quantix-os 0.2.0 into slot b, signed by release-2026, in",
		"Media unmounted: you may remove them.", "slot b: quantix-os 0.2.0 [3 tries left]", "next boot: slot b (order b a)",
		"r Reboot into the new release")
	if got, _ := os.ReadFile(filepath.Join(in.esp, filepath.FromSlash(quantix.ESPSlotFile(quantix.SlotB, quantix.SlotKernel)))); !bytes.Equal(got, kernel) {
		t.Errorf("slot b's kernel is not the bundle's")
	}
	for _, d := range []string{sdb, sdc1} {
		if o := mountOptions(t, d); o != "" {
			t.Errorf("after staging %s is still mounted (%s)", d, o)
		}
	}

	m = update(t, m, keys("r")...)
	expectView(t, m, "reboot asks", "Reboot into slot b (quantix-os 0.2.0) now? y = yes")
	select {
	case a := <-in.actions:
		t.Fatalf("init got %q before the y", a)
	default:
	}
	m = update(t, m, keys("y")...)
	expectView(t, m, "reboot", "Reboot into the new release: requested.")
	select {
	case a := <-in.actions:
		if a != quantix.Reboot {
			t.Errorf("init got %q, want reboot", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("init got no reboot request")
	}
}

// TestUpgradeScreenLiveBoot: on a live boot init has no slots; the screen says
// so and offers no scan.
func TestUpgradeScreenLiveBoot(t *testing.T) {
	m, _ := upgradeModel(t, newUpgradeInit(t, "0.1.0", false), newFakeSys(t))
	m = update(t, m, keys("uabcdefgh\r")...)
	expectView(t, m, "live boot", "This is a live boot, not an installed A/B disk")
	m = update(t, m, keys("m")...)
	if v := m.View(); strings.Contains(v, "Scan") || strings.Contains(v, "No USB stick") {
		t.Errorf("a live boot offers a scan:\n%s", v)
	}
}
