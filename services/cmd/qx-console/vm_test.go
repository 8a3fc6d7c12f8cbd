package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/build"
	"github.com/quantix/quantix/images/spec"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/services/console/vt"
	"github.com/quantix/quantix/tests/vm"
)

// The VM test boots Quantix OS (images/quantix-os.toml, with the network service
// and the console added as services, as the image will have them) under QEMU with
// the console on a second serial port, and drives it like an operator at a serial
// terminal: DHCP -> static through the screens, then a reboot through the power
// screen (init stops everything and reboots), and the static address is back from
// QUANTIX-CFG. The vDC part of the VM test (the new address seen at the
// vDC) needs the agent in the image too; see the report.

const vmBootTimeout = 4 * time.Minute

// consoleImage writes an image definition: quantix-os.toml plus qx-net and
// qx-console, run by init as services.
func consoleImage(t *testing.T, repo, dir string) string {
	img, err := spec.Load(filepath.Join(repo, "images", quantix.ImageQuantixOS+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	// qx-net's netlink library opens XFRM and NETFILTER sockets besides ROUTE, and
	// the Debian kernel has those as modules: without them in the image it fails
	// with "open netlink: protocol not supported". The kernel loads them on demand
	// through init's modprobe when they are in the image.
	img.Kernel.LateModules = appendMissing(img.Kernel.LateModules, "xfrm_user", "nfnetlink")
	img.Initramfs.Commands = appendMissing(img.Initramfs.Commands, "./services/cmd/qx-net", "./services/cmd/qx-console")
	img.Services = []spec.Service{
		{Name: "network", Command: "/bbin/qx-net", Args: []string{"serve"}},
		{Name: "console-serial", Command: "/bbin/qx-console", Args: []string{"--name", "console-serial", "--tty", "/dev/ttyS1", "--baud", "115200"}, Ready: spec.ReadyMarker},
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(img); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, quantix.ImageQuantixOS+".toml")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func appendMissing(list []string, add ...string) []string {
	for _, a := range add {
		found := false
		for _, l := range list {
			found = found || l == a
		}
		if !found {
			list = append(list, a)
		}
	}
	return list
}

// serialTerm is the console's second serial port, as a VT100 on a unix socket.
type serialTerm struct {
	conn net.Conn
	scr  *vt.Screen
}

func dialSerial(t *testing.T, path string) *serialTerm {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			st := &serialTerm{conn: c, scr: vt.New(24, 80)}
			go io.Copy(st.scr, c)
			t.Cleanup(func() { c.Close() })
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("serial socket %s: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *serialTerm) send(t *testing.T, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, err := s.conn.Write([]byte(k)); err != nil {
			t.Fatalf("serial write: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
		if k == keyEsc || k == "\x0c" {
			time.Sleep(300 * time.Millisecond)
		}
	}
}

func (s *serialTerm) waitFor(t *testing.T, m *vm.Machine, timeout time.Duration, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		text := s.scr.Text()
		missing := ""
		for _, w := range want {
			if !strings.Contains(text, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return text
		}
		if time.Now().After(deadline) {
			t.Fatalf("serial console does not show %q after %s:\n%s\nlast console lines:\n%s", missing, timeout, framed(text), strings.Join(m.Tail(30), "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readyNetwork waits for the ready markers of the network and the console, in
// either order, and returns the network's.
func readyNetwork(t *testing.T, m *vm.Machine) quantix.Marker {
	t.Helper()
	lines := m.ExpectAll(t, vmBootTimeout, vm.Contains("QUANTIX: ready service=network "), vm.Contains("QUANTIX: ready service=console-serial "))
	mk, ok := quantix.ParseMarker(lines[0])
	if !ok {
		t.Fatalf("bad marker %q", lines[0])
	}
	return mk
}

// redraw presses Ctrl-L until the screen shows want, as an operator who plugs in
// a serial cable while the console runs does: what was drawn before is lost.
func (s *serialTerm) redraw(t *testing.T, m *vm.Machine, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s.send(t, "\x0c")
		text := s.scr.Text()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(text, w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			s.waitFor(t, m, 0, want...)
		}
		time.Sleep(2 * time.Second)
	}
}

func TestVMSerialConsoleStaticPersists(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
	repo, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	specPath := consoleImage(t, repo, dir)
	b, err := build.New(build.Config{Spec: specPath, Repo: repo, OutDir: filepath.Join(dir, "out")}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t0 := time.Now()
	res, err := b.Build(context.Background())
	if err != nil {
		t.Fatalf("build the image: %v", err)
	}
	t.Logf("image built in %s", time.Since(t0).Round(time.Second))

	hash, err := console.HashPassword("s3cret-console")
	if err != nil {
		t.Fatal(err)
	}
	cfgDisk := filepath.Join(dir, "cfg.img")
	if err := build.ConfigDisk(cfgDisk, quantix.LabelConfig, 0, map[string][]byte{
		"console/password": []byte(hash + "\n"), // as the installer sets it
	}); err != nil {
		t.Fatal(err)
	}
	hub := vm.NewHub(t, vm.HubConfig{})
	serial := filepath.Join(dir, "ttyS1.sock")
	m := vm.Start(t, vm.Config{
		Name: "console", ISO: res.ISO, Disks: []vm.Disk{{Path: cfgDisk}}, NICs: []vm.NIC{{Hub: hub}},
		AllowReboot: true,
		ExtraArgs:   []string{"-chardev", "socket,id=ttyS1,path=" + serial + ",server=on,wait=off", "-serial", "chardev:ttyS1"},
	})
	mk := readyNetwork(t, m)
	if mk.Get("source") != "dhcp" {
		t.Fatalf("network ready with %s, want a DHCP lease", mk)
	}
	lease := mk.Get("addr")
	st := dialSerial(t, serial)
	st.redraw(t, m, time.Minute, lease+"  source dhcp", "[locked]")

	subnet := hub.Config().Subnet
	gw := hub.Gateway().String()
	static := subnet.Addr().Next().Next().Next().Next().String() // .4
	prefix := fmt.Sprintf("%s/%d", static, subnet.Bits())

	st.send(t, "n")
	st.waitFor(t, m, 30*time.Second, "This needs the console password.")
	st.send(t, "s3cret-console", keyEnter)
	st.waitFor(t, m, time.Minute, "Management network on interface", "> Mode            (*) DHCP")

	// Key press to screen update over the serial line under emulation.
	var lat []time.Duration
	for i := 0; i < 20; i++ {
		t1 := time.Now()
		st.send(t, " ")
		st.waitFor(t, m, 30*time.Second, "> Mode            "+map[bool]string{true: "( ) DHCP   (*) Static", false: "(*) DHCP   ( ) Static"}[i%2 == 0])
		lat = append(lat, time.Since(t1))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("key press to screen update over ttyS1 under %s: p50 %s, max %s (20 presses)", m.Accel(), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))

	st.send(t, " ") // static
	// Arrow keys: escape sequences that a slow serial line splits across reads
	// must still be recognised (seqReader).
	st.send(t, keyDown, keyClear, prefix, keyDown, keyClear, gw, keyDown, keyClear, keyDown, keyEnter)
	st.waitFor(t, m, 2*time.Minute, "The new settings are active.", prefix+"  source static", "Reachable     yes")
	st.send(t, "y")
	st.waitFor(t, m, time.Minute, "Network settings kept and saved to network.toml.")
	st.waitFor(t, m, 30*time.Second, prefix+"  source static  (mode static)")

	// Reboot through the power screen: init stops the services and reboots.
	st.send(t, "p", "r")
	st.waitFor(t, m, 30*time.Second, "Really reboot this machine now?")
	st.send(t, "y")
	m.ExpectAll(t, 2*time.Minute, vm.Contains("stopping services"), vm.Contains("action=reboot"))
	m.Expect(t, "QUANTIX: boot image=", vmBootTimeout)
	mk = readyNetwork(t, m)
	if mk.Get("addr") != prefix || mk.Get("source") != "static" {
		t.Fatalf("after reboot the network is %s, want %s static", mk, prefix)
	}
	st.redraw(t, m, time.Minute, prefix+"  source static  (mode static)", "[locked]")
}
