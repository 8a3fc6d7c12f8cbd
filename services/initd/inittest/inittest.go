// Package inittest serves qx-init's real control socket (services/initd's
// Control, with a SlotKeeper on an ESP folder) for the tests of its clients (the
// agent, the vDC), and fakes what
// only a machine does: the reboot (recorded, not done) and GRUB's choice and
// init's verdict of the boot after it (Boot, RollBack, Commit). Bundles are real
// signed release bundles (upgrade/upgradetest) of a key the image trusts.
package inittest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/services/initd"
	"github.com/quantix/quantix/upgrade/upgradetest"
)

// Options configure Start.
type Options struct {
	// Image is the installed image; "" means quantix.ImageQuantixOS.
	Image string
	// Version is the release installed in slot a, booted and good.
	Version string
	// DataDir is QUANTIX-DATA, shared with the agent: init keeps its stage
	// record there, which its rollback reason reads.
	DataDir string
	// Live is a live boot: no slots (init answers not an A/B install).
	Live bool
}

// Init is a control socket serving one test.
type Init struct {
	Socket string
	ESP    string

	t        testing.TB
	opts     Options
	keyFile  string // the trusted release key's private half
	keysFile string // the image's trusted keys

	mu       sync.Mutex
	ctl      *initd.Control
	requests []string
}

// Start serves init's control socket for a node installed with opts.Version
// until t ends.
func Start(t testing.TB, opts Options) *Init {
	t.Helper()
	dir, err := os.MkdirTemp("", "init") // short: a unix socket path has ~100 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if opts.Image == "" {
		opts.Image = quantix.ImageQuantixOS
	}
	in := &Init{Socket: filepath.Join(dir, "init.sock"), ESP: t.TempDir(), t: t, opts: opts}
	if err := bootenv.OnESP(in.ESP).Write(bootenv.Initial()); err != nil {
		t.Fatal(err)
	}
	m, _ := quantix.SlotManifestInfo{Image: opts.Image, Version: opts.Version,
		KernelSHA256: strings.Repeat("a", 64), InitrdSHA256: strings.Repeat("b", 64)}.Encode()
	p := filepath.Join(in.ESP, filepath.FromSlash(quantix.ESPSlotFile(quantix.SlotA, quantix.SlotManifest)))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, m, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, keyFile := upgradetest.Keypair(t, "release")
	in.keyFile, in.keysFile = keyFile, filepath.Join(t.TempDir(), "trusted-keys")
	if err := os.WriteFile(in.keysFile, []byte(pub.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	in.boot(quantix.SlotA, false, opts.Version, nil)

	ln, err := net.Listen("unix", in.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go in.serve(c)
		}
	}()
	return in
}

// boot makes the Control of a boot of slot; v, when set, is init's verdict on it.
func (in *Init) boot(slot string, trial bool, version string, v *verdict) {
	ctl := initd.NewControl(nil, make(chan quantix.HaltAction, 1), slog.New(slog.DiscardHandler))
	if !in.opts.Live {
		k := initd.NewSlotKeeper(slot, trial)
		k.WithESP = func(fn func(string) error) error { return fn(in.ESP) }
		k.Image, k.Version, k.DataDir, k.Log = in.opts.Image, version, in.opts.DataDir, slog.New(slog.DiscardHandler)
		k.KeyFiles = []string{in.keysFile}
		ctl.Slots = k
		if v != nil {
			v.SlotKeeper = k
			ctl.Slots = v
		}
	}
	in.mu.Lock()
	in.ctl = ctl
	in.mu.Unlock()
}

// verdict is init's judgement of a boot (unexported in initd: it is made by a
// real boot's health gates), over the real keeper of that boot.
type verdict struct {
	*initd.SlotKeeper
	mu               sync.Mutex
	state, from, why string
}

func (v *verdict) Slots() (quantix.SlotsStatus, error) {
	st, err := v.SlotKeeper.Slots()
	v.mu.Lock()
	defer v.mu.Unlock()
	st.State, st.Trial, st.RolledBackFrom, st.Reason = v.state, v.state == quantix.SlotTrial, v.from, v.why
	return st, err
}

