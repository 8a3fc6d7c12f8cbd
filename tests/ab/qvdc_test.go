package ab

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
	"github.com/quantix/quantix/tests/vm"
)

// The QvDC appliance's own A/B upgrade (docs/design.md §16, issue #18), driven
// through its API as an operator does: the installed QvDC stages a release it
// was sent and reboots into the trial. A good release commits with the
// registry intact; a release that migrates the schema and then fails a health
// gate, after PostgreSQL and the vDC have run (and taken a write) in its
// trial, rolls back to the old slot with the database exactly as it was before
// the trial, the trial's cluster set aside on QUANTIX-DATA.

// qvdcAddr is the QvDC's static address on the hub (its only NIC).
var qvdcAddr = netip.MustParsePrefix("10.77.0.10/24")

const (
	qvdcAdminToken = "ab-qvdc-admin-token-4c1e9b7a"
	qvdcHostname   = "ab-qvdc"
	// selfCheck is the failing trial release's own gated service: it depends on
	// the vDC, so PostgreSQL and the vDC are up (and take writes) while the
	// trial waits for it until its deadline.
	selfCheck = "selfcheck"
)

func TestQvDCUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("boots the installed QvDC in QEMU: skipped with -short")
	}
	q := newQvDCLab(t)

	t0 := time.Now()
	q.m = q.lab.boot(t, "ab-qvdc", q.disk, vm.BIOS)
	q.waitVDC(t, q.m.ExpectAll(t, bootTimeout, vdcReady)[0])
	t.Logf("installed QvDC: API answering %.0f s after power-on (%s)", time.Since(t0).Seconds(), q.m.Accel())
	q.expectController(t, q.version, "a", quantix.SlotGood)

	// Registry data that every later boot must show as it is.
	q.register(t, "ab-kept-node")
	img := q.uploadImage(t, "ab-kept-image")
	before := q.registry(t)
	if len(before.Nodes) != 1 || len(before.Images) != 1 || before.Images[0].SHA256 != img.SHA256 {
		t.Fatalf("registry before the upgrades: %+v, want the one node and image written", before)
	}

	// Happy path: the same system under a newer version (its qx-vdc says so too).
	next := bumpPatch(t, q.version)
	rel := q.uploadRelease(t, q.vdc, quantix.ImageQvDC, q.release(t, next, nil, nil))
	staged, t0 := q.upgrade(t, rel)
	if staged.Staged.Slot != "b" || staged.Staged.Version != next {
		t.Fatalf("upgrade answer %+v: want %s staged into slot b", staged.Staged, next)
	}
	waitBootSlot(t, q.m, "slot", "b", "trial", "1", "tries_left", "2")
	lines := q.m.ExpectAll(t, bootTimeout, vdcReady, vm.MatchMarker(quantix.MarkerSlot, "slot", "b", "state", quantix.SlotGood))
	good, _ := quantix.ParseMarker(lines[1])
	t.Logf("upgrade to %s: committed %.0f s after the stage (gates %s s)", next, time.Since(t0).Seconds(), good.Get("seconds"))
	q.waitVDC(t, lines[0])
	c := q.expectController(t, next, "b", quantix.SlotGood)
	if !hasEvent(c.Events, quantix.ControllerRebooting, "slot b") {
		t.Errorf("controller events %+v: want the reboot into slot b", c.Events)
	}
	q.expectRegistry(t, "after the committed upgrade", before)

	// Rollback path: a newer release that migrates the schema, runs, takes a
	// write and then fails its self-check gate at the deadline.
	const deadline = 150
	next2 := bumpPatch(t, next)
	cfg := q.brokenConfig(t, func(c *quantix.ImageConfig) {
		c.Version = next2
		c.TrialDeadlineSeconds = deadline
		c.Services = append(c.Services, quantix.Service{Name: selfCheck, Command: "/usr/bin/dash",
			Args: []string{"-c", "echo self-check of this release failed; exit 1"}, DependsOn: []string{"vdc"}, HealthGate: quantix.GateReady})
	})
	migration := []byte("CREATE TABLE ab_trial_schema (id bigint PRIMARY KEY);\n")
	rel = q.uploadRelease(t, q.vdc, quantix.ImageQvDC, q.release(t, next2, cfg, migration))
	staged, t0 = q.upgrade(t, rel)
	if staged.Staged.Slot != "a" || staged.Staged.Version != next2 {
		t.Fatalf("upgrade answer %+v: want %s staged into slot a", staged.Staged, next2)
	}
	waitBootSlot(t, q.m, "slot", "a", "trial", "1", "tries_left", "2")
	q.m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "a", "state", quantix.SlotTrial, "deadline", strconv.Itoa(deadline))
	lines = q.m.ExpectAll(t, bootTimeout, vdcReady,
		vm.Contains("trial of "+next2+": copied the database to "+quantix.DataDir+"/upgrade/postgresql-before-trial"),
		// The trial's vDC migrates the schema (tern's log line).
		vm.MatchRegexp(fmt.Sprintf(`msg="applying migration" .*version=%d name=%03d_ab_trial_schema`, migrationNumber(t), migrationNumber(t))))
	q.waitVDC(t, lines[0])
	q.expectController(t, next2, "a", quantix.SlotTrial)
	q.register(t, "ab-trial-node") // written during the trial: to be discarded
	if during := q.registry(t); len(during.Nodes) != len(before.Nodes)+1 {
		t.Fatalf("registry during the trial: %d nodes, want the trial's node too", len(during.Nodes))
	}
	failed := q.m.WaitMarker(t, quantix.MarkerSlot, bootTimeout, "slot", "a", "state", quantix.SlotFailed)
	if failed.Get("gate") != "service "+selfCheck+" ready" {
		t.Errorf("failed trial: gate %q (%s), want service %s ready", failed.Get("gate"), failed.Get("err"), selfCheck)
	}
	waitBootSlot(t, q.m, "slot", "b", "trial", "0")
	discarded := quantix.DataDir + "/upgrade/postgresql-discarded-trial"
	lines = q.m.ExpectAll(t, bootTimeout, vdcReady, vm.MatchMarker(quantix.MarkerSlot, "slot", "b", "state", quantix.SlotRolledBack, "from", "a"),
		vm.Contains("the trial of "+next2+" failed and "+next+" runs again"))
	q.waitVDC(t, lines[0])
	back, _ := quantix.ParseMarker(lines[1])
	if !strings.Contains(lines[2], "kept in "+discarded) {
		t.Errorf("postgres after the rollback: %q, want the discarded cluster kept in %s", lines[2], discarded)
	}
	t.Logf("rollback from %s: back on %s, API answering %.0f s after the stage: %s", next2, next, time.Since(t0).Seconds(), back.Get("reason"))
	c = q.expectController(t, next, "b", quantix.SlotRolledBack)
	if c.Slots.RolledBackFrom != "a" || !strings.Contains(c.Slots.Reason, `health gate "service `+selfCheck+` ready" failed`) {
		t.Errorf("controller after the rollback: from %q, reason %q; want from a with the failed self-check gate", c.Slots.RolledBackFrom, c.Slots.Reason)
	}
	if a := slotInfo(c.Slots, "a"); a.Good || a.Tries != 0 {
		t.Errorf("controller after the rollback: slot a %+v, want neither good nor with tries left", a)
	}
	// Recorded before the reboot into the trial: kept, unlike what the trial wrote.
	if !hasEvent(c.Events, quantix.ControllerRebooting, "slot a") {
		t.Errorf("controller events %+v: want the reboot into slot a", c.Events)
	}
	q.expectRegistry(t, "after the rollback", before)
	q.m.PowerOff(t, 2*time.Minute)

	if st := env(t, q.disk); st.Order != [2]string{"b", "a"} || !st.B.OK || st.A != (bootenv.Slot{}) {
		t.Errorf("environment after the rollback: %+v, want b good and first, a with no tries and not good", st)
	}
	data := q.dataFS(t)
	for p, want := range map[string]bool{
		strings.TrimPrefix(discarded, quantix.DataDir) + "/PG_VERSION": true, // the trial's cluster, set aside
		"/postgresql/PG_VERSION":           true,  // the cluster put back
		"/upgrade/postgresql-before-trial": false, // the copy, consumed
	} {
		if got := debugfsExists(t, data, p); got != want {
			t.Errorf("QUANTIX-DATA: %s exists = %v, want %v", p, got, want)
		}
	}
}
