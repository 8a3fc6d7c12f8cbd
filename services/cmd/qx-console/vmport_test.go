package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/services/initd"
	"github.com/quantix/quantix/tests/vm"
)

// A console configured on a serial port the machine does not have (this VM has
// one UART, ttyS0; Linux still creates /dev/ttyS1) is a configuration error the
// operator sees: qx-console exits 78, init prints a fatal marker naming the port
// and retries slowly, and the console on tty1 runs regardless.
func TestVMSerialConsoleMissingPort(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
	iso := vm.ISO(t, quantix.ImageQuantixOS)
	cfgDisk := filepath.Join(t.TempDir(), "cfg.img")
	if err := build.ConfigDisk(cfgDisk, quantix.LabelConfig, 0, map[string][]byte{
		"hostname":             []byte(vmHostname + "\n"),
		"console/console.toml": []byte(serialConsoleToml(t)), // ttyS1, which this VM lacks
	}); err != nil {
		t.Fatalf("config disk: %v", err)
	}
	m := vm.Start(t, vm.Config{Name: "node-one-uart", ISO: iso, Disks: []vm.Disk{{Path: cfgDisk}},
		NICs: []vm.NIC{{Hub: vm.NewHub(t, vm.HubConfig{})}}})
	defer m.Kill(t)

	_, err := m.AwaitMarker(quantix.MarkerReady, vmBootTimeout, "service", vmSerialService)
	var me *quantix.MarkerError
	if !errors.As(err, &me) || me.Marker.Kind != quantix.MarkerFatal || me.Marker.Get("service") != vmSerialService {
		t.Fatalf("console on a missing serial port: %v, want a fatal marker of %s", err, vmSerialService)
	}
	if want := "open tty /dev/" + vmSerialPort + ": no such terminal on this machine"; !strings.Contains(me.Marker.Get("err"), want) {
		t.Errorf("fatal marker err=%q, want it to say %q", me.Marker.Get("err"), want)
	}
	if len(m.Find(vm.Contains(fmt.Sprintf("init: serial console on /dev/%s at %d baud (from %s)", vmSerialPort, vmSerialBaud, initd.ConsoleConfig)))) == 0 {
		t.Errorf("init did not say it took the serial console from %s", initd.ConsoleConfig)
	}
	// The tty1 console is unaffected.
	deadline := time.Now().Add(vm.ScaleTimeout(time.Minute))
	for len(m.Find(vm.MatchMarker(quantix.MarkerReady, "service", "console-tty1"))) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("console-tty1 not ready while console-serial failed:\n%s", strings.Join(m.Tail(30), "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A configuration error is retried slowly, not in a crash loop.
	time.Sleep(10 * time.Second)
	if n := len(m.Find(vm.MatchMarker(quantix.MarkerFatal, "service", vmSerialService))); n != 1 {
		t.Errorf("%d fatal markers of %s within 10 s, want 1 (retry after %s)", n, vmSerialService, initd.ConfigRetry)
	}
}
