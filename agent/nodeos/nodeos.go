// Package nodeos is the node's operating system as the agent sees and changes it
// (docs/design.md §16, the flow in upgrades.go): it reports the running image,
// version and A/B slots (quantix.NodeOS, in every heartbeat) and carries out the
// vDC's order (quantix.DesiredUpgrade, from the desired state the agent/vms
// reconciler long-polls): the bundle's files are downloaded over the agent
// channel onto QUANTIX-DATA and checked, init verifies and stages them into the
// other slot, and with Activate the node reboots into it once the vDC has heard
// so.
//
// What was done for which order is kept in agent-state.json next to the
// bundles, so that neither an agent restart nor the reboot, nor a rollback to
// the old version, makes the agent do an order twice: a failed order stays
// failed, with its reason, until the vDC clears or changes it.
package nodeos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/vms"
)

// Files and folders below Config.DataDir.
const (
	UpgradeDir = "upgrade"
	BundlesDir = UpgradeDir + "/bundles" // one folder per release
	StateFile  = UpgradeDir + "/agent-state.json"
)

// BootIDPath is the kernel's random id of this boot: it tells the agent whether
// the reboot it asked for has happened.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// spaceMargin is what a download leaves free on QUANTIX-DATA (the guests' disks
// live there too).
const spaceMargin = 64 << 20

// Fetcher opens a file of a release bundle from the vDC from offset on
// (vms.Channel.ReleaseFile): partial says the body starts at offset.
type Fetcher interface {
	ReleaseFile(ctx context.Context, release, name string, offset int64) (body io.ReadCloser, length int64, partial bool, err error)
}

// Config configures an Upgrader. Zero values take the defaults in parentheses.
type Config struct {
	// Fetcher downloads release files (the agent's channel to the vDC).
	Fetcher Fetcher
	// Init is qx-init's control socket (quantix.InitSocket).
	Init quantix.InitClient
	// Image and Version are the running system's; "" reads ImageConfig
	// (quantix.ImageConfigPath), and without one Version is quantix.Version.
	Image, Version string
	ImageConfig    string
	// DataDir is QUANTIX-DATA's mount point (quantix.DataDir): bundles and the
	// state go below it, and it must be a persistent filesystem.
	DataDir string
	// MountInfo is the mount table that says so (quantix.MountInfo).
	MountInfo string
	// BootID is the file holding this boot's id (BootIDPath).
	BootID string

	// RetryEvery is how soon a step that failed for a passing reason (the vDC or
	// init unreachable, a download that broke off, no space) is tried again (15 s).
	RetryEvery time.Duration
	// TrialPoll is how often the slots are asked again while this boot is a trial
	// not yet judged (10 s).
	TrialPoll time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Fetcher == nil {
		return c, fmt.Errorf("nodeos: a Fetcher is required")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.ImageConfig, quantix.ImageConfigPath)
	def(&c.DataDir, quantix.DataDir)
	def(&c.MountInfo, quantix.MountInfo)
	def(&c.BootID, BootIDPath)
	if c.Version == "" {
		c.Image, c.Version = RunningImage(c.ImageConfig)
	}
	if c.RetryEvery <= 0 {
		c.RetryEvery = 15 * time.Second
	}
	if c.TrialPoll <= 0 {
		c.TrialPoll = 10 * time.Second
	}
	return c, nil
}

// RunningImage is the image and version of the running system from its image
// configuration; without one (the agent run by hand) the image is unknown and the
// version is the agent's own.
func RunningImage(path string) (image, version string) {
	ic, err := quantix.LoadImageConfig(path)
	if err != nil {
		return "", quantix.Version
	}
	return ic.Image, ic.Version
}

