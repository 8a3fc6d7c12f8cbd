// Command qx-test-hang is a fault for the A/B tests, never part of an image: run
// as a service of a deliberately broken release, it stops qx-init with SIGSTOP,
// so that init (and its watchdog pings) hang as a deadlocked init would. Only the
// hardware watchdog that init armed for the trial can end that boot.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	// Let init print the trial's marker first; the stop must hit an armed trial.
	time.Sleep(2 * time.Second)
	stopped := 0
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range cmdlines {
		b, err := os.ReadFile(c)
		argv0, _, _ := strings.Cut(string(b), "\x00")
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(c)))
		if err != nil || filepath.Base(argv0) != "qx-init" || pid <= 1 {
			continue
		}
		fmt.Printf("qx-test-hang: stopping qx-init (pid %d): the trial hangs from here\n", pid)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			fmt.Println("qx-test-hang:", err)
			os.Exit(1)
		}
		stopped++
	}
	if stopped == 0 {
		fmt.Println("qx-test-hang: no qx-init process found")
		os.Exit(1)
	}
	for {
		time.Sleep(time.Hour)
	}
}
