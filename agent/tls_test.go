package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/vdc/vdctest"
)

// capture records every byte clients sent to a listener.
type capture struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *capture) write(p []byte) {
	c.mu.Lock()
	c.b.Write(p)
	c.mu.Unlock()
}

func (c *capture) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.b.Bytes())
}

type captureConn struct {
	net.Conn
	c *capture
}

func (cc captureConn) Read(p []byte) (int, error) {
	n, err := cc.Conn.Read(p)
	cc.c.write(p[:n])
	return n, err
}

type captureListener struct {
	net.Listener
	c *capture
}

func (l captureListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return captureConn{c, l.c}, nil
}

func listenCapture(t testing.TB) captureListener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return captureListener{l, &capture{}}
}

// forward is a TCP proxy to target that records what clients send (it does not
// terminate TLS: an eavesdropper on the path).
func forward(t testing.TB, target string) (string, *capture) {
	l := listenCapture(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(c, up)
				io.Copy(up, c)
			}()
		}
	}()
	return l.Addr().String(), l.c
}

// assertNothingSecret fails when the captured bytes hold a secret of the node.
func assertNothingSecret(t testing.TB, what string, got []byte, secrets map[string]string) {
	t.Helper()
	if len(got) == 0 {
		t.Errorf("%s: received nothing at all; the test proves nothing", what)
	}
	for name, s := range secrets {
		if bytes.Contains(got, []byte(s)) {
			t.Errorf("%s received the %s", what, name)
		}
	}
}

