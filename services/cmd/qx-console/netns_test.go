package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quantix/quantix/services/network"
	"github.com/quantix/quantix/tests/netlab"
	"github.com/quantix/quantix/tests/syncbuf"
)

// The lab, as the network service's own tests build it: a client namespace whose
// eth0 is a veth to gw0 in a far namespace. The far end holds the gateway
// 10.77.0.1 with a DHCP server, a DNS server and the vDC's /healthz; the client
// namespace runs the real network service (in this process, on its namespace) and
// qx-console (ip netns exec), and a stand-in agent status on 127.0.0.1.

const (
	labGateway = netlab.Gateway
	labVDC     = "http://" + netlab.Gateway + ":8080"
)

type lab struct {
	t      *testing.T
	pair   *netlab.Pair
	client string // the client namespace's name
}

func newLab(t *testing.T) *lab {
	t.Helper()
	p := netlab.NewPair(t, "qxcon")
	return &lab{t: t, pair: p, client: p.Client.Name}
}

func (l *lab) addrs() string { return strings.Join(l.pair.Client.Addrs("eth0"), " ") }

func (l *lab) waitAddrs(want string, timeout time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for l.addrs() != want {
		if time.Now().After(deadline) {
			l.t.Fatalf("eth0 holds %q, want %q", l.addrs(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startDHCP serves 10.77.0.100 with router and DNS 10.77.0.1.
func (l *lab) startDHCP() {
	l.pair.StartDHCP(l.t, netlab.DHCPSettings{Lease: time.Hour, DNS: net.ParseIP(labGateway)})
}

// startDNS answers every query on 10.77.0.1:53 with "no such name": enough to
// prove the server answers.
func (l *lab) startDNS() {
	var pc net.PacketConn
	if err := l.pair.Far.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", labGateway+":53")
		return err
	}); err != nil {
		l.t.Fatalf("dns server: %v", err)
	}
	l.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError, RecursionAvailable: true})
			b.StartQuestions()
			b.Question(q)
			out, err := b.Finish()
			if err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
}

// serveHTTP serves mux on addr inside namespace ns.
func (l *lab) serveHTTP(ns *netlab.NS, addr string, mux http.Handler) {
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		l.t.Fatalf("listen %s: %v", addr, err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	l.t.Cleanup(func() { srv.Close() })
}

// TestNetworkDHCPToStatic switches the management network from DHCP to static
// through the screens, against the real network service: a bad gateway is refused
// next to its field with nothing changed; a good one is applied, checked, kept and
// persisted; a change whose gateway does not answer is not kept and rolls back by
// itself. The test screen checks gateway, DNS and vDC.
func TestNetworkDHCPToStatic(t *testing.T) {
	l := newLab(t)
	e := newEnv(t)
	l.startDHCP()
	l.startDNS()
	vdc := http.NewServeMux()
	vdc.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	l.serveHTTP(l.pair.Far, "10.77.0.1:8080", vdc)
	agent := http.NewServeMux()
	agent.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"node_id":"0b7c6a52-1111-4c1e-9d43-5d1f00000001","vdc_url":%q,"state":"registered","registration":{"ok":true,"result":"registered"}}`, labVDC)
	})
	l.serveHTTP(l.pair.Client, "127.0.0.1:9101", agent)

	writeFile(t, e.netConfig, "interface = \"eth0\"\nmode = \"dhcp\"\n")
	cfg := network.Config{
		PersistentPath: e.netConfig,
		SessionPath:    filepath.Join(e.dir, "etc/network.toml"),
		ResolvConf:     filepath.Join(e.dir, "etc/resolv.conf"),
		StateFile:      filepath.Join(e.dir, "run/network.json"),
		Socket:         e.netSocket,
		CmdlinePath:    filepath.Join(e.dir, "cmdline"),
		SysfsRoot:      filepath.Join(e.dir, "sys"),
		NetNS:          l.pair.Client.Path(),
		CheckTimeout:   2 * time.Second,
		Stdout:         io.Discard,
	}
	writeFile(t, cfg.CmdlinePath, "console=ttyS0\n")
	var logBuf syncbuf.Buffer
	svc, err := network.New(cfg, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err != nil {
		t.Fatalf("network.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("network service: %v", err)
		}
		if t.Failed() {
			t.Logf("network service log:\n%s", logBuf.String())
		}
	})
	select {
	case <-svc.Ready():
	case err := <-done:
		t.Fatalf("network service ended: %v\n%s", err, logBuf.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("network service not ready in 20s:\n%s", logBuf.String())
	}
	l.waitAddrs("10.77.0.100/24", 10*time.Second)

	var out bytes.Buffer
	if err := run(context.Background(), []string{"set-password", "--password-file", e.passwordFile},
		strings.NewReader("s3cret-console\n"), &out, &out); err != nil {
		t.Fatalf("set-password: %v", err)
	}
	tm := startConsole(t, startOpts{netns: l.client, uts: true},
		e.args("--agent-url", "http://127.0.0.1:9101", "--confirm-timeout", "8s")...)
	tm.waitFor(10*time.Second, "Interface     eth0 (52:54:00:77:00:10)", "10.77.0.100/24  source dhcp  (mode dhcp)",
		"Gateway       10.77.0.1", "DNS           10.77.0.1", "Open          http://10.77.0.100:9101/status",
		"Registration  registered (registered)", "Node ID       0b7c6a52-1111-4c1e-9d43-5d1f00000001")

	tm.send("t")
	tm.waitFor(10*time.Second, "ok    gateway 10.77.0.1", "ok    dns 10.77.0.1", "answers (reverse of 10.77.0.100: no name)",
		"ok    vdc "+labVDC)
	tm.send(keyEsc)

	tm.send("n")
	tm.waitFor(3*time.Second, "This needs the console password.")
	tm.send("s3cret-console", keyEnter)
	tm.waitFor(5*time.Second, "Management network on interface eth0", "> Mode            (*) DHCP   ( ) Static")
	tm.send(" ")
	tm.waitFor(3*time.Second, "(*) Static")
	tm.send(keyDown, keyClear, "10.77.0.50/24", keyDown, keyClear, "10.78.0.1", keyDown, keyClear, "10.77.0.1", keyDown, keyEnter)
	tm.waitFor(5*time.Second, "! static.gateway: 10.78.0.1 is not inside 10.77.0.0/24")
	text := tm.scr.Text()
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if strings.Contains(line, "! static.gateway") && (i == 0 || !strings.Contains(lines[i-1], "Gateway")) {
			t.Errorf("the gateway error is not next to the gateway field:\n%s", framed(text))
		}
	}
	if got := l.addrs(); got != "10.77.0.100/24" {
		t.Fatalf("a refused form changed the kernel: eth0 holds %q", got)
	}
	tm.send(keyUp, keyUp, keyClear, labGateway)
	tm.waitFor(3*time.Second, "Gateway         [10.77.0.1_]")
	if strings.Contains(tm.scr.Text(), "! static.gateway") {
		t.Errorf("the gateway error stays after the fix:\n%s", framed(tm.scr.Text()))
	}
	tm.send(keyDown, keyDown, keyEnter)
	tm.waitFor(10*time.Second, "The new settings are active.", "10.77.0.50/24  source static", "Reachable     yes")
	l.waitAddrs("10.77.0.50/24", 2*time.Second)
	if s, err := network.Load(e.netConfig); err != nil || s.Mode != network.ModeDHCP {
		t.Fatalf("network.toml changed before confirmation: %+v, %v", s, err)
	}
	tm.send("y")
	tm.waitFor(5*time.Second, "Network settings kept and saved to network.toml.")
	s, err := network.Load(e.netConfig)
	if err != nil {
		t.Fatalf("persisted network.toml: %v", err)
	}
	if s.Mode != network.ModeStatic || s.Static == nil || s.Static.Address != "10.77.0.50/24" || s.Static.Gateway != labGateway ||
		len(s.DNS) != 1 || s.DNS[0] != labGateway || s.Interface != "eth0" {
		b, _ := os.ReadFile(e.netConfig)
		t.Fatalf("persisted network.toml is not the form:\n%s", b)
	}
	tm.waitFor(5*time.Second, "10.77.0.50/24  source static  (mode static)", "Open          http://10.77.0.50:9101/status")

	// A gateway nobody answers for: the check says so, the operator does not keep
	// it, and the service restores the previous settings at once (not at the
	// deadline), verified.
	tm.send("n")
	tm.waitFor(5*time.Second, "Address/prefix  [10.77.0.50/24]")
	tm.send(keyDown, keyDown, keyClear, "10.77.0.254", keyDown, keyDown, keyEnter)
	tm.waitFor(15*time.Second, "The new settings are active.", "Reachable     NO: ")
	st, err := network.Client{Socket: e.netSocket}.Status(context.Background())
	if err != nil || st.Pending == nil || st.Gateway != "10.77.0.254" {
		t.Fatalf("before the answer: %+v, %v; want the new gateway pending", st, err)
	}
	deadline := st.Pending.Deadline
	tm.send("n")
	tm.waitFor(10*time.Second, "Not kept: the previous settings are back (10.77.0.50/24, static).")
	if time.Now().After(deadline) {
		t.Fatalf("the rollback came after the deadline %s: it was not the operator's", deadline.Format(time.RFC3339))
	}
	l.waitAddrs("10.77.0.50/24", time.Second)
	st, err = network.Client{Socket: e.netSocket}.Status(context.Background())
	if err != nil || st.Pending != nil || st.Gateway != labGateway || st.LastRollback == nil || !st.LastRollback.Verified ||
		st.LastRollback.Reason != "rejected by the console" {
		t.Fatalf("after No: %+v (rollback %+v), %v; want the previous gateway back, verified, rejected by the console", st, st.LastRollback, err)
	}
	tm.waitFor(5*time.Second, ": rejected by the console", "Gateway       10.77.0.1")

	// Esc rejects as well.
	tm.send("n")
	tm.waitFor(5*time.Second, "Address/prefix  [10.77.0.50/24]")
	tm.send(keyDown, keyClear, "10.77.0.51/24", keyDown, keyDown, keyDown, keyEnter)
	tm.waitFor(15*time.Second, "The new settings are active.", "10.77.0.51/24  source static")
	tm.send(keyEsc)
	tm.waitFor(10*time.Second, "Not kept: the previous settings are back (10.77.0.50/24, static).")
	l.waitAddrs("10.77.0.50/24", time.Second)
	if s, err := network.Load(e.netConfig); err != nil || s.Static.Gateway != labGateway {
		t.Fatalf("network.toml after the rollback: %+v, %v", s, err)
	}
}
