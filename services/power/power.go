// Package power ends the machine: reboot(2) with a restart or a power-off, after
// the consoles have drained. Init halts this way once its services have stopped;
// the installer does when no init is there to ask.
package power

import (
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// DrainConsole waits, at most timeout, until what was written to the terminals
// files has left the machine (tcdrain): reboot(2) right after a log line would
// otherwise cut the line off on a slow serial console. Files that are not
// terminals are skipped.
func DrainConsole(timeout time.Duration, files ...*os.File) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, f := range files {
			_ = unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1) // tcdrain; ENOTTY on a non-terminal
		}
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

// Halt ends the machine: reboot(2) with a restart or power-off.
func Halt(a quantix.HaltAction) error {
	cmd := unix.LINUX_REBOOT_CMD_RESTART
	if a == quantix.Poweroff {
		cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
	}
	unix.Sync()
	return unix.Reboot(cmd)
}
