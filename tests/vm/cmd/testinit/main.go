// Command testinit is the /init of the lab's self-test initramfs (vm.TestInitramfs):
// a tiny PID 1 that prints Quantix console markers so the lab can be tested end to end
// without the product images. Kernel command line parameters choose what it does:
//
//	vmtest.action=panic   exit PID 1, which makes the kernel panic
//	vmtest.action=fatal   print a `QUANTIX: fatal` marker
//	vmtest.net=dhcp       DHCP on every ethernet interface, print each lease as a
//	                      `QUANTIX: ready service=vmtest-net` marker and configure it
//	vmtest.ping=<ip>      ping <ip> every 500 ms, print `QUANTIX: vmtest-ping` when
//	                      reachability changes
//	vmtest.http=<port>    serve HTTP on <port> (for forwarded-port tests)
//	vmtest.disks=<n>      wait up to 20 s for n disks and print them as a
//	                      `QUANTIX: vmtest-disks` marker
//
// It loads the modules listed in /lib/modules/load.order first and powers off when the
// ACPI power button is pressed (QMP system_powerdown).
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/quantix/quantix"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

const service = "vmtest"

func main() {
	out := &syncWriter{w: os.Stdout}
	if err := run(context.Background(), out); err != nil {
		fmt.Fprintln(out, quantix.FatalMarker(service, err))
	}
	// PID 1 never exits: that would panic the kernel.
	select {}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func run(ctx context.Context, out io.Writer) error {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	fmt.Fprintln(out, quantix.BootMarker("vmtest", quantix.Version))
	cmdline, err := quantix.ReadCmdline()
	if err != nil {
		return err
	}
	loadModules(out)

	switch action, _ := cmdline.Get("vmtest.action"); action {
	case "":
	case "panic":
		fmt.Fprintln(out, quantix.WarningMarker(service, "exiting PID 1 on request"))
		os.Exit(3)
	case "fatal":
		fmt.Fprintln(out, quantix.FatalMarker(service, errors.New("requested by vmtest.action=fatal")))
	default:
		return fmt.Errorf("vmtest.action=%s: unknown (want panic or fatal)", action)
	}
	go watchPowerButton(out)

	var wg sync.WaitGroup
	if mode, ok := cmdline.Get("vmtest.net"); ok {
		if mode != "dhcp" {
			return fmt.Errorf("vmtest.net=%s: unknown (want dhcp)", mode)
		}
		links, err := ethernetLinks()
		if err != nil {
			return err
		}
		for _, l := range links {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dhcp(ctx, out, l)
			}()
		}
	}
	if p, ok := cmdline.Get("vmtest.http"); ok {
		port, err := strconv.Atoi(p)
		if err != nil {
			return fmt.Errorf("vmtest.http=%s: not a port", p)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return fmt.Errorf("listen on port %d: %w", port, err)
		}
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "quantix vmtest %s\n", r.URL.Path)
		}))
		fmt.Fprintln(out, quantix.ReadyMarker("vmtest-http", "port", p))
	}
	if v, ok := cmdline.Get("vmtest.disks"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("vmtest.disks=%s: not a number", v)
		}
		fmt.Fprintln(out, quantix.FormatMarker("vmtest-disks", "names", strings.Join(disks(n), ",")))
	}
	wg.Wait()
	if addr, ok := cmdline.Get("vmtest.ping"); ok {
		ip := net.ParseIP(addr).To4()
		if ip == nil {
			return fmt.Errorf("vmtest.ping=%s: not an IPv4 address", addr)
		}
		go ping(out, ip)
	}
	fmt.Fprintln(out, quantix.BootCompleteMarker(uptime()))
	return nil
}

func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