// TestJoinRefusesUntrustedServer: with a wrong pin, behind a TLS-terminating proxy
// with its own CA, or against a plain-HTTP server, the join fails and the other side
// never receives the join token, the node secret or even the node's name.
func TestJoinRefusesUntrustedServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDC(t)
	ns := mgmtNS(t, "10.61.0.5/24", "10.61.0.1")
	sum := sha256.Sum256([]byte("not the vDC's CA"))
	wrongPin := base64.RawURLEncoding.EncodeToString(sum[:])

	var requests atomic.Int64
	recordRequests := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"node_id":"00000000-0000-0000-0000-000000000001","registration":"registered","heartbeat_interval_seconds":1}`)
	})
	proxyL := listenCapture(t)
	proxy := httptest.NewUnstartedServer(recordRequests)
	proxy.Listener = proxyL
	proxy.StartTLS() // its own CA, as a TLS-terminating middlebox has
	t.Cleanup(proxy.Close)
	plainL := listenCapture(t)
	plain := httptest.NewUnstartedServer(recordRequests)
	plain.Listener = plainL
	plain.Start()
	t.Cleanup(plain.Close)
	eavesdrop, eavesdropped := forward(t, strings.TrimPrefix(v.AgentURL, "https://"))

	for _, tc := range []struct {
		name, url, token string
		got              *capture
		refused          bool // a pin mismatch (fails closed at once) rather than a protocol error
	}{
		{"wrong pin", "https://" + eavesdrop, quantix.FormatJoinToken(wrongPin, quantix.SecretOfJoinToken(v.JoinToken)), eavesdropped, true},
		{"TLS-terminating proxy", proxy.URL, v.JoinToken, proxyL.c, true},
		{"plain-HTTP server", "https://" + plainL.Addr().String(), v.JoinToken, plainL.c, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := "untrusted-" + strings.ReplaceAll(tc.name, " ", "-")
			cfg := testConfig(t, v, ns, strings.ToLower(host))
			cfg.ControlPlane, cfg.JoinToken, cfg.Once = tc.url, tc.token, true
			svc, err := agent.New(cfg, logger(t, host))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			err = svc.Run(ctx)
			st := svc.Status()
			if tc.refused {
				if !errors.Is(err, agent.ErrRefused) || !strings.Contains(err.Error(), "pin") || !strings.Contains(err.Error(), "nothing was sent") {
					t.Errorf("Run() = %v, want ErrRefused naming the pin", err)
				}
			} else if err != nil || !strings.Contains(st.Error, "HTTP response to HTTPS client") {
				t.Errorf("Run() = %v, status error %q; want retries, the server not speaking TLS", err, st.Error)
			}
			assertNothingSecret(t, tc.name, tc.got.bytes(), map[string]string{
				"join token secret": quantix.SecretOfJoinToken(v.JoinToken),
				"node secret":       svc.Identity().NodeSecret,
				"hostname":          strings.ToLower(host),
				"machine id":        svc.Identity().MachineID,
			})
			if n := requests.Load(); n != 0 {
				t.Errorf("the untrusted server answered %d requests", n)
			}
			if ns := nodesByHostname(t, v, strings.ToLower(host)); len(ns) != 0 {
				t.Errorf("the vDC registered %v", ns)
			}
		})
	}

	// A plain http:// vDC URL is refused before anything is sent, unless the lab
	// flag says plain.
	cfg := testConfig(t, v, ns, "plain-url")
	cfg.ControlPlane = v.URL
	if _, err := agent.New(cfg, logger(t, "plain-url")); !errors.Is(err, quantix.ErrConfig) || !strings.Contains(err.Error(), "insecure_plain_http") {
		t.Errorf("New() with %s = %v, want a config error naming insecure_plain_http", v.URL, err)
	}
	// And the vDC refuses agents on its plain side (agent_plain_http is off).
	cfg.InsecurePlainHTTP, cfg.Once = true, true
	svc, err := agent.New(cfg, logger(t, "plain-url"))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Run(context.Background()); !errors.Is(err, agent.ErrRefused) || !strings.Contains(err.Error(), "agent_plain_http") {
		t.Errorf("Run() against the vDC's plain side = %v, want refused naming agent_plain_http", err)
	}
}

// heartbeatFresh sends one heartbeat for the agent on a new TLS connection that
// trusts pins, and returns the serving certificate's serial.
func heartbeatFresh(v *vdctest.VDC, a *runningAgent, pins []string) (string, error) {
	st := a.svc.Status()
	body, _ := json.Marshal(quantix.HeartbeatRequest{ManagementIP: st.Management.IP})
	req, _ := http.NewRequest(http.MethodPost, v.AgentURL+quantix.PathHeartbeat(st.NodeID), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+a.svc.Identity().NodeSecret)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: quantix.PinnedTLS(pins, nil)}}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("heartbeat: %d %s", resp.StatusCode, b)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if !slices.Equal(leaf.DNSNames, []string{quantix.AgentRoleName}) || len(leaf.IPAddresses) != 0 {
		return "", fmt.Errorf("serving certificate names %v %v, want only %s", leaf.DNSNames, leaf.IPAddresses, quantix.AgentRoleName)
	}
	return leaf.SerialNumber.String(), nil
}

// TestServingCertRenewal: with a certificate lifetime of 2 s the vDC renews its
// serving certificate several times while agents heartbeat, without a restart and
// without a failed heartbeat, on kept-alive and on new connections alike.
func TestServingCertRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	v := startVDCWith(t, vdctest.Options{AgentCertLifetime: 2 * time.Second})
	ns := mgmtNS(t, "10.62.0.5/24", "10.62.0.1")
	a := startAgent(t, testConfig(t, v, ns, "renew-node"))
	a.waitMarker(t, 1)
	serials := map[string]bool{}
	failures := 0
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		s, err := heartbeatFresh(v, a, []string{v.Pin})
		if err != nil {
			failures++
			t.Errorf("fresh-connection heartbeat: %v", err)
			continue
		}
		serials[s] = true
	}
	renewals := v.Service().AgentCARenewals()
	st := a.svc.Status()
	t.Logf("renewals %d, distinct serving certificates seen %d, agent heartbeats %d", renewals, len(serials), st.Counts.Heartbeats)
	if renewals < 3 || len(serials) < 3 {
		t.Errorf("renewals %d, distinct certificates %d; want at least 3 each in 8 s with a 2 s lifetime", renewals, len(serials))
	}
	if st.Counts.HeartbeatFailures != 0 || st.Counts.Heartbeats < 5 || failures != 0 {
		t.Errorf("agent heartbeats %d, failed %d, fresh failures %d; want none failed", st.Counts.Heartbeats, st.Counts.HeartbeatFailures, failures)
	}
}

// expectPins waits until the agent's identity trusts exactly want.
func expectPins(t testing.TB, who string, a *runningAgent, want []string) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("%s trusting %v", who, want), func() (bool, string) {
		got := a.svc.Identity().CAPins
		return slices.Equal(got, want), fmt.Sprintf("ca_pins %v", got)
	})
}

// TestCARotation: a rotation while one agent runs, one is stopped briefly and one
// is away past the overlap. The running one and the one back within the overlap
// learn both pins and carry on through the switch to the new CA; the one back too
// late fails closed, saying to join again, and recovers with a new token.
func TestCARotation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a vDC")
	}
	const overlap = 6 * time.Second
	v := startVDCWith(t, vdctest.Options{AgentCAOverlap: overlap})
	ns := mgmtNS(t, "10.63.0.5/24", "10.63.0.1")
	cfgA, cfgB, cfgC := testConfig(t, v, ns, "rot-a"), testConfig(t, v, ns, "rot-b"), testConfig(t, v, ns, "rot-c")
	a := startAgent(t, cfgA)
	a.waitMarker(t, 1)
	for _, cfg := range []agent.Config{cfgB, cfgC} {
		x := startAgent(t, cfg)
		x.waitMarker(t, 1)
		x.stop(t)
	}
	oldPin := v.Pin
	if got := a.svc.Identity().CAPins; !slices.Equal(got, []string{oldPin}) {
		t.Fatalf("identity ca_pins after joining = %v, want [%s]", got, oldPin)
	}

	var rot quantix.AgentCAStatus
	v.Do(t, http.MethodPost, quantix.PathAgentCARotate, struct{}{}, &rot, http.StatusOK)
	rotated := time.Now()
	if rot.Next == nil || rot.Serving.Pin != oldPin || !slices.Equal(rot.Pins, []string{oldPin, rot.Next.Pin}) || rot.JoinTokenPin != oldPin {
		t.Fatalf("rotate = %+v, want the old CA serving and both pins announced", rot)
	}
	newPin := rot.Next.Pin
	v.Do(t, http.MethodPost, quantix.PathAgentCARotate, struct{}{}, nil, http.StatusConflict)
	both := []string{oldPin, newPin}
	expectPins(t, "the running agent", a, both)
	// B comes back within the overlap: it still trusts only the old pin, which the
	// vDC still serves, and learns the new one.
	b := startAgent(t, cfgB)
	if m := b.waitMarker(t, 1); m.Get("registration") != quantix.RegistrationReregistered {
		t.Errorf("B back within the overlap: %v, want reregistered", m)
	}
	expectPins(t, "B", b, both)
	if time.Since(rotated) > overlap {
		t.Fatalf("the machine is too slow for this test: B joined %s after the rotation, past the %s overlap", time.Since(rotated), overlap)
	}

	// The overlap ends: the vDC serves from the new CA and announces only its pin.
	eventually(t, overlap+10*time.Second, "the new CA serving", func() (bool, string) {
		var st quantix.AgentCAStatus
		v.Do(t, http.MethodGet, quantix.PathAgentCA, nil, &st, http.StatusOK)
		return st.Serving.Pin == newPin && st.Next == nil, fmt.Sprintf("%+v", st)
	})
	if _, err := heartbeatFresh(v, a, []string{newPin}); err != nil {
		t.Errorf("heartbeat trusting only the new pin: %v", err)
	}
	if _, err := heartbeatFresh(v, a, []string{oldPin}); !errors.Is(err, quantix.ErrPinMismatch) {
		t.Errorf("heartbeat trusting only the old pin after the overlap: %v, want ErrPinMismatch", err)
	}
	for name, x := range map[string]*runningAgent{"A": a, "B": b} {
		expectPins(t, name, x, []string{newPin})
		if st := x.svc.Status(); st.Counts.HeartbeatFailures != 0 || st.State != agent.StateRegistered {
			t.Errorf("%s: %d failed heartbeats, state %s (%s); want none failed", name, st.Counts.HeartbeatFailures, st.State, st.Error)
		}
	}

	// C was away past the overlap: it fails closed and says what to do.
	cfgC.Once = true
	late, err := agent.New(cfgC, logger(t, "rot-c"))
	if err != nil {
		t.Fatal(err)
	}
	err = late.Run(context.Background())
	if !errors.Is(err, agent.ErrRefused) || !errors.Is(err, quantix.ErrPinMismatch) || !strings.Contains(err.Error(), "join again with a new token") {
		t.Fatalf("C after the overlap: %v, want refused on the pin, telling to join again", err)
	}
	// A new token carries the new pin; C re-registers with its own secret.
	tok := v.NewJoinToken(t, time.Hour, 1)
	if pin, _, err := quantix.ParseJoinToken(tok.Token); err != nil || pin != newPin {
		t.Fatalf("new token %q: pin %q, %v; want %s", tok.Token, pin, err, newPin)
	}
	cfgC.JoinToken = tok.Token
	c := startAgent(t, cfgC)
	if m := c.waitMarker(t, 1); m.Get("registration") != quantix.RegistrationReregistered {
		t.Errorf("C with a new token: %v, want reregistered", m)
	}
	if got := c.svc.Identity().CAPins; !slices.Equal(got, []string{newPin}) {
		t.Errorf("C ca_pins %v, want [%s]", got, newPin)
	}
}

// TestOtherAddress: the vDC reached through another address than before (a second
// vDC process on the same database, on 127.0.0.2): the node carries on with the
// pins in its identity, no token needed, because certificates name the role, not
// an address.
func TestOtherAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and two vDCs")
	}
	v := startVDC(t)
	ns := mgmtNS(t, "10.64.0.5/24", "10.64.0.1")
	cfg := testConfig(t, v, ns, "moved-vdc")
	a := startAgent(t, cfg)
	a.waitMarker(t, 1)
	a.stop(t)
	v2 := startVDCWith(t, vdctest.Options{DatabaseURL: v.DatabaseURL, AdminToken: v.AdminToken, Listen: "127.0.0.2:0"})
	if v2.Pin != v.Pin || !strings.HasPrefix(v2.AgentURL, "https://127.0.0.2:") {
		t.Fatalf("second vDC %s pin %s, want 127.0.0.2 and pin %s", v2.AgentURL, v2.Pin, v.Pin)
	}
	cfg.ControlPlane, cfg.JoinToken = v2.AgentURL, ""
	b := startAgent(t, cfg)
	if m := b.waitMarker(t, 1); m.Get("registration") != quantix.RegistrationReregistered {
		t.Errorf("via 127.0.0.2: %v, want reregistered", m)
	}
	eventually(t, 10*time.Second, "heartbeats via 127.0.0.2", func() (bool, string) {
		st := b.svc.Status()
		return st.Counts.Heartbeats >= 3, fmt.Sprintf("%+v", st.Counts)
	})
	if st := b.svc.Status(); st.Counts.HeartbeatFailures != 0 {
		t.Errorf("failed heartbeats via 127.0.0.2: %d (%s)", st.Counts.HeartbeatFailures, st.Error)
	}
}
