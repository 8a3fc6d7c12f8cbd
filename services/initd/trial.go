package initd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
)

// Trial timing (docs/design.md §16): a trial boot has TrialDeadline from the start
// of its services to prove itself; gates are polled every trialPoll.
const (
	TrialDeadline = 5 * time.Minute
	trialPoll     = time.Second
)

// ESPMount is where init mounts QUANTIX-EFI for the moment it writes the slot
// environment.
const ESPMount = quantix.RunDir + "/esp"

// Gate is one health check of a trial boot.
type Gate struct {
	Name  string
	Check func() error
}

// Verdict is the outcome of a trial's health gates.
type Verdict struct {
	Passed bool
	// Gate is the first gate that had not passed at the deadline, Err its last error.
	Gate string
	Err  error
	Took time.Duration
}

// JudgeTrial checks the gates in order, polling each until it passes, until every
// one has passed or deadline has gone by (then the verdict names the gate that
// held the trial up and its last error). A gate that passed is not asked again.
func JudgeTrial(ctx context.Context, gates []Gate, deadline time.Duration, clock Clock) Verdict {
	start := clock.Now()
	end := start.Add(deadline)
	for _, g := range gates {
		for {
			err := g.Check()
			if err == nil {
				break
			}
			now := clock.Now()
			if !now.Before(end) {
				return Verdict{Gate: g.Name, Err: err, Took: now.Sub(start)}
			}
			select {
			case <-clock.After(min(trialPoll, end.Sub(now))):
			case <-ctx.Done():
				return Verdict{Gate: g.Name, Err: fmt.Errorf("%w (last: %v)", ctx.Err(), err), Took: clock.Now().Sub(start)}
			}
		}
	}
	return Verdict{Passed: true, Took: clock.Now().Sub(start)}
}

// ServiceGates are the gates of an image: every service whose HealthGate says so
// must be ready; GateIfVDC services only when vdcConfigured.
func ServiceGates(sup *Supervisor, services []quantix.Service, vdcConfigured bool) []Gate {
	var gates []Gate
	for _, s := range services {
		if s.HealthGate == "" || (s.HealthGate == quantix.GateIfVDC && !vdcConfigured) {
			continue
		}
		name := s.Name
		gates = append(gates, Gate{Name: "service " + name + " ready", Check: func() error {
			select {
			case <-sup.Ready(name):
				return nil
			default:
			}
			for _, st := range sup.Services() {
				if st.Name == name {
					if st.LastError != "" {
						return fmt.Errorf("service %s is %s: %s", name, st.State, st.LastError)
					}
					return fmt.Errorf("service %s is %s", name, st.State)
				}
			}
			return fmt.Errorf("service %s is not in the image", name)
		}})
	}
	return gates
}

// VDCConfigured says whether the node agent has a vDC to register with: on the
// kernel command line or as control_plane in its configuration.
func VDCConfigured(cmdline quantix.Cmdline, agentConfig string) bool {
	if cmdline.Value(quantix.ParamVDC) != "" {
		return true
	}
	// agent.FileConfig's key; init does not import the agent for one string.
	var c struct {
		ControlPlane string `toml:"control_plane"`
	}
	if _, err := toml.DecodeFile(agentConfig, &c); err != nil {
		return false
	}
	return strings.TrimSpace(c.ControlPlane) != ""
}

// trialOutcome is what judgeSlot does with a verdict, separated from the mounts
// so that it can be tested on a folder.
func trialOutcome(env bootenv.Files, slot string, trial bool, v Verdict) (markers []string, reboot bool, err error) {
	if !trial {
		// Not a trial: only say whether GRUB fell back here from a failed trial.
		st, _, err := env.Read()
		if err != nil {
			return nil, false, err
		}
		if first := st.Order[0]; first != slot && !st.Slot(first).OK {
			c, err := env.Commit(slot)
			if err != nil {
				return nil, false, err
			}
			return []string{quantix.SlotMarker(slot, quantix.SlotRolledBack, "from", c.RolledBack)}, false, nil
		}
		return nil, false, nil
	}
	if v.Passed {
		if _, err := env.Commit(slot); err != nil {
			return nil, false, err
		}
		return []string{quantix.SlotMarker(slot, quantix.SlotGood, "seconds", fmt.Sprintf("%.1f", v.Took.Seconds()))}, false, nil
	}
	if _, err := env.Reject(slot); err != nil {
		return nil, true, err
	}
	return []string{quantix.SlotMarker(slot, quantix.SlotFailed, "gate", v.Gate, "err", v.Err.Error())}, true, nil
}

