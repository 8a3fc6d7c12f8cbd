// Package ab boots an installed Quantix-OS through A/B upgrades in QEMU
// (docs/design.md §16): a release that proves itself is committed and stays; one
// whose health gate fails, one that panics and one that hangs each end up back
// on the old slot by themselves, with the reason on the console; a power cut
// during the trial and a torn environment copy still boot. The GRUB environment
// is read from the disk image after each boot.
package ab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/tests/vm"
	"github.com/quantix/quantix/vdc/client"
)

func TestAB(t *testing.T) {
	l := newLab(t)
	t.Run("commit", func(t *testing.T) { testCommit(t, l) })
	t.Run("gate-fails", func(t *testing.T) { testGateFails(t, l) })
	t.Run("panic", func(t *testing.T) { testPanic(t, l) })
	t.Run("hang", func(t *testing.T) { testHang(t, l) })
	t.Run("from-vdc", func(t *testing.T) { testFromVDC(t, l) })
}

// bootTimeout bounds one boot of the installed node to its trial verdict under
// TCG (boot-complete ~40 s, libvirtd and the agent's registration after it).
var bootTimeout = vm.ScaleTimeout(5 * time.Minute)

// A good release (the ISO's own files under a newer version) with the first
// environment copy torn: GRUB takes the backup and boots the trial; a power cut
// during the trial costs one try; the next trial passes its gates and commits;
// the boot after that runs the new slot with no trial and writes nothing.
func testCommit(t *testing.T, l *lab) {
	disk := l.copyDisk(t)
	stage(t, disk, release{Kernel: l.base.Kernel, Initrd: l.base.Initrd, Version: l.version + "-ab.1"})
	corruptFirstEnv(t, disk)

	m := l.boot(t, "ab-commit-1", disk, vm.BIOS)
	waitBootSlot(t, m, "slot", "b", "trial", "1", "tries_left", "2", "env", "/"+quantix.ESPEnvBackup)
	m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "b", "state", quantix.SlotTrial)
	m.Kill(t) // the power is cut during the trial
	_, backup, firstErr, berr := envCopies(t, disk)
	if firstErr == nil || berr != nil || backup.Order != [2]string{"b", "a"} || backup.B != (bootenv.Slot{Tries: 2}) || !backup.A.OK {
		t.Fatalf("after the cut trial: first copy %v, backup %+v (%v); want the first still torn and b with 2 tries left", firstErr, backup, berr)
	}

	t0 := time.Now()
	m = l.boot(t, "ab-commit-2", disk, vm.BIOS)
	waitBootSlot(t, m, "slot", "b", "trial", "1", "tries_left", "1")
	good := m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "b", "state", quantix.SlotGood)
	t.Logf("trial of slot b: committed after %s s of gates, %.0f s from power-on (%s)", good.Get("seconds"), time.Since(t0).Seconds(), m.Accel())
	m.PowerOff(t, 2*time.Minute)
	committed := env(t, disk) // both copies valid again and equal
	if committed.Order != [2]string{"b", "a"} || !committed.B.OK || !committed.A.OK {
		t.Fatalf("after the commit: %+v, want b good and first, a good behind it", committed)
	}

	m = l.boot(t, "ab-commit-3", disk, vm.BIOS)
	line := m.Expect(t, "Command line:", bootTimeout)
	if !strings.Contains(line, quantix.ParamSlot+"=b") || strings.Contains(line, quantix.ParamTrial) {
		t.Errorf("boot after the commit: %q, want %s=b and no trial", line, quantix.ParamSlot)
	}
	m.WaitMarker(t, quantix.MarkerBootComplete, bootTimeout)
	m.PowerOff(t, 2*time.Minute)
	if again := env(t, disk); again != committed {
		t.Errorf("a committed boot changed the environment: %+v -> %+v", committed, again)
	}
}

