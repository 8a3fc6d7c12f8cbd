package vdc_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/services/initd/inittest"
	"github.com/quantix/quantix/vdc/vdctest"
)

// The vDC appliance's own upgrade, against init's real control socket (a
// SlotKeeper over an ESP folder, inittest) and real signed bundles.

// controllerVDC is a vDC of version 2.0.0 running under in, trusting in's
// release key and key (which in does not trust).
func controllerVDC(t *testing.T, in *inittest.Init, key vdctest.ReleaseKey) *vdctest.VDC {
	opts := vdctest.Options{Version: "2.0.0", TrustedKeysFiles: []string{key.Pub}, UpgradeNodeTimeout: time.Hour,
		JoinTokens: []string{"controller-join-token-0123456789"}}
	if in != nil {
		opts.InitSocket = in.Socket
		opts.TrustedKeysFiles = append(opts.TrustedKeysFiles, in.TrustedKeysFile())
	}
	return vdctest.Start(t, opts)
}

func upgradeController(t *testing.T, v *vdctest.VDC, req quantix.ControllerUpgradeRequest) (int, []byte) {
	t.Helper()
	return call(t, http.MethodPost, v.URL+quantix.PathControllerUpgrade, v.AdminToken, req)
}

// espState is what a stage writes: slot b's files and both copies of the
// environment block.
func espState(t *testing.T, esp string) string {
	t.Helper()
	var s strings.Builder
	for _, p := range []string{quantix.ESPEnv, quantix.ESPEnvBackup, quantix.ESPSlotFile(quantix.SlotB, quantix.SlotKernel),
		quantix.ESPSlotFile(quantix.SlotB, quantix.SlotInitrd), quantix.ESPSlotFile(quantix.SlotB, quantix.SlotManifest)} {
		b, err := os.ReadFile(filepath.Join(esp, filepath.FromSlash(p)))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		s.WriteString(p + ":" + string(b) + "\n")
	}
	return s.String()
}

