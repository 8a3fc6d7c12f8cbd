package initd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
)

// gateAfter is a gate that passes from the n-th check on (n < 0: never).
func gateAfter(name string, n int, checks *int) Gate {
	return Gate{Name: name, Check: func() error {
		*checks++
		if n >= 0 && *checks >= n {
			return nil
		}
		return errors.New(name + " not yet")
	}}
}

func TestJudgeTrial(t *testing.T) {
	start := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name     string
		a, b     int // checks until each gate passes
		passed   bool
		gate     string
		tookSecs float64
	}{
		{"both pass at once", 1, 1, true, "", 0},
		{"network after 10 s", 11, 1, true, "", 10},
		{"libvirt never", 1, -1, false, "libvirt", 300},
		{"network never", -1, 1, false, "network", 300},
		{"libvirt just in time", 1, 301, true, "", 300},
		{"libvirt one poll late", 1, 302, false, "libvirt", 300},
	} {
		t.Run(c.name, func(t *testing.T) {
			clock := &fakeClock{now: start}
			var na, nb int
			v := JudgeTrial(context.Background(), []Gate{gateAfter("network", c.a, &na), gateAfter("libvirt", c.b, &nb)}, 5*time.Minute, clock)
			if v.Passed != c.passed || v.Gate != c.gate || v.Took.Seconds() != c.tookSecs {
				t.Errorf("JudgeTrial = %+v, want passed=%v gate=%q after %.0f s", v, c.passed, c.gate, c.tookSecs)
			}
			if !c.passed && (v.Err == nil || !strings.Contains(v.Err.Error(), c.gate+" not yet")) {
				t.Errorf("verdict error %v, want the gate's last error", v.Err)
			}
			for _, d := range clock.Delays() {
				if d > trialPoll {
					t.Errorf("waited %v between checks, want at most %v", d, trialPoll)
				}
			}
		})
	}
	// A gate that passed is not asked again while a later one is polled.
	clock := &fakeClock{now: start}
	var na, nb int
	JudgeTrial(context.Background(), []Gate{gateAfter("network", 1, &na), gateAfter("libvirt", 5, &nb)}, time.Minute, clock)
	if na != 1 || nb != 5 {
		t.Errorf("checks: network %d, libvirt %d; want 1 and 5", na, nb)
	}
	// Shutting down ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v := JudgeTrial(ctx, []Gate{gateAfter("network", -1, &na)}, time.Minute, &fakeClock{now: start})
	if v.Passed || !errors.Is(v.Err, context.Canceled) {
		t.Errorf("JudgeTrial after cancel = %+v, want context.Canceled", v)
	}
}

func TestTrialOutcome(t *testing.T) {
	staged := bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: 2}}
	env := bootenv.OnESP(t.TempDir())

	// A trial that passed its gates is committed.
	if err := env.Write(staged); err != nil {
		t.Fatal(err)
	}
	from, reboot, err := trialOutcome(env, "b", true, Verdict{Passed: true, Took: 42 * time.Second})
	if err != nil || reboot || from != "" {
		t.Errorf("passed trial: from %q reboot %v err %v", from, reboot, err)
	}
	if st, _, _ := env.Read(); !st.B.OK || st.Order[0] != "b" {
		t.Errorf("after a passed trial: %+v, want b good and first", st)
	}

	// A failed gate rejects the trial and reboots into the other slot.
	if err := env.Write(staged); err != nil {
		t.Fatal(err)
	}
	from, reboot, err = trialOutcome(env, "b", true, Verdict{Gate: "service libvirtd ready", Err: errors.New("service libvirtd is restarting")})
	if err != nil || !reboot || from != "" {
		t.Errorf("failed trial: from %q reboot %v err %v", from, reboot, err)
	}
	st, _, _ := env.Read()
	if slot, trial, _ := st.Boot(); slot != "a" || trial {
		t.Errorf("after a failed trial the next boot is %s (trial %v), want a", slot, trial)
	}

	// The fallback boot of a says which trial failed, and cleans up the order.
	from, reboot, err = trialOutcome(env, "a", false, Verdict{})
	if err != nil || reboot || from != "b" {
		t.Errorf("fallback boot: from %q reboot %v err %v, want from b", from, reboot, err)
	}
	// An ordinary boot of a good slot says nothing.
	from, _, err = trialOutcome(env, "a", false, Verdict{})
	if err != nil || from != "" {
		t.Errorf("ordinary boot: from %q, %v; want none", from, err)
	}
}