// brokenConfig is the base release's image configuration changed by edit, as
// the file that replaces it in a broken release's initramfs.
func (l *lab) brokenConfig(t *testing.T, edit func(*quantix.ImageConfig)) []byte {
	cfg := l.imageConfig(t)
	edit(&cfg)
	b, err := cfg.Encode()
	must(t, err)
	return b
}

// A release whose libvirtd exits at every start fails its health gate at the trial
// deadline: init rejects it at once (no further tries) and reboots, and slot a
// says it rolled back from b and why, from the reason the failed boot kept on
// QUANTIX-DATA.
func testGateFails(t *testing.T, l *lab) {
	disk := l.copyDisk(t)
	cfg := l.brokenConfig(t, func(c *quantix.ImageConfig) {
		c.TrialDeadlineSeconds = 60
		for i := range c.Services {
			if c.Services[i].Name == "libvirtd" {
				// Exits at once with a usage error, on every restart.
				c.Services[i].Args = append(c.Services[i].Args, "--no-such-flag")
			}
		}
	})
	stage(t, disk, l.broken(t, l.version+"-ab.2", map[string][]byte{strings.TrimPrefix(quantix.ImageConfigPath, "/"): cfg}, nil))

	t0 := time.Now()
	m := l.boot(t, "ab-gate", disk, vm.UEFI)
	m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "b", "state", quantix.SlotTrial, "deadline", "60")
	failed := m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "b", "state", quantix.SlotFailed)
	if failed.Get("gate") != "service libvirtd ready" {
		t.Errorf("failed trial: gate %q (%s), want service libvirtd ready", failed.Get("gate"), failed.Get("err"))
	}
	waitBootSlot(t, m, "slot", "a", "trial", "0")
	back := m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "a", "state", quantix.SlotRolledBack, "from", "b")
	t.Logf("rolled back %.0f s after power-on: %s", time.Since(t0).Seconds(), back.Get("reason"))
	if r := back.Get("reason"); !strings.Contains(r, `health gate "service libvirtd ready" failed`) || !strings.Contains(r, "service libvirtd is") || !strings.Contains(r, quantix.DataDir+"/upgrade/failed-b-") {
		t.Errorf("rollback reason %q: want the failed gate, its error and the kept logs", r)
	}
	m.PowerOff(t, 2*time.Minute)
	checkRolledBack(t, disk)
}

// checkRolledBack: slot a good and first, b with no tries and not good.
func checkRolledBack(t *testing.T, disk string) {
	t.Helper()
	st := env(t, disk)
	if st.Order != [2]string{"a", "b"} || !st.A.OK || st.B != (bootenv.Slot{}) {
		t.Errorf("after the rollback: %+v, want a good and first, b with no tries", st)
	}
}

// A release whose initramfs has no init that runs panics on every try; with
// panic=10 each boot restarts, GRUB counts the tries down and then boots slot a,
// which says that the trial ended without a verdict.
func testPanic(t *testing.T, l *lab) {
	disk := l.copyDisk(t)
	junk := []byte("this is not an executable\n")
	files, modes := map[string][]byte{}, map[string]uint64{}
	for _, p := range []string{"init", "sbin/init", "etc/init", "bin/init", "bin/sh"} {
		files[p], modes[p] = junk, 0o755
	}
	stage(t, disk, l.broken(t, l.version+"-ab.3", files, modes))

	t0 := time.Now()
	m := l.boot(t, "ab-panic", disk, vm.BIOS)
	for left := quantix.SlotMaxTries - 1; left >= 0; left-- {
		waitBootSlot(t, m, "slot", "b", "trial", "1", "tries_left", strconv.Itoa(left))
		// panic=10: the kernel reboots after "Rebooting in 10 seconds.." (the
		// "end Kernel panic" line comes only when it does not).
		m.Expect(t, vm.KernelPanicText+": No working init found", bootTimeout)
	}
	waitBootSlot(t, m, "slot", "a", "trial", "0")
	back := m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "a", "state", quantix.SlotRolledBack, "from", "b")
	t.Logf("rolled back %.0f s after power-on: %s", time.Since(t0).Seconds(), back.Get("reason"))
	// (It names the release only when init staged it: this test's stage is the
	// host's; TestRollbackReason covers the name.)
	if r := back.Get("reason"); !strings.Contains(r, "without a verdict") {
		t.Errorf("rollback reason %q: want a trial without a verdict", r)
	}
	m.PowerOff(t, 2*time.Minute)
	checkRolledBack(t, disk)
}