// Upgrader reports the node's OS and carries out upgrade orders. Create it with
// New, start Run, feed it the desired state's orders (Want) and tell it what a
// heartbeat delivered (Reported).
type Upgrader struct {
	cfg Config
	log *slog.Logger

	wake    chan struct{}
	changes chan struct{}

	mu        sync.Mutex
	order     *quantix.DesiredUpgrade
	known     bool               // an order (or none) came from the vDC
	cancelJob context.CancelFunc // ends the step in flight when the order changes
	os        quantix.NodeOS
	acked     *quantix.UpgradeProgress // the progress a heartbeat delivered

	// Owned by Run.
	st        state
	slots     *quantix.SlotsStatus
	slotsErr  error  // init's answer to the slots request, when it refused
	slotsFail bool   // init could not be asked: ask again
	rebooting bool   // init took the reboot request: not asked again
	refusal   string // the last refusal of an order logged
}

// New checks cfg and returns an Upgrader; the state of an earlier order is read
// by Run.
func New(cfg Config, log *slog.Logger) (*Upgrader, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Upgrader{cfg: cfg, log: log, wake: make(chan struct{}, 1), changes: make(chan struct{}, 1),
		os: quantix.NodeOS{Image: cfg.Image, Version: cfg.Version}}, nil
}

// OS is what the next heartbeat reports: cheap, a copy of what the Upgrader
// last found.
func (u *Upgrader) OS() *quantix.NodeOS {
	u.mu.Lock()
	defer u.mu.Unlock()
	os := u.os
	if os.Slots != nil {
		s := *os.Slots
		os.Slots = &s
	}
	if os.Upgrade != nil {
		p := *os.Upgrade
		os.Upgrade = &p
	}
	return &os
}

// Changes delivers a signal (coalesced) when OS changed: the agent heartbeats
// then, rather than at the next interval.
func (u *Upgrader) Changes() <-chan struct{} { return u.changes }

// Want hands over the order of a desired state the vDC sent (nil: none). An order
// that differs from the one being worked on ends that work.
func (u *Upgrader) Want(d *quantix.DesiredUpgrade) {
	if d != nil {
		c := *d
		c.Files = append([]quantix.ReleaseFile(nil), d.Files...)
		d = &c
	}
	u.mu.Lock()
	if u.cancelJob != nil && key(u.order) != key(d) {
		u.cancelJob()
	}
	same := u.known && key(u.order) == key(d) && (d == nil || d.Activate == u.order.Activate)
	u.order, u.known = d, true
	u.mu.Unlock()
	if !same {
		u.kick()
	}
}

// Reported tells the Upgrader that the vDC acknowledged a heartbeat carrying os:
// the reboot of an activation waits for that, so the vDC knows why the node goes
// away.
func (u *Upgrader) Reported(os *quantix.NodeOS) {
	if os == nil || os.Upgrade == nil || os.Upgrade.Phase != quantix.UpgradeActivating {
		return
	}
	p := *os.Upgrade
	u.mu.Lock()
	u.acked = &p
	u.mu.Unlock()
	u.kick()
}

func (u *Upgrader) kick() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

func key(d *quantix.DesiredUpgrade) string {
	if d == nil {
		return ""
	}
	return d.Upgrade + "\x00" + d.Release
}

// Run works on the orders until ctx ends; it returns nil then.
func (u *Upgrader) Run(ctx context.Context) error {
	st, err := loadState(u.statePath())
	if err != nil {
		// Unreadable: better to forget it than to be stuck; the order, if the
		// vDC still has one, starts over.
		u.log.Warn("upgrade state unreadable; starting over", "path", u.statePath(), "err", err)
		os.Remove(u.statePath())
	}
	u.st = st
	u.askSlots(ctx)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next := u.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if next > 0 {
			timer.Reset(next)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-u.wake:
		case <-timer.C:
		}
	}
}

// step works on the current order as far as it can and returns when to look
// again without news (0: only on news).
func (u *Upgrader) step(ctx context.Context) time.Duration {
	u.mu.Lock()
	order, known := u.order, u.known
	jctx, cancel := context.WithCancel(ctx)
	u.cancelJob = cancel
	u.mu.Unlock()
	defer cancel()

	if u.slotsFail {
		u.askSlots(ctx)
	}
	again := u.work(jctx, order, known)
	if u.slots != nil && u.slots.Trial && (again == 0 || again > u.cfg.TrialPoll) {
		// The trial's verdict comes without news from the vDC.
		again = u.cfg.TrialPoll
		defer u.askSlots(ctx)
	}
	if u.slotsFail && (again == 0 || again > u.cfg.RetryEvery) {
		again = u.cfg.RetryEvery
	}
	return again
}