// disks waits up to 20 s for n disks (virtio, IDE/SCSI) and returns their names.
func disks(n int) []string {
	deadline := time.Now().Add(20 * time.Second)
	for {
		var names []string
		entries, _ := os.ReadDir("/sys/block")
		for _, e := range entries {
			if name := e.Name(); strings.HasPrefix(name, "vd") || strings.HasPrefix(name, "sd") {
				names = append(names, name)
			}
		}
		if len(names) >= n || time.Now().After(deadline) {
			return names
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loadModules loads /lib/modules/load.order, dependencies first (the lab wrote it so).
func loadModules(out io.Writer) {
	b, err := os.ReadFile("/lib/modules/load.order")
	if err != nil {
		return
	}
	for _, name := range strings.Fields(string(b)) {
		p := filepath.Join("/lib/modules", name)
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(out, quantix.WarningMarker(service, err.Error()))
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			fmt.Fprintln(out, quantix.WarningMarker(service, fmt.Sprintf("load %s: %v", name, err)))
		}
	}
}

// ethernetLinks brings up lo and returns the ethernet interfaces, waiting a little
// for the drivers to create them.
func ethernetLinks() ([]netlink.Link, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		all, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		var eth []netlink.Link
		for _, l := range all {
			if l.Type() == "device" && len(l.Attrs().HardwareAddr) == 6 {
				eth = append(eth, l)
			}
		}
		if len(eth) > 0 || time.Now().After(deadline) {
			if len(eth) == 0 {
				return nil, errors.New("no ethernet interface appeared within 10s")
			}
			return eth, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dhcp gets a lease on l, retrying until one comes, and configures it.
func dhcp(ctx context.Context, out io.Writer, l netlink.Link) {
	name := l.Attrs().Name
	if err := netlink.LinkSetUp(l); err != nil {
		fmt.Fprintln(out, quantix.WarningMarker(service, fmt.Sprintf("link %s up: %v", name, err)))
		return
	}
	for {
		lease, err := requestLease(ctx, name)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		ack := lease.ACK
		ones, _ := ack.SubnetMask().Size()
		if ones == 0 {
			ones = 24
		}
		prefix := &net.IPNet{IP: ack.YourIPAddr, Mask: net.CIDRMask(ones, 32)}
		if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: prefix}); err != nil {
			fmt.Fprintln(out, quantix.WarningMarker(service, fmt.Sprintf("address %s on %s: %v", prefix, name, err)))
			return
		}
		gw := ""
		if r := ack.Router(); len(r) > 0 {
			gw = r[0].String()
		}
		fmt.Fprintln(out, quantix.ReadyMarker("vmtest-net", "iface", name,
			"mac", l.Attrs().HardwareAddr.String(), "addr", fmt.Sprintf("%s/%d", ack.YourIPAddr, ones),
			"gateway", gw, "server", ack.ServerIdentifier().String(), "source", "dhcp"))
		return
	}
}

func requestLease(ctx context.Context, iface string) (*nclient4.Lease, error) {
	c, err := nclient4.New(iface, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(1))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Request(ctx)
}

// ping sends an echo request every 500 ms and prints a marker when reachability
// changes (three lost replies in a row count as unreachable).
func ping(out io.Writer, dst net.IP) {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		fmt.Fprintln(out, quantix.WarningMarker(service, fmt.Sprintf("ping socket: %v", err)))
		return
	}
	reachable, lost := "", 0
	for seq := 1; ; seq++ {
		start := time.Now()
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x5178, Seq: seq & 0xffff, Data: []byte("quantix")}}
		b, _ := msg.Marshal(nil)
		ok := false
		if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst}); err == nil {
			ok = awaitEcho(conn, dst, seq, start.Add(time.Second))
		}
		now := reachable
		if ok {
			lost, now = 0, "true"
		} else if lost++; lost >= 3 {
			now = "false"
		}
		if now != reachable {
			reachable = now
			fmt.Fprintln(out, quantix.FormatMarker("vmtest-ping", "addr", dst.String(), "reachable", now))
		}
		time.Sleep(time.Until(start.Add(500 * time.Millisecond)))
	}
}

func awaitEcho(conn *icmp.PacketConn, dst net.IP, seq int, deadline time.Time) bool {
	buf := make([]byte, 1500)
	for {
		conn.SetReadDeadline(deadline)
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return false
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq&0xffff && from.(*net.IPAddr).IP.Equal(dst) {
			return true
		}
	}
}

// watchPowerButton powers off when an input device reports KEY_POWER (the ACPI power
// button that QMP system_powerdown presses).
func watchPowerButton(out io.Writer) {
	const evKey, keyPower = 1, 116
	seen := map[string]bool{}
	pressed := make(chan struct{}, 1)
	for {
		devs, _ := filepath.Glob("/dev/input/event*")
		for _, d := range devs {
			if seen[d] {
				continue
			}
			seen[d] = true
			go func() {
				f, err := os.Open(d)
				if err != nil {
					return
				}
				defer f.Close()
				var ev [24]byte // struct input_event on 64-bit: timeval, type, code, value
				for {
					if _, err := io.ReadFull(f, ev[:]); err != nil {
						return
					}
					typ := binary.LittleEndian.Uint16(ev[16:])
					code := binary.LittleEndian.Uint16(ev[18:])
					value := int32(binary.LittleEndian.Uint32(ev[20:]))
					if typ == evKey && code == keyPower && value == 1 {
						select {
						case pressed <- struct{}{}:
						default:
						}
					}
				}
			}()
		}
		select {
		case <-pressed:
			fmt.Fprintln(out, quantix.FormatMarker("vmtest-power", "button", "pressed"))
			unix.Sync()
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		case <-time.After(time.Second):
		}
	}
}