// A release that hangs (a service stops qx-init, which then neither judges the
// trial nor pings the watchdog): the watchdog init armed for the trial resets
// the machine, and with the try used up slot a boots and says so. Staged with
// one try (the panic test counts three down): a hung try costs 30 s of
// watchdog and a whole boot under TCG.
func testHang(t *testing.T, l *lab) {
	disk := l.copyDisk(t)
	bin := filepath.Join(t.TempDir(), "qx-test-hang")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/qx-test-hang")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build qx-test-hang: %v: %s", err, out)
	}
	hang, err := os.ReadFile(bin)
	must(t, err)
	cfg := l.brokenConfig(t, func(c *quantix.ImageConfig) {
		c.Services = append(c.Services, quantix.Service{Name: "hang", Command: "/bbin/qx-test-hang", DependsOn: []string{"network"}, Ready: quantix.ReadyOnStart})
	})
	stage(t, disk, l.broken(t, l.version+"-ab.4",
		map[string][]byte{strings.TrimPrefix(quantix.ImageConfigPath, "/"): cfg, "bbin/qx-test-hang": hang},
		map[string]uint64{"bbin/qx-test-hang": 0o755}), 1)

	t0 := time.Now()
	m := l.boot(t, "ab-hang", disk, vm.UEFI)
	waitBootSlot(t, m, "slot", "b", "trial", "1", "tries_left", "0")
	m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "b", "state", quantix.SlotTrial)
	t.Logf("on trial %.0f s after power-on", time.Since(t0).Seconds())
	// The fault's own line may never reach the console (it stops the init that
	// forwards it): the checks after the rollback look for it.
	waitBootSlot(t, m, "slot", "a", "trial", "0")
	back := m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "a", "state", quantix.SlotRolledBack, "from", "b")
	t.Logf("rolled back %.0f s after power-on: %s", time.Since(t0).Seconds(), back.Get("reason"))
	if r := back.Get("reason"); !strings.Contains(r, "without a verdict") {
		t.Errorf("rollback reason %q: want a trial without a verdict", r)
	}
	// Nothing but a hardware reset ended the trial: no verdict on b, no clean
	// reboot ("reboot: Restarting system") and no panic. (The fault's own line
	// may be lost: it stops the init that forwards its output.)
	for _, st := range []string{quantix.SlotGood, quantix.SlotFailed} {
		if v := m.Find(vm.MatchMarker(quantix.MarkerSlot, "slot", "b", "state", st)); len(v) > 0 {
			t.Errorf("a hung trial reached a verdict: %q", v)
		}
	}
	for _, s := range []string{"reboot: Restarting system", vm.KernelPanicText} {
		if v := m.Find(vm.Contains(s)); len(v) > 0 {
			t.Errorf("the hung trial ended by %q, not by the watchdog", v)
		}
	}
	m.PowerOff(t, 2*time.Minute)
	checkRolledBack(t, disk)
}

// waitBootSlot waits for GRUB's boot-slot marker with the given fields, in
// order, anywhere in a line: under OVMF, GRUB's output reaches the serial port
// twice (its console and OVMF's serial copy of it) on one line.
func waitBootSlot(t *testing.T, m *vm.Machine, kv ...string) {
	t.Helper()
	expr := regexp.QuoteMeta(quantix.MarkerPrefix + quantix.MarkerBootSlot)
	for i := 0; i < len(kv); i += 2 {
		expr += " " + regexp.QuoteMeta(kv[i]+"="+kv[i+1])
	}
	m.ExpectRegexp(t, expr+`( |$)`, bootTimeout)
}