// work is step's decision: what the order and the state of the last one say to
// do now.
func (u *Upgrader) work(ctx context.Context, order *quantix.DesiredUpgrade, known bool) time.Duration {
	if u.slots == nil && u.slotsFail {
		// Every decision needs the slots: wait for init rather than judge a
		// reboot or a staged slot without them.
		u.publish(u.st.progress())
		if order != nil {
			u.log.Warn("upgrade order waits: qx-init does not answer", "upgrade", order.Upgrade, "err", u.slotsErr)
		}
		return u.cfg.RetryEvery
	}
	if u.st.Phase == quantix.UpgradeActivating && u.st.BootID != u.bootID() {
		u.afterReboot()
	}
	if !known {
		// Until the vDC has said, report what the state says.
		u.publish(u.st.progress())
		return 0
	}
	if order == nil {
		if u.st.Upgrade != "" || u.hasBundles() {
			u.log.Info("upgrade order cleared", "upgrade", u.st.Upgrade, "release", u.st.Release)
			u.removeBundles()
			u.st = state{}
			if err := os.Remove(u.statePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
				u.log.Warn("remove upgrade state", "err", err)
			}
		}
		u.publish(nil)
		return 0
	}
	if u.st.Upgrade != order.Upgrade || u.st.Release != order.Release {
		u.log.Info("new upgrade order", "upgrade", order.Upgrade, "release", order.Release, "version", order.Version,
			"image", order.Image, "activate", order.Activate, "files", len(order.Files))
		u.removeBundles()
		u.st = state{Upgrade: order.Upgrade, Release: order.Release, Version: order.Version}
	}
	switch u.st.Phase {
	case quantix.UpgradeFailed:
		u.publish(u.st.progress())
		return 0
	case quantix.UpgradeActivating:
		return u.activate(ctx, order)
	case quantix.UpgradeStaged:
		if !u.stillStaged() {
			u.log.Warn("the staged release is no longer the next boot; staging it again", "release", order.Release, "slots", u.slots)
			u.st.Phase = ""
			break
		}
		if order.Activate {
			return u.activate(ctx, order)
		}
		u.publish(u.st.progress())
		return 0
	}
	return u.stage(ctx, order)
}

// stage downloads the order's files and has init stage them.
func (u *Upgrader) stage(ctx context.Context, order *quantix.DesiredUpgrade) time.Duration {
	if err := u.canStage(order); err != nil {
		// Not recorded: what the node lacks may be fixed (a disk mounted, space
		// freed); looked at again later, logged when it changes.
		if err.Error() != u.refusal {
			u.refusal = err.Error()
			u.log.Warn("upgrade order refused", "upgrade", order.Upgrade, "release", order.Release, "err", err)
		}
		u.publish(&quantix.UpgradeProgress{Upgrade: order.Upgrade, Release: order.Release, Version: order.Version,
			Phase: quantix.UpgradeFailed, Error: err.Error(), At: time.Now()})
		if u.slots == nil {
			return 0 // a live boot stays one
		}
		return u.cfg.RetryEvery
	}
	if u.st.Phase != quantix.UpgradeDownloading {
		u.record(quantix.UpgradeDownloading, "")
	}
	dir := u.bundleDir(order.Release)
	if err := u.download(ctx, order, dir); err != nil {
		if ctx.Err() != nil {
			return 0
		}
		if errors.Is(err, vms.ErrMismatch) {
			// The vDC sends other bytes than it ordered: retrying fetches them
			// again; the vDC must change the order.
			u.record(quantix.UpgradeFailed, err.Error())
			u.removeBundles()
			return 0
		}
		u.log.Warn("upgrade download failed; retrying", "release", order.Release, "err", err, "retry_in", u.cfg.RetryEvery)
		u.st.Error = err.Error()
		u.publish(u.st.progress())
		return u.cfg.RetryEvery
	}
	staged, err := u.cfg.Init.Stage(ctx, dir)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		if unreachable(err) {
			u.st.Error = err.Error()
			u.publish(u.st.progress())
			return u.cfg.RetryEvery
		}
		// init's refusal (signature, image, version rule), as init put it.
		u.log.Warn("init refused to stage the release", "release", order.Release, "err", err)
		u.record(quantix.UpgradeFailed, "init refused the bundle: "+err.Error())
		return 0
	}
	u.log.Info("release staged", "release", order.Release, "slot", staged.Slot, "version", staged.Version,
		"signed_by", staged.SignedBy, "seconds", staged.Seconds)
	u.st.Slot = staged.Slot
	u.askSlots(ctx)
	u.record(quantix.UpgradeStaged, "")
	if order.Activate {
		return u.activate(ctx, order)
	}
	return 0
}

