package initd

import (
	"context"
	"errors"
	"fmt"
	"os"
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
// so that it can be tested on a folder. rolledBack is the slot GRUB fell back
// from on a boot that is not a trial ("" when it did not).
func trialOutcome(env bootenv.Files, slot string, trial bool, v Verdict) (rolledBack string, reboot bool, err error) {
	if !trial {
		// Not a trial: only say whether GRUB fell back here from a failed trial.
		st, _, err := env.Read()
		if err != nil {
			return "", false, err
		}
		if first := st.Order[0]; first != slot && !st.Slot(first).OK {
			c, err := env.Commit(slot)
			if err != nil {
				return "", false, err
			}
			return c.RolledBack, false, nil
		}
		return "", false, nil
	}
	if v.Passed {
		if _, err := env.Commit(slot); err != nil {
			return "", false, err
		}
		return "", false, nil
	}
	if _, err := env.Reject(slot); err != nil {
		return "", true, err
	}
	return "", true, nil
}

// trialDeadline is the image's (ImageConfig.TrialDeadlineSeconds) or TrialDeadline.
func (in *Init) trialDeadline() time.Duration {
	if s := in.cfg.TrialDeadlineSeconds; s > 0 {
		return time.Duration(s) * time.Second
	}
	return TrialDeadline
}

// judgeSlot runs once the services started on an installed A/B disk: on a trial
// it arms the watchdog, waits for the health gates, then commits the slot or
// rejects it, keeps the failed boot's logs on QUANTIX-DATA and asks for a reboot
// into the other slot. On a boot that is not a trial it says whether GRUB fell
// back from a failed trial, and why.
func (in *Init) judgeSlot(ctx context.Context, sup *Supervisor, k *SlotKeeper, cmdline quantix.Cmdline, reboot func()) {
	slot, trial := k.booted, k.trial
	var v Verdict
	if trial {
		deadline := in.trialDeadline()
		in.say(quantix.SlotMarker(slot, quantix.SlotTrial, "deadline", fmt.Sprintf("%.0f", deadline.Seconds())))
		wd, err := ArmWatchdog(WatchdogDevice, WatchdogTimeout)
		switch {
		case wd == nil:
			in.say(quantix.WarningMarker("init", fmt.Sprintf("trial of slot %s without a watchdog (%v): a hang needs a reset by hand", slot, err)))
		case err != nil:
			in.log.Warn("watchdog", "err", err)
		}
		stop := make(chan struct{})
		if wd != nil {
			in.log.Info("watchdog armed for the trial", "device", wd.Identity, "timeout", wd.Timeout)
			go wd.guard(stop, time.Now().Add(deadline+wd.Timeout), realClock{})
		}
		gates := ServiceGates(sup, in.cfg.Services, VDCConfigured(cmdline, quantix.AgentConfig))
		v = JudgeTrial(ctx, gates, deadline, realClock{})
		close(stop)
		if ctx.Err() != nil {
			return // shutting down: the next boot is the trial's next try
		}
		if wd != nil {
			if v.Passed {
				if err := wd.Disarm(); err != nil {
					in.log.Warn("watchdog", "err", err)
				}
			} else {
				wd.Abandon() // it resets the machine if the reboot hangs
			}
		}
	}
	var from string
	var again bool
	err := k.esp(func(env bootenv.Files, _ string) error {
		var err error
		from, again, err = trialOutcome(env, slot, trial, v)
		return err
	})
	switch {
	case err != nil:
		in.say(quantix.WarningMarker("init", fmt.Sprintf("boot slot %s: %v", slot, err)))
	case !trial && from != "":
		why := RollbackReason(quantix.DataDir, from)
		k.setState(quantix.SlotRolledBack, from, why)
		in.say(quantix.SlotMarker(slot, quantix.SlotRolledBack, "from", from, "reason", why))
	case trial && v.Passed:
		k.setState(quantix.SlotGood, "", "")
		in.say(quantix.SlotMarker(slot, quantix.SlotGood, "seconds", fmt.Sprintf("%.1f", v.Took.Seconds())))
	case trial:
		k.setState(quantix.SlotFailed, "", v.Gate+": "+v.Err.Error())
		in.say(quantix.SlotMarker(slot, quantix.SlotFailed, "gate", v.Gate, "err", v.Err.Error()))
	}
	if !trial || v.Passed {
		return
	}
	keepFailedBoot(quantix.DataDir, quantix.LogDir, slot, v, in.log)
	if again || err != nil {
		reboot()
	}
}

// espMountOptions name the character sets of the modules the images ship
// (nls_cp437, nls_iso8859-1): Debian's kernel defaults vfat to iocharset=ascii,
// whose module (nls_ascii) is not in the images, and the mount then fails with
// EINVAL ("IO charset ascii not found").
const espMountOptions = "codepage=437,iocharset=iso8859-1"

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
	if err := unix.Mount(in.espDevice, ESPMount, "vfat", unix.MS_NOATIME|unix.MS_NODEV|unix.MS_NOEXEC, espMountOptions); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", in.espDevice, quantix.LabelEFI, ESPMount, err)
	}
	err := fn(ESPMount)
	unix.Sync()
	if uerr := unix.Unmount(ESPMount, 0); uerr != nil && err == nil {
		err = fmt.Errorf("unmount %s: %w", ESPMount, uerr)
	}
	return err
}
