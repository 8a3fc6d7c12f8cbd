package initd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A trial boot arms the machine's hardware watchdog (docs/design.md §16): a
// release that hangs, in the kernel or in init, before its trial is judged is
// reset by the watchdog, GRUB counts the try, and once the tries are used up the
// other slot boots. Init pings it while it runs and the trial is within its
// deadline; after the verdict it is disarmed (good) or left to fire (failed, in
// case the reboot hangs too). Machines without a watchdog boot their trials
// without one, and say so.
const (
	// WatchdogDevice is the first watchdog the kernel registered (i6300esb in
	// the lab, iTCO_wdt or sp5100_tco on most x86 boards).
	WatchdogDevice = "/dev/watchdog"
	// WatchdogTimeout is how long a hung trial runs before the reset.
	WatchdogTimeout = 30 * time.Second
	watchdogPing    = 10 * time.Second
)

// Watchdog is an open, armed hardware watchdog.
type Watchdog struct {
	f        *os.File
	Identity string
	Timeout  time.Duration
}

// ArmWatchdog opens the watchdog at path (which starts it) and sets its timeout.
func ArmWatchdog(path string, timeout time.Duration) (*Watchdog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("watchdog: %w", err)
	}
	w := &Watchdog{f: f, Timeout: timeout}
	fd := int(f.Fd())
	if info, err := unix.IoctlGetWatchdogInfo(fd); err == nil {
		w.Identity = string(bytes.TrimRight(info.Identity[:], "\x00"))
	}
	secs := int(timeout / time.Second)
	if err := unix.IoctlSetPointerInt(fd, unix.WDIOC_SETTIMEOUT, secs); err != nil {
		// Some drivers cannot take every value: keep theirs and say so.
		if got, gerr := unix.IoctlGetInt(fd, unix.WDIOC_GETTIMEOUT); gerr == nil {
			w.Timeout = time.Duration(got) * time.Second
		}
		return w, fmt.Errorf("watchdog %s: set timeout %d s: %w (it stays at %v)", w.Identity, secs, err, w.Timeout)
	}
	if got, err := unix.IoctlGetInt(fd, unix.WDIOC_GETTIMEOUT); err == nil {
		w.Timeout = time.Duration(got) * time.Second
	}
	return w, nil
}

// Ping restarts the watchdog's countdown.
func (w *Watchdog) Ping() error { return unix.IoctlWatchdogKeepalive(int(w.f.Fd())) }

// Disarm stops the watchdog (the magic close: "V", then close). A driver built
// with nowayout keeps running: Disarm then returns an error, and the caller must
// keep pinging.
func (w *Watchdog) Disarm() error {
	if _, err := w.f.Write([]byte("V")); err != nil {
		w.f.Close()
		return fmt.Errorf("watchdog %s: magic close: %w", w.Identity, err)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("watchdog %s: close: %w", w.Identity, err)
	}
	if nowayout(w.Identity) {
		return fmt.Errorf("watchdog %s runs with nowayout: it cannot be stopped", w.Identity)
	}
	return nil
}

// Abandon closes the watchdog without the magic character: it fires at its
// timeout unless the machine reboots first.
func (w *Watchdog) Abandon() { w.f.Close() }

// nowayout reports whether the first watchdog says it cannot be stopped.
func nowayout(string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/class/watchdog/watchdog0", "nowayout"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// guard pings w every watchdogPing until stop is closed or until is reached
// (a trial that has not been judged by then is hung: the watchdog resets it).
func (w *Watchdog) guard(stop <-chan struct{}, until time.Time, clock Clock) {
	for {
		if !clock.Now().Before(until) {
			return
		}
		_ = w.Ping()
		select {
		case <-stop:
			return
		case <-clock.After(watchdogPing):
		}
	}
}