// RollbackReason names the failed gate a trial kept on QUANTIX-DATA, but only a
// reason kept since that slot was last staged; without one it says the trial
// ended without a verdict.
func TestRollbackReason(t *testing.T) {
	data := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	if got := RollbackReason(data, "b"); !strings.Contains(got, "without a verdict") {
		t.Errorf("no record: %q, want without a verdict", got)
	}
	keepFailedBoot(data, t.TempDir(), "b", Verdict{Gate: "service libvirtd ready", Err: errors.New("service libvirtd is failed: exec: no such file"), Took: 61 * time.Second}, log)
	got := RollbackReason(data, "b")
	if !strings.Contains(got, `health gate "service libvirtd ready" failed after 61 s: service libvirtd is failed: exec: no such file`) {
		t.Errorf("kept reason: %q", got)
	}
	if got := RollbackReason(data, "a"); !strings.Contains(got, "without a verdict") {
		t.Errorf("other slot: %q, want without a verdict", got)
	}
	// Staged again later: the old record is not this trial's.
	at := time.Now().UTC().Add(time.Hour).Format(time.RFC3339)
	os.WriteFile(filepath.Join(data, "upgrade", stagedFile), []byte("slot = \"b\"\nversion = \"0.3.0\"\nat = "+at+"\n"), 0o644)
	if got := RollbackReason(data, "b"); !strings.Contains(got, "slot b (0.3.0) ended without a verdict") {
		t.Errorf("stale record after a new stage: %q, want without a verdict, naming 0.3.0", got)
	}
}

func TestVDCConfigured(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	if VDCConfigured(quantix.ParseCmdline(""), cfg) {
		t.Error("no agent.toml and no quantix.vdc: configured")
	}
	if !VDCConfigured(quantix.ParseCmdline("quantix.vdc=https://10.0.0.1:8443"), cfg) {
		t.Error("quantix.vdc on the command line: not configured")
	}
	os.WriteFile(cfg, []byte("control_plane = \"https://10.0.0.1:8443\"\n"), 0o600)
	if !VDCConfigured(quantix.ParseCmdline(""), cfg) {
		t.Error("control_plane in agent.toml: not configured")
	}
	os.WriteFile(cfg, []byte("control_plane = \"\"\njoin_token = \"x\"\n"), 0o600)
	if VDCConfigured(quantix.ParseCmdline(""), cfg) {
		t.Error("empty control_plane: configured")
	}
}

// Gates over a real supervisor: a ready service passes, one that keeps failing
// holds the trial up and is named with its state; an if-vdc gate counts only with
// a vDC configured.
func TestServiceGates(t *testing.T) {
	sup, _, _, _ := newSup(t, map[string]string{"net": "ready", "lib": "fail", "agent": "config"}, nil, []string{"net", "lib", "agent"}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-sup.Ready("net"):
	case <-time.After(30 * time.Second):
		t.Fatal("service net never got ready")
	}
	specs := []quantix.Service{{Name: "net", HealthGate: quantix.GateReady}, {Name: "lib", HealthGate: quantix.GateReady},
		{Name: "agent", HealthGate: quantix.GateIfVDC}, {Name: "console"}}
	if g := ServiceGates(sup, specs, false); len(g) != 2 {
		t.Errorf("gates without a vDC: %d, want net and lib", len(g))
	}
	gates := ServiceGates(sup, specs, true)
	if len(gates) != 3 || gates[2].Name != "service agent ready" {
		t.Fatalf("gates with a vDC: %+v, want net, lib, agent", gates)
	}
	v := JudgeTrial(ctx, gates, time.Minute, &fakeClock{now: time.Now()})
	if v.Passed || v.Gate != "service lib ready" || !strings.Contains(v.Err.Error(), "service lib is ") {
		t.Errorf("JudgeTrial = %+v, want the lib gate failed with its state", v)
	}
	if v := JudgeTrial(ctx, gates[:1], time.Minute, &fakeClock{now: time.Now()}); !v.Passed {
		t.Errorf("JudgeTrial(net only) = %+v, want passed", v)
	}
}