// A rolling upgrade delivered by the vDC, as an operator runs it: the release
// uploaded once (the vDC verifies it against its keys), an upgrade of two nodes
// started; each agent downloads the bundle onto QUANTIX-DATA, init verifies it
// against the node's own keys and stages it, the node reboots into its trial,
// passes its gates and commits. The vDC takes the nodes one at a time: the second
// is still on its old slot, never rebooted, when the first commits. The first
// loses its power while init writes the new slot: it boots its good slot again
// and the agent stages the order anew. The upgrade
// succeeds with both nodes on the new release from slot b, their slots good.
func testFromVDC(t *testing.T, l *lab) {
	ctx := context.Background()
	hosts := []string{"ab-node", "ab-node-2"}
	disks := []string{l.copyDisk(t), l.install(t, hosts[1])}
	next := bumpPatch(t, l.version)
	cfg := l.brokenConfig(t, func(c *quantix.ImageConfig) { c.Version = next })
	rel := l.broken(t, next, map[string][]byte{strings.TrimPrefix(quantix.ImageConfigPath, "/"): cfg}, nil)
	c, err := client.New(client.Config{URL: l.vdc.URL, Token: l.vdc.AdminToken})
	must(t, err)
	r := l.uploadRelease(t, c, quantix.ImageQuantixOS, rel)

	vm.Reserve(t, len(hosts)) // both nodes run at once
	ms := make([]*vm.Machine, len(hosts))
	for i, disk := range disks {
		ms[i] = l.boot(t, "ab-vdc-"+strconv.Itoa(i+1), disk, vm.BIOS)
	}
	for _, m := range ms {
		m.WaitMarker(t, quantix.MarkerReady, bootTimeout, "service", "agent")
	}
	nodes := l.waitNodes(t, hosts, func(n quantix.Node) bool {
		return n.OS != nil && n.OS.Slots != nil && n.OS.Slots.Booted == "a" && n.OS.Slots.State == quantix.SlotGood
	}, "on slot a, good")

	t0 := time.Now()
	u, err := c.StartUpgrade(ctx, quantix.UpgradeRequest{Release: r.ID, Nodes: hosts})
	if err != nil {
		t.Fatalf("start the upgrade: %v", err)
	}
	for i, m := range ms {
		if i == 0 {
			powerCutWhileStaging(t, m, disks[i])
		}
		waitBootSlot(t, m, "slot", "b", "trial", "1", "tries_left", "2")
		t.Logf("upgrade %s: %s rebooted into its trial %.1f s after the start", u.ID, hosts[i], time.Since(t0).Seconds())
		good := m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "b", "state", quantix.SlotGood)
		t.Logf("%s committed %.0f s after the start (gates %s s)", hosts[i], time.Since(t0).Seconds(), good.Get("seconds"))
		if i+1 < len(ms) {
			// One at a time: the next node has not even begun its reboot.
			log, err := os.ReadFile(ms[i+1].SerialLogPath())
			must(t, err)
			if strings.Contains(string(log), quantix.ParamSlot+"=b") {
				t.Errorf("%s booted slot b before %s committed: the vDC did not take the nodes one at a time", hosts[i+1], hosts[i])
			}
		}
	}
	for deadline := time.Now().Add(bootTimeout); ; {
		if u, err = c.Upgrade(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		if u.State != quantix.UpgradeRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upgrade still running %v after its start, the last node committed: %+v", time.Since(t0), u)
		}
		time.Sleep(time.Second)
	}
	if u.State != quantix.UpgradeSucceeded || len(u.Nodes) != len(hosts) {
		t.Fatalf("upgrade = %+v, want succeeded with %d nodes", u, len(hosts))
	}
	for i, un := range u.Nodes {
		if un.Hostname != hosts[i] || un.Phase != quantix.UpgradeNodeDone || un.StartedAt == nil || un.FinishedAt == nil {
			t.Errorf("upgrade node %d = %+v, want %s done", i, un, hosts[i])
		}
	}
	if a, b := u.Nodes[0], u.Nodes[1]; a.FinishedAt != nil && b.StartedAt != nil && b.StartedAt.Before(*a.FinishedAt) {
		t.Errorf("%s started at %s, before %s finished at %s", b.Hostname, b.StartedAt, a.Hostname, a.FinishedAt)
	}
	t.Logf("rolling upgrade of %d nodes to %s: succeeded at the vDC after %.0f s", len(hosts), next, time.Since(t0).Seconds())
	for i, n := range nodes {
		n = l.vdc.Node(t, n.ID)
		if n.OS == nil || n.OS.Version != next || n.OS.Slots == nil || n.OS.Slots.Booted != "b" || n.OS.Slots.State != quantix.SlotGood {
			t.Errorf("the vDC shows %s on %+v, want %s from slot b, good", hosts[i], n.OS, next)
		}
	}
	for i, m := range ms {
		m.PowerOff(t, 2*time.Minute)
		if st := env(t, disks[i]); st.Order != [2]string{"b", "a"} || !st.B.OK {
			t.Errorf("%s after the upgrade: %+v, want b good and first", hosts[i], st)
		}
	}
	// The second stage removed what the power cut left half written.
	fs, done := esp(t, disks[0])
	defer done()
	ents, err := fs.ReadDir(strings.TrimSuffix(quantix.ESPSlotFile("b", ""), "/"))
	must(t, err)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("%s's slot b still holds %s from the interrupted stage", hosts[0], e.Name())
		}
	}
}