func TestControllerUpgrade(t *testing.T) {
	in := inittest.Start(t, inittest.Options{Image: quantix.ImageQvDC, Version: "2.0.0", DataDir: t.TempDir()})
	key := vdctest.NewReleaseKey(t, "vdc-only")
	v := controllerVDC(t, in, key)

	var c quantix.ControllerOS
	v.Do(t, http.MethodGet, quantix.PathController, nil, &c, http.StatusOK)
	if c.Unavailable != "" || c.Slots == nil || c.Image != quantix.ImageQvDC || c.Version != "2.0.0" || c.Slots.Booted != quantix.SlotA ||
		c.Slots.State != quantix.SlotGood || c.Slots.Next != quantix.SlotA || len(c.Events) != 0 {
		t.Fatalf("controller after install = %+v", c)
	}

	nodeRel := mustUpload(t, v, in.Bundle(quantix.ImageQuantixOS, "2.1.0", 4096, true))
	older := mustUpload(t, v, in.Bundle(quantix.ImageQvDC, "1.9.0", 4096, true))
	same := mustUpload(t, v, in.Bundle(quantix.ImageQvDC, "2.0.0", 4096, true))
	// Signed by a key the vDC trusts and the appliance's init does not.
	foreign := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQvDC, "2.1.0", 4096))
	unsigned := mustUpload(t, v, in.Bundle(quantix.ImageQvDC, "2.2.0", 4096, true))
	if err := os.Remove(filepath.Join(v.DataDir, "releases", unsigned.ID, quantix.BundleSignature)); err != nil {
		t.Fatal(err)
	}
	good := mustUpload(t, v, in.Bundle(quantix.ImageQvDC, "2.3.0", 8192, true))

	before := espState(t, in.ESP)
	for _, r := range []struct {
		name, token string
		req         quantix.ControllerUpgradeRequest
		code        int
		want        string
	}{
		{"no token", "", quantix.ControllerUpgradeRequest{Release: good.ID}, http.StatusUnauthorized, "admin token"},
		{"wrong token", "not-the-admin-token", quantix.ControllerUpgradeRequest{Release: good.ID}, http.StatusUnauthorized, "wrong admin token"},
		{"no release", v.AdminToken, quantix.ControllerUpgradeRequest{}, http.StatusBadRequest, "release"},
		{"unknown release", v.AdminToken, quantix.ControllerUpgradeRequest{Release: "qvdc-9.9.9"}, http.StatusNotFound, "qvdc-9.9.9"},
		{"node image", v.AdminToken, quantix.ControllerUpgradeRequest{Release: nodeRel.ID, Activate: true}, http.StatusUnprocessableEntity,
			"quantix-os 2.1.0 bundle: this vDC runs qvdc"},
		{"older", v.AdminToken, quantix.ControllerUpgradeRequest{Release: older.Image + "-" + older.Version}, http.StatusUnprocessableEntity,
			"runs 2.0.0, newer than 1.9.0: an upgrade never goes back"},
		{"same", v.AdminToken, quantix.ControllerUpgradeRequest{Release: same.ID}, http.StatusConflict, "runs qvdc 2.0.0 already"},
		{"untrusted key", v.AdminToken, quantix.ControllerUpgradeRequest{Release: foreign.ID, Activate: true}, http.StatusUnprocessableEntity,
			"qx-init refused: bundle signature is not from a key this image trusts"},
		{"unsigned", v.AdminToken, quantix.ControllerUpgradeRequest{Release: unsigned.ID}, http.StatusUnprocessableEntity, "bundle is not signed"},
	} {
		code, b := call(t, http.MethodPost, v.URL+quantix.PathControllerUpgrade, r.token, r.req)
		if code != r.code || !strings.Contains(errMsg(t, b), r.want) {
			t.Errorf("%s: %d %s, want %d saying %q", r.name, code, b, r.code, r.want)
		}
	}
	if after := espState(t, in.ESP); after != before {
		t.Errorf("a refused upgrade wrote the ESP:\nbefore %q\nafter  %q", before, after)
	}
	if n := in.Count(quantix.InitRequestStage); n != 2 {
		t.Errorf("init was asked to stage %d times, want 2 (only the bundles the vDC's rules pass)", n)
	}
	if n := in.Count(string(quantix.Reboot)); n != 0 {
		t.Errorf("init was asked to reboot %d times, want 0", n)
	}

	// A rolling upgrade of the nodes is under way: the vDC waits for it.
	sim := newSimNode(t, v, "hv-1", "1.0.0")
	if code, _, b := heartbeat(t, v, sim.n, quantix.HeartbeatRequest{OS: &sim.os}); code != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", code, b)
	}
	nodeNext := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQuantixOS, "1.1.0", 1024))
	code, u, b := startUpgrade(t, v, quantix.UpgradeRequest{Release: nodeNext.ID, All: true})
	if code != http.StatusCreated {
		t.Fatalf("start the nodes' upgrade: %d %s", code, b)
	}
	if code, b := upgradeController(t, v, quantix.ControllerUpgradeRequest{Release: good.ID}); code != http.StatusConflict ||
		!strings.Contains(errMsg(t, b), u.ID+" is running") {
		t.Errorf("upgrade during the nodes' upgrade: %d %s, want 409 naming %s", code, b, u.ID)
	}
	v.Do(t, http.MethodPost, quantix.PathUpgrade(u.ID)+"/cancel", nil, nil, http.StatusOK)

	// Stage only: slot b holds the release, it boots next as a trial.
	code, b = upgradeController(t, v, quantix.ControllerUpgradeRequest{Release: good.ID})
	var res quantix.ControllerUpgrade
	decodeInto(t, b, &res)
	if code != http.StatusOK || res.Rebooting || res.Release.ID != good.ID || res.Staged.Slot != quantix.SlotB || res.Staged.Version != "2.3.0" ||
		res.Staged.Image != quantix.ImageQvDC {
		t.Fatalf("upgrade to %s: %d %s, want 200 staged into slot b, no reboot", good.ID, code, b)
	}
	mb, err := os.ReadFile(filepath.Join(in.ESP, filepath.FromSlash(quantix.ESPSlotFile(quantix.SlotB, quantix.SlotManifest))))
	if err != nil {
		t.Fatal(err)
	}
	m, err := quantix.ParseSlotManifest(mb)
	if err != nil || m.Image != quantix.ImageQvDC || m.Version != "2.3.0" {
		t.Fatalf("slot b's manifest = %+v, %v; want qvdc 2.3.0", m, err)
	}
	if sum, err := quantix.FileSHA256(filepath.Join(in.ESP, filepath.FromSlash(quantix.ESPSlotFile(quantix.SlotB, quantix.SlotKernel)))); err != nil || sum != m.KernelSHA256 {
		t.Errorf("slot b's kernel: sha256 %s, %v; its manifest says %s", sum, err, m.KernelSHA256)
	}
	env, _, err := bootenv.OnESP(in.ESP).Read()
	if err != nil {
		t.Fatal(err)
	}
	if env.Order[0] != quantix.SlotB || env.Slot(quantix.SlotB).Tries != quantix.SlotMaxTries || env.Slot(quantix.SlotB).OK || !env.Slot(quantix.SlotA).OK {
		t.Errorf("environment block after the stage = %+v; want b first with %d tries, not good, a still good", env, quantix.SlotMaxTries)
	}
	v.Do(t, http.MethodGet, quantix.PathController, nil, &c, http.StatusOK)
	if c.Slots == nil || c.Slots.Next != quantix.SlotB || c.Slots.Slots[1].Version != "2.3.0" || c.Slots.Booted != quantix.SlotA {
		t.Errorf("controller after the stage = %+v, want slot b next holding 2.3.0", c.Slots)
	}
	var kinds []string
	for _, e := range c.Events {
		kinds = append(kinds, e.Kind)
	}
	if strings.Join(kinds, ",") != "refused,refused,staged" || !strings.Contains(c.Events[2].Message, "qvdc 2.3.0") ||
		!strings.Contains(c.Events[0].Message, "not from a key this image trusts") {
		t.Errorf("controller events = %+v, want the two refusals by init and the stage", c.Events)
	}
	if n := in.Count(string(quantix.Reboot)); n != 0 {
		t.Errorf("a stage without activate asked init to reboot %d times", n)
	}

	// Activate: the answer comes, then init is asked to reboot.
	code, b = upgradeController(t, v, quantix.ControllerUpgradeRequest{Release: good.ID, Activate: true})
	decodeInto(t, b, &res)
	if code != http.StatusOK || !res.Rebooting || res.Staged.Slot != quantix.SlotB {
		t.Fatalf("activate: %d %s, want 200 rebooting", code, b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for in.Count(string(quantix.Reboot)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("init was asked to reboot %d times after an activate, want 1 (requests %q)", in.Count(string(quantix.Reboot)), in.Requests())
		}
		time.Sleep(20 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		v.Do(t, http.MethodGet, quantix.PathController, nil, &c, http.StatusOK)
		if last := c.Events[len(c.Events)-1]; last.Kind == quantix.ControllerRebooting && strings.Contains(last.Message, "slot b") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller events after the activate = %+v, want rebooting last", c.Events)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Without qx-init (a development run) the controller says so and cannot be
// upgraded; on a live boot init has no slots.
func TestControllerWithoutSlots(t *testing.T) {
	key := vdctest.NewReleaseKey(t, "vdc-only")
	for _, c := range []struct {
		name   string
		in     *inittest.Init
		code   int
		show   string
		refuse string
	}{
		{"no init", nil, http.StatusServiceUnavailable, "does not run under qx-init", "cannot upgrade this vDC: this vDC does not run under qx-init"},
		{"live boot", inittest.Start(t, inittest.Options{Image: quantix.ImageQvDC, Version: "2.0.0", DataDir: t.TempDir(), Live: true}),
			http.StatusConflict, "not booted from an installed A/B disk", "cannot upgrade this vDC: qx-init refused"},
	} {
		v := controllerVDC(t, c.in, key)
		rel := mustUpload(t, v, vdctest.ReleaseBundle(t, key, quantix.ImageQvDC, "2.1.0", 1024))
		var os quantix.ControllerOS
		v.Do(t, http.MethodGet, quantix.PathController, nil, &os, http.StatusOK)
		if os.Slots != nil || os.Image != "" || os.Version != "2.0.0" || !strings.Contains(os.Unavailable, c.show) || os.Hostname == "" {
			t.Errorf("%s: controller = %+v, want no slots, version 2.0.0 and unavailable saying %q", c.name, os, c.show)
		}
		code, b := upgradeController(t, v, quantix.ControllerUpgradeRequest{Release: rel.ID, Activate: true})
		if code != c.code || !strings.Contains(errMsg(t, b), c.refuse) {
			t.Errorf("%s: upgrade = %d %s, want %d saying %q", c.name, code, b, c.code, c.refuse)
		}
	}
}
