// Package vms is the node side of VMs from the vDC (docs/design.md §14): it pulls
// the node's desired VMs over the agent channel (a long-poll, plus the desired
// generation of every heartbeat answer), converges libvirt to them, idempotent by
// the VM's UUID (= the domain's UUID), keeps verified copies of the images they
// use, tails their serial consoles to the vDC, and tells the agent the generation
// it applied and the VMs it could not converge (with the reason). The desired
// state's upgrade order is handed on as it comes (Config.Upgrade: agent/nodeos
// carries it out, with Fetch and Channel.ReleaseFile for the bundle).
//
// What the agent applied lives in the domain definitions themselves (Quantix's
// <metadata>, see Metadata), so an agent restart neither restarts nor reboots a
// guest. Domains without that metadata are unmanaged and never touched; managed
// domains the vDC no longer mentions are left alone, never started.
package vms

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent/internal/backoff"
)

// Config configures a Reconciler.
type Config struct {
	// Channel is the agent channel to the vDC.
	Channel *Channel
	// Libvirt returns the current libvirt connection, nil while there is none
	// (hypervisor.Monitor.Conn).
	Libvirt func() *libvirt.Libvirt
	// Accelerator returns quantix.AccelKVM or quantix.AccelTCG (the probe of
	// agent/hypervisor); anything else is TCG.
	Accelerator func() string
	// ImagesDir is the image cache (default quantix.ImageCacheDir).
	ImagesDir string
	// ConsoleDir holds the guests' serial logs (default quantix.VMConsoleDir).
	ConsoleDir string
	// Pool is the storage pool of VM disks (default quantix.DefaultPool).
	Pool string
	// Bridge is the bridge of NICs on network management (default br0).
	Bridge string
	// Upgrade, when set, receives the upgrade order (nil: none) of every new
	// desired state, also while libvirt is away (agent/nodeos carries it out).
	Upgrade func(*quantix.DesiredUpgrade)
	// HaltMarker is the file that says the host is shutting its guests down
	// (default quantix.GuestsStoppingFile): no guest is started while it exists.
	HaltMarker string

	// Timing; zero values take the defaults in parentheses.
	PollWait     time.Duration // how long a desired long-poll is held (55 s)
	RetryEvery   time.Duration // re-converge while a VM has an error (10 s)
	ResyncEvery  time.Duration // re-converge the last desired state anyway (30 s)
	ConsoleEvery time.Duration // look for new console output (2 s)
	MaxBackoff   time.Duration // the longest wait after a failed fetch (30 s)
}

func (c Config) withDefaults() (Config, error) {
	if c.Channel == nil || c.Libvirt == nil {
		return c, fmt.Errorf("vms: Channel and Libvirt are required")
	}
	if c.Accelerator == nil {
		c.Accelerator = func() string { return quantix.AccelTCG }
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.ImagesDir, quantix.ImageCacheDir)
	def(&c.ConsoleDir, quantix.VMConsoleDir)
	def(&c.Pool, quantix.DefaultPool)
	def(&c.Bridge, "br0")
	def(&c.HaltMarker, quantix.GuestsStoppingFile)
	dur := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	dur(&c.PollWait, 55*time.Second)
	dur(&c.RetryEvery, 10*time.Second)
	dur(&c.ResyncEvery, 30*time.Second)
	dur(&c.ConsoleEvery, 2*time.Second)
	dur(&c.MaxBackoff, 30*time.Second)
	return c, nil
}

// Reconciler converges this node's libvirt to the vDC's desired VMs. Create it
// with New and start Run.
type Reconciler struct {
	cfg   Config
	log   *slog.Logger
	cache *Cache

	kick    chan struct{}      // the heartbeat saw another desired generation
	desired chan desiredUpdate // poller -> converger, newest wins
	changes chan struct{}      // to the agent: applied generation or errors changed

	mu       sync.Mutex
	applied  int64
	hint     int64 // desired generation from the last heartbeat
	seen     int64 // desired generation last fetched
	errs     map[string]vmError
	consoles map[string]*consoleTail

	// Owned by the converger.
	stopping map[string]time.Time // VM UUID -> when a stop turns into a force-off
	left     map[string]bool      // domains the vDC does not mention, looked at once
}

type vmError struct {
	name, reason string
}

type desiredUpdate struct {
	node string
	d    quantix.NodeDesired
}

// New checks cfg and returns a Reconciler.
func New(cfg Config, log *slog.Logger) (*Reconciler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cache := NewCache(cfg.ImagesDir, cfg.Channel)
	return &Reconciler{
		cfg: cfg, log: log, cache: cache,
		kick:     make(chan struct{}, 1),
		desired:  make(chan desiredUpdate, 1),
		changes:  make(chan struct{}, 1),
		errs:     map[string]vmError{},
		consoles: map[string]*consoleTail{},
		stopping: map[string]time.Time{},
		left:     map[string]bool{},
	}, nil
}

// Applied is the desired generation the node last converged to (0 before the
// first).
func (r *Reconciler) Applied() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

// Changes delivers a signal (coalesced) when the applied generation or a VM's
// error changed: the agent then reports its inventory.
func (r *Reconciler) Changes() <-chan struct{} { return r.changes }

