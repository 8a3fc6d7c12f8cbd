package network

import (
	"context"
	"github.com/quantix/quantix/tests/netlab"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// serveLab starts the service the way qx-net serve does: settings from the
// persistent file, which is copied to the session path.
func serveLab(t *testing.T, l *lab, persistent string) (*running, Config, Client) {
	t.Helper()
	cfg := l.config()
	writeFile(t, cfg.PersistentPath, persistent)
	r := l.run(cfg)
	return r, cfg, Client{Socket: cfg.Socket}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestStaticDHCPStatic switches static -> DHCP -> static through safe apply with
// immediate commit and checks that nothing of the previous mode is left.
func TestStaticDHCPStatic(t *testing.T) {
	l := newLab(t)
	srv := l.startDHCP(30 * time.Second)
	r, cfg, c := serveLab(t, l, staticToml)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	if s, err := os.ReadFile(cfg.SessionPath); err != nil || string(s) != staticToml {
		t.Fatalf("session copy = %q, %v; want the persistent file", s, err)
	}

	res, err := c.Apply(ctxT(t, 20*time.Second), "dhcp.toml", []byte(dhcpToml), 0, "")
	if err != nil || !res.Committed || !res.GatewayReachable {
		t.Fatalf("Apply(dhcp) = %+v, %v; want committed with the gateway reachable", res, err)
	}
	lease := res.Status.Address
	if res.Status.Source != SourceDHCP || lease == "10.77.0.5/24" {
		t.Fatalf("after apply: source %s address %s, want a DHCP lease", res.Status.Source, lease)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{lease}) {
		t.Errorf("eth0 addresses = %q, want only %s (no stale static address)", got, lease)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	if p, _ := os.ReadFile(cfg.PersistentPath); string(p) != dhcpToml {
		t.Errorf("persistent file = %q, want the committed dhcp config", p)
	}

	static2 := strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.6/24", 1)
	res, err = c.Apply(ctxT(t, 20*time.Second), "static2.toml", []byte(static2), 0, "")
	if err != nil || !res.Committed {
		t.Fatalf("Apply(static) = %+v, %v", res, err)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{"10.77.0.6/24"}) {
		t.Errorf("eth0 addresses = %q, want only 10.77.0.6/24 (no stale lease)", got)
	}
	if got, want := l.defaults(), []string{"via 10.77.0.1 dev eth0"}; !slices.Equal(got, want) {
		t.Errorf("default routes = %q, want %q", got, want)
	}
	// DHCP is stopped: the server hears nothing more from us.
	n := len(srv.Requests())
	time.Sleep(2500 * time.Millisecond)
	if got := srv.Requests(); len(got) != n {
		t.Errorf("DHCP still talking after switching to static: %q", got[n:])
	}
	if st := r.s.Status(); st.DHCP != nil || st.Source != SourceStatic {
		t.Errorf("status after static = %+v", st)
	}
}

// TestApplyRollback applies a config whose gateway does not answer: the apply
// reports it, nothing is persisted, and after the confirm timeout the last good
// config is back and verified.
func TestApplyRollback(t *testing.T) {
	l := newLab(t)
	r, cfg, c := serveLab(t, l, staticToml)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	before := l.kernelState()
	resolvBefore, _ := os.ReadFile(cfg.ResolvConf)

	broken := strings.Replace(staticToml, `gateway = "10.77.0.1"`, `gateway = "10.77.0.254"`, 1)
	broken = strings.Replace(broken, "10.77.0.5/24", "10.77.0.7/24", 1)
	start := time.Now()
	res, err := c.Apply(ctxT(t, 20*time.Second), "broken.toml", []byte(broken), 3*time.Second, "")
	if err != nil {
		t.Fatalf("Apply(broken) = %v; want applied and pending", err)
	}
	if !res.Applied || res.GatewayReachable || !strings.Contains(res.CheckError, "gateway 10.77.0.254 unreachable") {
		t.Fatalf("Apply(broken) = %+v; want applied with the unreachable gateway named", res)
	}
	if p := res.Status.Pending; p == nil || !p.Checked || p.GatewayReachable {
		t.Errorf("pending = %+v", p)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{"10.77.0.7/24"}) {
		t.Errorf("while pending: eth0 = %q, want the new address", got)
	}
	st := waitStatus(t, r.s, 8*time.Second, "rollback verified", func(st Status) bool {
		return st.LastRollback != nil && st.LastRollback.Done
	})
	if took := time.Since(start); took < 3*time.Second {
		t.Errorf("rolled back after %s, before the 3s confirm timeout", took)
	}
	if rb := st.LastRollback; !rb.Verified || !strings.Contains(rb.Reason, "not confirmed within 3s") {
		t.Errorf("rollback = %+v, want verified, reason naming the timeout", rb)
	}
	if after := l.kernelState(); after != before {
		t.Errorf("kernel state after rollback:\n%s\nwant as before:\n%s", after, before)
	}
	if r, _ := os.ReadFile(cfg.ResolvConf); string(r) != string(resolvBefore) {
		t.Errorf("resolv.conf after rollback = %q, want %q", r, resolvBefore)
	}
	if p, _ := os.ReadFile(cfg.PersistentPath); string(p) != staticToml {
		t.Errorf("persistent file changed by an unconfirmed apply: %q", p)
	}
	if st.Pending != nil || st.Address != "10.77.0.5/24" {
		t.Errorf("status after rollback = %+v", st)
	}
	// A second marker was printed for the rollback's address? It is the same address
	// and source as before the apply, but it came back: the marker says so.
	r.waitMarker(t, SourceStatic, time.Second)

	// A good change, confirmed, is persisted atomically.
	good := strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.8/24", 1)
	res, err = c.Apply(ctxT(t, 20*time.Second), "good.toml", []byte(good), time.Minute, "")
	if err != nil || !res.GatewayReachable || res.Committed {
		t.Fatalf("Apply(good) = %+v, %v; want reachable and pending", res, err)
	}
	if _, err := c.Apply(ctxT(t, 5*time.Second), "other.toml", []byte(staticToml), time.Minute, ""); err == nil || !strings.Contains(err.Error(), "waits for confirmation") {
		t.Errorf("second Apply while pending = %v, want refused", err)
	}
	if _, err := c.Confirm(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Confirm: %v", err)
	}
	for _, p := range []string{cfg.PersistentPath, cfg.SessionPath} {
		if b, _ := os.ReadFile(p); string(b) != good {
			t.Errorf("%s = %q, want the confirmed config", p, b)
		}
	}
	if _, err := c.Confirm(ctxT(t, 5*time.Second)); err == nil {
		t.Errorf("Confirm with nothing pending succeeded")
	}
}

// TestApplyImmediateRollback: with confirm timeout 0 a failing check rolls back at
// once.
func TestApplyImmediateRollback(t *testing.T) {
	l := newLab(t)
	r, _, c := serveLab(t, l, staticToml)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	before := l.kernelState()
	broken := strings.Replace(staticToml, `gateway = "10.77.0.1"`, `gateway = "10.77.0.254"`, 1)
	res, err := c.Apply(ctxT(t, 20*time.Second), "broken.toml", []byte(broken), 0, "")
	if err == nil || !res.RolledBack || !strings.Contains(err.Error(), "10.77.0.254 unreachable") {
		t.Fatalf("Apply = %+v, %v; want rolled back naming the gateway", res, err)
	}
	waitStatus(t, r.s, 5*time.Second, "rollback verified", func(st Status) bool {
		return st.LastRollback != nil && st.LastRollback.Done && st.LastRollback.Verified
	})
	if after := l.kernelState(); after != before {
		t.Errorf("kernel state after rollback:\n%s\nwant:\n%s", after, before)
	}
}

// TestApplyRefusesBadConfig: every invalid config is refused before anything is
// touched, with a message naming the file, the key and the problem.
func TestApplyRefusesBadConfig(t *testing.T) {
	l := newLab(t)
	netlab.IP(t, "-n", l.client, "link", "add", "side0", "type", "veth", "peer", "name", "side1")
	r, cfg, c := serveLab(t, l, staticToml)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	before := l.kernelState()
	resolvBefore, _ := os.ReadFile(cfg.ResolvConf)
	tests := []struct {
		name, toml string
		want       []string
	}{
		{"bad-cidr", strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.5/33", 1), []string{"bad-cidr.toml:6", "static.address", "10.77.0.5/33"}},
		{"gateway-outside", strings.Replace(staticToml, `"10.77.0.1"`, `"10.78.0.1"`, 1), []string{"gateway-outside.toml:7", "static.gateway", "10.78.0.1 is not inside 10.77.0.0/24"}},
		{"unknown-interface", strings.Replace(staticToml, `"eth0"`, `"eth7"`, 1), []string{"unknown-interface.toml:1", "interface", "eth7"}},
		{"unknown-key", staticToml + "mtu = 1500\n", []string{"unknown-key.toml", "unknown key", "static.mtu"}},
		{"bad-timeout", dhcpToml + "", []string{}},
		{"fallback-static-without-static", "interface = \"eth0\"\n[dhcp]\nfallback = \"static\"\n", []string{"fallback-static-without-static.toml:3", "dhcp.fallback", "[static]"}},
		{"bad-mode", strings.Replace(staticToml, `"static"`, `"manual"`, 1), []string{"bad-mode.toml:2", "mode", "manual"}},
		{"bridge-invalid-name", withBridge("br/0"), []string{"bridge-invalid-name.toml:2", "bridge", `"br/0"`}},
		{"bridge-too-long", withBridge("bridge-too-long0"), []string{"bridge-too-long.toml:2", "bridge", "longer than 15"}},
		{"bridge-is-the-nic", withBridge("eth0"), []string{"bridge-is-the-nic.toml:2", "bridge", "is the interface itself"}},
		{"bridge-is-the-nic-by-mac", strings.Replace(withBridge("eth0"), `"eth0"`, `"`+labMAC+`"`, 1), []string{"bridge-is-the-nic-by-mac.toml:2", "bridge", "is the interface itself"}},
		{"bridge-not-a-bridge", withBridge("side0"), []string{"bridge-not-a-bridge.toml:2", "bridge", "side0 exists and is a veth"}},
	}
	tests[4].toml = strings.Replace(dhcpToml, `"3s"`, `"ten seconds"`, 1)
	tests[4].want = []string{"bad-timeout.toml:5", "dhcp.timeout", "ten seconds"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Apply(ctxT(t, 10*time.Second), tc.name+".toml", []byte(tc.toml), 0, "")
			if err == nil {
				t.Fatalf("Apply(%s) succeeded, want refused", tc.name)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Apply(%s) = %q, want it to name %q", tc.name, err, w)
				}
			}
			if after := l.kernelState(); after != before {
				t.Errorf("kernel state changed by a refused config:\n%s\nwant:\n%s", after, before)
			}
		})
	}
	if b, _ := os.ReadFile(cfg.ResolvConf); string(b) != string(resolvBefore) {
		t.Errorf("resolv.conf changed by refused configs")
	}
	if l.linkExists("br0") {
		t.Errorf("a refused config made a bridge")
	}
	if b, _ := os.ReadFile(cfg.PersistentPath); string(b) != staticToml {
		t.Errorf("persistent file changed by refused configs: %q", b)
	}
	if st := r.s.Status(); st.Pending != nil || st.LastRollback != nil || st.Address != "10.77.0.5/24" {
		t.Errorf("status after refused configs = %+v", st)
	}
}

// TestStartWithBadPersistentFile: the service refuses to start on an invalid
// network.toml (EX_CONFIG in qx-net) and touches nothing.
func TestStartWithBadPersistentFile(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	writeFile(t, cfg.PersistentPath, "mode = \"dhcp\"\nbogus = 1\n")
	before := l.kernelState()
	s, err := New(cfg, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(ctxT(t, 5*time.Second))
	if err == nil || !strings.Contains(err.Error(), "network.toml:2") || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("Run = %v, want quantix.ErrConfig naming network.toml:2 and the key", err)
	}
	if after := l.kernelState(); after != before {
		t.Errorf("kernel state changed:\n%s\nwant:\n%s", after, before)
	}
	if _, err := os.Stat(cfg.SessionPath); !os.IsNotExist(err) {
		t.Errorf("session copy made of an invalid file: %v", err)
	}
}

// TestApplyProbeURL: besides the gateway, a probe URL (the vDC on nodes) must
// answer, reached from inside the managed namespace.
func TestApplyProbeURL(t *testing.T) {
	l := newLab(t)
	var ln net.Listener
	if err := l.inFar(func() (err error) {
		ln, err = net.Listen("tcp4", labGateway+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	hits := make(chan string, 10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- r.URL.Path
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	r, _, c := serveLab(t, l, staticToml)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	moved := strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.6/24", 1)
	res, err := c.Apply(ctxT(t, 10*time.Second), "probe.toml", []byte(moved), 0, "http://"+labGateway+":8080/healthz")
	if err != nil || !res.Committed {
		t.Fatalf("Apply with a live probe URL = %+v, %v", res, err)
	}
	if got := <-hits; got != "/healthz" {
		t.Errorf("probe hit %q", got)
	}
	res, err = c.Apply(ctxT(t, 10*time.Second), "probe.toml", []byte(staticToml), 0, "http://"+labGateway+":8081/")
	if err == nil || !res.RolledBack || !strings.Contains(err.Error(), "probe http://10.77.0.1:8081/") {
		t.Fatalf("Apply with a dead probe URL = %+v, %v; want rolled back naming the probe", res, err)
	}
	waitStatus(t, r.s, 5*time.Second, "rollback verified", func(st Status) bool {
		return st.LastRollback != nil && st.LastRollback.Done && st.LastRollback.Verified && st.Address == "10.77.0.6/24"
	})
}

// TestApplyRejectedRollsBackNow: the operator rejects a pending change (the
// console's "No", qx-net rollback): the last good settings come back at once, long
// before the confirm deadline, verified like the automatic rollback; nothing is
// persisted. Rejecting with nothing pending changes nothing. A DHCP configuration
// comes back with its lease, and the answer waits for that verification.
func TestApplyRejectedRollsBackNow(t *testing.T) {
	l := newLab(t)
	l.startDHCP(time.Hour)
	r, cfg, c := serveLab(t, l, staticToml)
	r.waitMarker(t, SourceStatic, 5*time.Second)
	before := l.kernelState()
	resolvBefore, _ := os.ReadFile(cfg.ResolvConf)

	if _, err := c.Rollback(ctxT(t, 5*time.Second), "the test"); err == nil || !strings.Contains(err.Error(), "nothing to roll back") {
		t.Fatalf("Rollback with nothing pending = %v, want refused", err)
	}
	if after := l.kernelState(); after != before {
		t.Fatalf("a refused rollback changed the kernel:\n%s\nwant:\n%s", after, before)
	}

	moved := strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.9/24", 1)
	res, err := c.Apply(ctxT(t, 20*time.Second), "moved.toml", []byte(moved), 5*time.Minute, "")
	if err != nil || !res.Applied || res.Committed {
		t.Fatalf("Apply(moved) = %+v, %v; want applied and pending", res, err)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{"10.77.0.9/24"}) {
		t.Fatalf("while pending: eth0 = %q", got)
	}
	start := time.Now()
	st, err := c.Rollback(ctxT(t, 20*time.Second), "the test")
	if err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("rollback took %s", took)
	}
	if rb := st.LastRollback; rb == nil || !rb.Done || !rb.Verified || rb.Reason != "rejected by the test" {
		t.Errorf("rollback status = %+v, want done, verified, rejected by the test", rb)
	}
	if st.Pending != nil || st.Address != "10.77.0.5/24" || st.Source != SourceStatic {
		t.Errorf("status after rollback = %+v", st)
	}
	if after := l.kernelState(); after != before {
		t.Errorf("kernel state after rollback:\n%s\nwant as before:\n%s", after, before)
	}
	if b, _ := os.ReadFile(cfg.ResolvConf); string(b) != string(resolvBefore) {
		t.Errorf("resolv.conf after rollback = %q, want %q", b, resolvBefore)
	}
	if b, _ := os.ReadFile(cfg.PersistentPath); string(b) != staticToml {
		t.Errorf("persistent file changed by a rejected apply: %q", b)
	}
	if _, err := c.Confirm(ctxT(t, 5*time.Second)); err == nil {
		t.Errorf("Confirm after the rollback succeeded: nothing should be pending")
	}

	// DHCP as the last good settings: the answer comes once the lease is back and
	// the gateway checked.
	if res, err := c.Apply(ctxT(t, 20*time.Second), "dhcp.toml", []byte(dhcpToml), 0, ""); err != nil || !res.Committed {
		t.Fatalf("Apply(dhcp) = %+v, %v", res, err)
	}
	lease := r.s.Status().Address
	if _, err := c.Apply(ctxT(t, 20*time.Second), "moved.toml", []byte(moved), 5*time.Minute, ""); err != nil {
		t.Fatalf("Apply(moved) over dhcp: %v", err)
	}
	st, err = c.Rollback(ctxT(t, 30*time.Second), "the test")
	if err != nil {
		t.Fatalf("Rollback to dhcp: %v", err)
	}
	if rb := st.LastRollback; rb == nil || !rb.Verified || st.Source != SourceDHCP || st.Address != lease {
		t.Errorf("after rollback to dhcp: source %s address %s rollback %+v; want the lease %s back, verified", st.Source, st.Address, rb, lease)
	}
	if got := l.addrs("eth0"); !slices.Equal(got, []string{lease}) {
		t.Errorf("eth0 = %q, want only the lease %s", got, lease)
	}
}