// canStage says why the node cannot take the order at all, if it cannot.
func (u *Upgrader) canStage(order *quantix.DesiredUpgrade) error {
	if u.slots == nil {
		return fmt.Errorf("this node is not an A/B install (init: %v): it cannot be upgraded in place, only reinstalled", u.slotsErr)
	}
	if len(order.Files) == 0 {
		return fmt.Errorf("the order for release %s names no files", order.Release)
	}
	for _, f := range order.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) || strings.HasPrefix(f.Name, ".") || len(f.SHA256) != 64 || f.SizeBytes < 0 {
			return fmt.Errorf("the order for release %s names a bad file %q (size %d, sha256 %q)", order.Release, f.Name, f.SizeBytes, f.SHA256)
		}
	}
	if order.Release == "" || order.Release != filepath.Base(order.Release) || strings.HasPrefix(order.Release, ".") {
		return fmt.Errorf("the order names a bad release id %q", order.Release)
	}
	m, err := quantix.ReadMountFacts(u.cfg.MountInfo, u.cfg.DataDir)
	if err != nil {
		return err
	}
	if !m.Persistent() {
		return fmt.Errorf("%s is not a persistent filesystem (%s on %q): a release is downloaded onto QUANTIX-DATA, and this node has none mounted",
			u.cfg.DataDir, m.FSType, m.Source)
	}
	return u.checkSpace(order)
}

// activate reports activating and, once the vDC acknowledged a heartbeat saying
// so, asks init to reboot into the staged slot.
func (u *Upgrader) activate(ctx context.Context, order *quantix.DesiredUpgrade) time.Duration {
	boot := u.bootID()
	if u.st.Phase != quantix.UpgradeActivating {
		u.st.BootID, u.st.FromVersion = boot, u.cfg.Version
		u.record(quantix.UpgradeActivating, "")
		return 0 // the heartbeat it triggers brings Reported
	}
	u.publish(u.st.progress())
	if u.st.BootID != boot {
		return 0 // rebooted: afterReboot judged it
	}
	u.mu.Lock()
	acked := u.acked != nil && u.acked.Upgrade == order.Upgrade && u.acked.Release == order.Release
	u.mu.Unlock()
	if !acked || u.rebooting {
		return 0
	}
	u.log.Info("rebooting into the staged release", "release", order.Release, "version", order.Version, "slot", u.st.Slot)
	if err := u.cfg.Init.Power(ctx, quantix.Reboot); err != nil {
		if ctx.Err() != nil {
			return 0
		}
		if unreachable(err) {
			u.log.Warn("reboot request failed; retrying", "err", err)
			return u.cfg.RetryEvery
		}
		u.record(quantix.UpgradeFailed, "init refused the reboot: "+err.Error())
		return 0
	}
	// Heartbeats go on while init stops the services: one request is enough.
	u.rebooting = true
	return 0
}

