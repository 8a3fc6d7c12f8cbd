// Command qx-test-hang is a fault for the A/B tests, never part of an image: run
// as a service of a deliberately broken release, it stops qx-init with SIGSTOP,
// so that init (and its watchdog pings) hang as a deadlocked init would. Only the
// hardware watchdog that init armed for the trial can end that boot.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	// Let init print the trial's marker first; the stop must hit an armed trial.
	time.Sleep(2 * time.Second)
	// Its parent is the supervisor in qx-init (u-root's init, pid 1, runs it as
	// /bin/uinit).
	pid := os.Getppid()
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv0, _, _ := strings.Cut(string(b), "\x00")
	if pid <= 1 || (filepath.Base(argv0) != "qx-init" && filepath.Base(argv0) != "uinit") {
		fmt.Printf("qx-test-hang: parent %d is %q, not qx-init\n", pid, argv0)
		os.Exit(1)
	}
	fmt.Printf("qx-test-hang: stopping qx-init (pid %d): the trial hangs from here\n", pid)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		fmt.Println("qx-test-hang:", err)
		os.Exit(1)
	}
	for {
		time.Sleep(time.Hour)
	}
}