func (r *Reconciler) notify() {
	select {
	case r.changes <- struct{}{}:
	default:
	}
}

// Notify tells the reconciler the desired generation a heartbeat answer carried;
// when it is not the one last fetched, the desired state is fetched at once.
func (r *Reconciler) Notify(generation int64) {
	if generation == 0 {
		return // a vDC that does not know desired generations (yet)
	}
	r.mu.Lock()
	r.hint = generation
	stale := generation != r.seen
	r.mu.Unlock()
	if stale {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Interrupt ends the long-poll in flight and fetches again at once, on a new
// connection: the agent calls it when the management address changed, as the
// held connection belongs to the old address.
func (r *Reconciler) Interrupt() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Errors are the managed VMs that could not be converged, by UUID, with the reason.
func (r *Reconciler) Errors() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.errs))
	for id, e := range r.errs {
		out[id] = e.reason
	}
	return out
}

// Annotate adds the reconciler's errors to an inventory: VM.Error on the domains
// that have one, and an entry (power state unknown) for a desired VM that could not
// even be defined, so the vDC shows it as error with the reason rather than pending.
func (r *Reconciler) Annotate(vms []quantix.VM) []quantix.VM {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 {
		return vms
	}
	out := append([]quantix.VM(nil), vms...)
	seen := map[string]bool{}
	for i := range out {
		if e, ok := r.errs[out[i].UUID]; ok {
			out[i].Error = e.reason
			seen[out[i].UUID] = true
		}
	}
	for id, e := range r.errs {
		if !seen[id] {
			out = append(out, quantix.VM{UUID: id, Name: e.name, PowerState: quantix.PowerUnknown, Error: e.reason})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out
}

// Run pulls and converges until ctx ends; it returns nil then. The node keeps
// running what it runs while the vDC or libvirt is away.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); r.poll(ctx) }()
	go func() { defer wg.Done(); r.converger(ctx) }()
	go func() { defer wg.Done(); r.consoleLoop(ctx) }()
	wg.Wait()
	return nil
}

// poll keeps one long-poll on PathDesired open and hands every new generation to
// the converger. A heartbeat hint that differs from what it fetched cuts the wait
// short.
func (r *Reconciler) poll(ctx context.Context) {
	b := backoff.Backoff{Min: time.Second, Max: r.cfg.MaxBackoff}
	lastNode := ""
	var seen int64
	fresh := true
	for ctx.Err() == nil {
		node, changed := r.cfg.Channel.Node()
		if node == "" {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		if node != lastNode {
			lastNode, fresh = node, true
		}
		wait := r.cfg.PollWait
		if fresh {
			wait = 0
		}
		pctx, cancel := context.WithCancel(ctx)
		stopKick := make(chan struct{})
		go func() {
			select {
			case <-r.kick:
				cancel()
			case <-changed:
				cancel()
			case <-stopKick:
			}
		}()
		started := time.Now()
		d, err := r.cfg.Channel.Desired(pctx, seen, wait)
		close(stopKick)
		kicked := pctx.Err() != nil && ctx.Err() == nil
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if kicked {
				fresh = true
				continue
			}
			d := b.Next()
			r.log.Warn("fetching the desired VMs failed; VMs keep their state", "err", err, "retry_in", d.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			continue
		}
		b.Reset()
		unchanged := !fresh && d.Generation == seen
		if !unchanged {
			seen, fresh = d.Generation, false
			r.mu.Lock()
			r.seen = seen
			r.mu.Unlock()
			select {
			case <-r.desired:
			default:
			}
			r.desired <- desiredUpdate{node: node, d: d}
			if r.cfg.Upgrade != nil {
				r.cfg.Upgrade(d.Upgrade)
			}
		}
		r.mu.Lock()
		if r.hint != 0 && r.hint != seen {
			// One fetch per hint: a heartbeat answered before the change the
			// long-poll already brought must not make this loop spin.
			fresh, r.hint = true, 0
		}
		r.mu.Unlock()
		if unchanged && !fresh && time.Since(started) < time.Second {
			// A vDC that answers at once without a change (no long-poll support):
			// ask once a second rather than in a tight loop.
			select {
			case <-ctx.Done():
				return
			case <-r.kick:
				fresh = true
			case <-time.After(time.Second):
			}
		}
	}
}

// converger applies each new desired state, and re-applies the last one while a
// stop waits for its timeout, a VM has an error, libvirt came back, or every
// ResyncEvery.
func (r *Reconciler) converger(ctx context.Context) {
	var cur *desiredUpdate
	var lastLV *libvirt.Libvirt
	var last time.Time
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-r.desired:
			cur = &u
		case <-tick.C:
			if cur == nil {
				continue
			}
			lv := r.cfg.Libvirt()
			r.mu.Lock()
			failing := len(r.errs) > 0
			r.mu.Unlock()
			due := len(r.stopping) > 0 || lv != lastLV || time.Since(last) >= r.cfg.ResyncEvery ||
				(failing && time.Since(last) >= r.cfg.RetryEvery)
			if !due {
				continue
			}
		}
		lv := r.cfg.Libvirt()
		lastLV, last = lv, time.Now()
		if lv == nil {
			continue // the hypervisor is unavailable: the inventory says so
		}
		r.apply(ctx, lv, cur.node, cur.d)
	}
}