// afterReboot judges an activation after the reboot: the new version runs (its
// trial, then committed), or the node is back on the old one.
func (u *Upgrader) afterReboot() {
	if u.st.Version == u.cfg.Version {
		if u.slots != nil && u.slots.State == quantix.SlotGood && !u.st.Committed {
			u.log.Info("upgrade committed", "release", u.st.Release, "version", u.st.Version, "slot", u.slots.Booted)
			u.removeBundles()
			u.st.Committed = true
			u.save()
		}
		return
	}
	why := fmt.Sprintf("rebooted to activate %s but runs %s", u.st.Version, u.cfg.Version)
	switch {
	case u.slots == nil:
		why += fmt.Sprintf(" (the slots are unknown: %v)", u.slotsErr)
	case u.slots.State == quantix.SlotRolledBack:
		why = fmt.Sprintf("rolled back to %s in slot %s: the trial of %s in slot %s failed: %s",
			u.cfg.Version, u.slots.Booted, u.st.Version, u.slots.RolledBackFrom, u.slots.Reason)
	default:
		why += fmt.Sprintf(" (slot %s, state %s)", u.slots.Booted, u.slots.State)
	}
	u.log.Warn("upgrade failed", "release", u.st.Release, "reason", why)
	u.record(quantix.UpgradeFailed, why)
}

// stillStaged says whether the slots still boot the staged release next.
func (u *Upgrader) stillStaged() bool {
	if u.slots == nil || u.slots.Next == u.slots.Booted {
		return false
	}
	for _, s := range u.slots.Slots {
		if s.Slot == u.slots.Next {
			return s.Version == u.st.Version
		}
	}
	return false
}

// askSlots asks init for the slots. A refusal (a live boot) is final for this
// boot; init not answering is asked again.
func (u *Upgrader) askSlots(ctx context.Context) {
	st, err := u.cfg.Init.Slots(ctx)
	u.slotsErr, u.slotsFail = err, err != nil && unreachable(err)
	if err != nil {
		if !u.slotsFail {
			u.slots = nil
		}
		u.log.Info("no A/B slots", "err", err, "ask_again", u.slotsFail)
	} else {
		u.slots = &st
	}
	u.mu.Lock()
	u.os.Slots = u.slots
	u.mu.Unlock()
}

// unreachable says whether err is init not answering (rather than an answer).
func unreachable(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, os.ErrNotExist) || errors.Is(err, context.DeadlineExceeded)
}

// publish sets the progress the next heartbeat reports and signals a change.
func (u *Upgrader) publish(p *quantix.UpgradeProgress) {
	u.mu.Lock()
	old := u.os.Upgrade
	u.os.Upgrade = p
	u.os.Slots = u.slots
	changed := (old == nil) != (p == nil) || (p != nil && (*old != *p))
	u.mu.Unlock()
	if changed {
		select {
		case u.changes <- struct{}{}:
		default:
		}
	}
}

// record moves the state to phase, stores it and publishes it.
func (u *Upgrader) record(phase, errText string) {
	u.st.Phase, u.st.Error, u.st.At = phase, errText, time.Now().UTC()
	u.save()
	u.publish(u.st.progress())
}

func (u *Upgrader) save() {
	if err := saveState(u.statePath(), u.st); err != nil {
		// The order goes on; after a restart it may be done again (at worst
		// a download and a stage: the reboot waits for the vDC's order).
		u.log.Error("store the upgrade state", "path", u.statePath(), "err", err)
	}
}

func (u *Upgrader) bootID() string {
	b, err := os.ReadFile(u.cfg.BootID)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (u *Upgrader) statePath() string { return filepath.Join(u.cfg.DataDir, StateFile) }

func (u *Upgrader) bundleDir(release string) string {
	return filepath.Join(u.cfg.DataDir, BundlesDir, release)
}

func (u *Upgrader) hasBundles() bool {
	es, _ := os.ReadDir(filepath.Join(u.cfg.DataDir, BundlesDir))
	return len(es) > 0
}

// removeBundles removes every downloaded bundle: at most one order's files are
// kept on QUANTIX-DATA.
func (u *Upgrader) removeBundles() {
	if err := os.RemoveAll(filepath.Join(u.cfg.DataDir, BundlesDir)); err != nil {
		u.log.Warn("remove downloaded bundles", "err", err)
	}
}