// judgeSlot runs once the services started on an installed A/B disk: on a trial
// it waits for the health gates, then commits the slot or rejects it, keeps the
// failed boot's logs on QUANTIX-DATA and asks for a reboot into the other slot.
func (in *Init) judgeSlot(ctx context.Context, sup *Supervisor, cmdline quantix.Cmdline, reboot func()) {
	slot := cmdline.Value(quantix.ParamSlot)
	trial := cmdline.Value(quantix.ParamTrial) == "1"
	if !quantix.ValidSlot(slot) {
		return
	}
	var v Verdict
	if trial {
		in.say(quantix.SlotMarker(slot, quantix.SlotTrial, "deadline", fmt.Sprintf("%.0f", TrialDeadline.Seconds())))
		gates := ServiceGates(sup, in.cfg.Services, VDCConfigured(cmdline, quantix.AgentConfig))
		v = JudgeTrial(ctx, gates, TrialDeadline, realClock{})
		if ctx.Err() != nil {
			return // shutting down: the next boot is the trial's next try
		}
	}
	var markers []string
	var again bool
	err := in.withESP(func(esp string) error {
		var err error
		markers, again, err = trialOutcome(bootenv.OnESP(esp), slot, trial, v)
		return err
	})
	for _, m := range markers {
		in.say(m)
	}
	if err != nil {
		in.say(quantix.WarningMarker("init", fmt.Sprintf("boot slot %s: %v", slot, err)))
	}
	if !trial || v.Passed {
		return
	}
	in.keepFailedBoot(slot, v)
	if again || err != nil {
		reboot()
	}
}

// keepFailedBoot copies the service logs of a failed trial to QUANTIX-DATA.
func (in *Init) keepFailedBoot(slot string, v Verdict) {
	dir := filepath.Join(quantix.DataDir, "upgrade", "failed-"+slot+"-"+time.Now().UTC().Format("20060102T150405Z"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		in.log.Warn("keep the failed trial's logs", "err", err)
		return
	}
	reason := fmt.Sprintf("slot = %q\ngate = %q\nerror = %q\nseconds = %.1f\n", slot, v.Gate, v.Err.Error(), v.Took.Seconds())
	_ = quantix.WriteFileAtomic(filepath.Join(dir, "reason.toml"), []byte(reason), 0o644)
	logs, _ := filepath.Glob(filepath.Join(quantix.LogDir, "*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			_ = quantix.WriteFileAtomic(filepath.Join(dir, filepath.Base(l)), b, 0o644)
		}
	}
	in.log.Info("kept the failed trial's logs", "dir", dir)
}

// withESP mounts QUANTIX-EFI of the installed disk at ESPMount, runs fn, syncs and
// unmounts it.
func (in *Init) withESP(fn func(esp string) error) error {
	if in.espDevice == "" {
		return errors.New("no " + quantix.LabelEFI + " on the installed disk: the slot environment cannot be written")
	}
	if in.mods != nil {
		if err := in.mods.Load("vfat", "nls_cp437", "nls_iso8859-1"); err != nil {
			in.log.Warn("filesystem module", "type", "vfat", "err", err)
		}
	}
	if err := os.MkdirAll(ESPMount, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(in.espDevice, ESPMount, "vfat", unix.MS_NOATIME|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", in.espDevice, quantix.LabelEFI, ESPMount, err)
	}
	err := fn(ESPMount)
	unix.Sync()
	if uerr := unix.Unmount(ESPMount, 0); uerr != nil && err == nil {
		err = fmt.Errorf("unmount %s: %w", ESPMount, uerr)
	}
	return err
}