// env is the ESP's environment block as GRUB reads it.
func (in *Init) env() (bootenv.Files, bootenv.State) {
	in.t.Helper()
	env := bootenv.OnESP(in.ESP)
	st, _, err := env.Read()
	if err != nil {
		in.t.Fatal(err)
	}
	return env, st
}

// Boot is the reboot into the slot GRUB picks (the staged one), as a trial of
// version, its verdict still open.
func (in *Init) Boot(version string) {
	in.t.Helper()
	env, st := in.env()
	slot, trial, ok := st.Boot()
	if !ok || !trial {
		in.t.Fatalf("boot: GRUB would boot slot %q (trial %v): nothing staged", slot, trial)
	}
	st.Slot(slot).Tries--
	if err := env.Write(st); err != nil {
		in.t.Fatal(err)
	}
	in.boot(slot, true, version, &verdict{state: quantix.SlotTrial})
}

// Commit is init's verdict that the trial passed its health gates.
func (in *Init) Commit() {
	in.t.Helper()
	in.mu.Lock()
	v, _ := in.ctl.Slots.(*verdict)
	in.mu.Unlock()
	if v == nil {
		in.t.Fatalf("commit: the boot is no trial")
	}
	st, err := v.SlotKeeper.Slots()
	if err != nil {
		in.t.Fatal(err)
	}
	if _, err := bootenv.OnESP(in.ESP).Commit(st.Booted); err != nil {
		in.t.Fatal(err)
	}
	v.mu.Lock()
	v.state = quantix.SlotGood
	v.mu.Unlock()
}

// RollBack is the staged slot's trial ending without a verdict on each of its
// tries (a panic, say): GRUB falls back to the booted slot running version, and
// init says why, as its rollback reason reads the stage record.
func (in *Init) RollBack(version string) {
	in.t.Helper()
	env, st := in.env()
	tried := st.Order[0]
	st.Slot(tried).Tries = 0
	if err := env.Write(st); err != nil {
		in.t.Fatal(err)
	}
	booted := quantix.OtherSlot(tried)
	c, err := env.Commit(booted)
	if err != nil || c.RolledBack != tried {
		in.t.Fatalf("rollback: commit of slot %s = %+v, %v; want slot %s rolled back", booted, c, err, tried)
	}
	in.boot(booted, false, version, &verdict{state: quantix.SlotRolledBack, from: tried, why: initd.RollbackReason(in.opts.DataDir, tried)})
}

// Bundle is a real release bundle of image and version, signed by the key the
// image trusts (trusted) or by another one; it returns the folder.
func (in *Init) Bundle(image, version string, isoPayload int, trusted bool) string {
	in.t.Helper()
	key := in.keyFile
	if !trusted {
		_, key = upgradetest.Keypair(in.t, "stranger")
	}
	kernel, initrd := make([]byte, isoPayload), make([]byte, 4096)
	rand.Read(kernel)
	rand.Read(initrd)
	return upgradetest.Bundle(in.t, image, version, kernel, initrd, key)
}

// TrustedKeysFile is the image's trusted keys (one quantix.PublicKey a line):
// Bundle(..., true) is signed by its key.
func (in *Init) TrustedKeysFile() string { return in.keysFile }

// Client asks this socket.
func (in *Init) Client() quantix.InitClient { return quantix.InitClient{Socket: in.Socket} }

// Requests are the request lines served so far.
func (in *Init) Requests() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.requests...)
}

// Count is how many requests started with verb.
func (in *Init) Count(verb string) int {
	n := 0
	for _, r := range in.Requests() {
		if r == verb || strings.HasPrefix(r, verb+" ") {
			n++
		}
	}
	return n
}

func (in *Init) serve(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	req := strings.TrimSpace(line)
	in.mu.Lock()
	in.requests = append(in.requests, req)
	ctl := in.ctl
	in.mu.Unlock()
	fmt.Fprintln(c, ctl.Answer(context.Background(), req))
}

// ReleaseFiles reads a bundle folder as the vDC serves it: each file's bytes by
// name, and the files as an order names them.
func ReleaseFiles(t testing.TB, dir string) (map[string][]byte, []quantix.ReleaseFile) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	var list []quantix.ReleaseFile
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		files[e.Name()] = b
		list = append(list, quantix.ReleaseFile{Name: e.Name(), SizeBytes: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
	}
	return files, list
}