// powerCutWhileStaging cuts m's power while init writes the new slot's files
// (the vDC's order is being staged): the disk boots the good slot a, not a
// half-written b, and the agent stages the order again by itself.
func powerCutWhileStaging(t *testing.T, m *vm.Machine, disk string) {
	t.Helper()
	m.Expect(t, "msg=staging", bootTimeout)
	m.Kill(t)
	if st := env(t, disk); st.Order != [2]string{"a", "b"} || !st.A.OK || st.B != (bootenv.Slot{}) {
		t.Fatalf("environment after a power cut while staging: %+v, want a good and first, b out of the boot order", st)
	}
	t0 := time.Now()
	m.Restart(t)
	waitBootSlot(t, m, "slot", "a", "trial", "0")
	m.Expect(t, "msg=staging", bootTimeout)
	t.Logf("power cut while staging: booted slot a again and staging anew %.0f s after power-on", time.Since(t0).Seconds())
}

// waitNodes waits up to a minute until the vDC lists every one of hosts and ok
// holds for each; it returns them in the order of hosts.
func (l *lab) waitNodes(t *testing.T, hosts []string, ok func(quantix.Node) bool, want string) []quantix.Node {
	deadline := time.Now().Add(time.Minute)
	for {
		byName := map[string]quantix.Node{}
		for _, n := range l.vdc.Nodes(t) {
			byName[n.Hostname] = n
		}
		nodes := make([]quantix.Node, 0, len(hosts))
		for _, h := range hosts {
			if n, found := byName[h]; found && ok(n) {
				nodes = append(nodes, n)
			}
		}
		if len(nodes) == len(hosts) {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("the vDC does not show all of %v %s: %+v", hosts, want, byName)
		}
		time.Sleep(time.Second)
	}
}

// bumpPatch is version with its patch number one higher.
func bumpPatch(t *testing.T, version string) string {
	core, _, _ := strings.Cut(version, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		t.Fatalf("version %q is not MAJOR.MINOR.PATCH", version)
	}
	n, err := strconv.Atoi(parts[2])
	must(t, err)
	return fmt.Sprintf("%s.%s.%d", parts[0], parts[1], n+1)
}
