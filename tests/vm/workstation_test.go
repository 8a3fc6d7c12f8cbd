package vm

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestWorkstation joins two workstations on a hub and runs HTTP between them: the
// path the scenarios use to reach the vDC, without a VM.
func TestWorkstation(t *testing.T) {
	srv, cli := workstationPair(t)
	srvAddr := srv.Addr
	ln, err := srv.Listen(8080)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 200<<10) // several windows' worth
	for i := range body {
		body[i] = byte(i)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
		w.Write(body)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	hc := cli.HTTPClient(10 * time.Second)
	for i := range 3 {
		resp, err := hc.Get(fmt.Sprintf("http://%s:8080/try%d", srvAddr.Addr(), i))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		head := fmt.Sprintf("GET /try%d from %s:", i, WorkstationAddr.Addr())
		if !strings.HasPrefix(string(got), head) || !strings.HasSuffix(string(got), string(body)) {
			t.Fatalf("answer %d: %d bytes starting %q, want %q and the %d bytes of the body", i, len(got), got[:min(len(got), 60)], head, len(body))
		}
	}
	if _, err := hc.Get("http://10.77.0.99:8080/"); err == nil {
		t.Error("a request to an address nobody holds succeeded")
	}
}

// Forward makes a service on the host's loopback reachable on the segment at the
// workstation's address, both ways and for many requests.
func TestWorkstationForward(t *testing.T) {
	srv, cli := workstationPair(t)
	srvAddr := srv.Addr

	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(b))
	}))
	t.Cleanup(host.Close)
	srv.Forward(t, 8080, host.Listener.Addr().String())

	hc := cli.HTTPClient(10 * time.Second)
	post := strings.Repeat("x", 100<<10)
	for i := range 3 {
		resp, err := hc.Post(fmt.Sprintf("http://%s:8080/fwd%d", srvAddr.Addr(), i), "text/plain", strings.NewReader(post))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("POST /fwd%d %d", i, len(post)); string(got) != want {
			t.Fatalf("forwarded answer %q, want %q", got, want)
		}
	}
	// A client that never closes its connection (a VM switched off mid keep-alive)
	// does not hold up the end of the test: Forward cuts it.
	t.Run("cleanup cuts idle connections", func(t *testing.T) {
		var c net.Conn
		t.Cleanup(func() { // registered first, so it runs after Forward's cleanup
			if c != nil {
				c.Close()
			}
		})
		srv.Forward(t, 8081, host.Listener.Addr().String())
		var err error
		c, err = cli.DialContext(context.Background(), "tcp", fmt.Sprintf("%s:8081", srvAddr.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
		buf := make([]byte, 512)
		if n, err := c.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "GET /held 0") {
			t.Fatalf("held connection answer %q, %v", buf[:n], err)
		}
	})

	// With the host service gone, the segment sees a failed request, not a hang.
	host.Close()
	if _, err := hc.Get(fmt.Sprintf("http://%s:8080/gone", srvAddr.Addr())); err == nil {
		t.Error("a request forwarded to a stopped host service succeeded")
	}
}

// Proxy makes a service on the segment reachable from the host's loopback.
func TestWorkstationProxy(t *testing.T) {
	srv, cli := workstationPair(t)
	srvAddr := srv.Addr
	ln, err := srv.Listen(8443)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s from %s", r.URL.Path, r.RemoteAddr)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	host := cli.Proxy(t, fmt.Sprintf("%s:8443", srvAddr.Addr()))
	if !strings.HasPrefix(host, "127.0.0.1:") {
		t.Fatalf("proxy listens on %s, want loopback", host)
	}
	for i := range 3 {
		resp, err := http.Get(fmt.Sprintf("http://%s/via%d", host, i))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The segment sees the workstation as the client.
		if want := fmt.Sprintf("/via%d from %s:", i, WorkstationAddr.Addr()); !strings.HasPrefix(string(got), want) {
			t.Fatalf("proxied answer %q, want %q...", got, want)
		}
	}
	// A target nobody holds: the host client gets an error, not a hang.
	bad := cli.Proxy(t, "10.77.0.99:8443")
	c := &http.Client{Timeout: 30 * time.Second}
	if _, err := c.Get("http://" + bad + "/"); err == nil {
		t.Error("a request proxied to an address nobody holds succeeded")
	}
}

// workstationPair plugs two workstations into a new hub without DHCP: a server at
// 10.77.0.3 and the lab's usual one (WorkstationAddr) as its client.
func workstationPair(t *testing.T) (srv, cli *Workstation) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs TCP over the hub: skipped with -short")
	}
	hub := NewHub(t, HubConfig{DHCPOff: true})
	srv = NewWorkstation(t, hub, net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x03}, netip.MustParsePrefix("10.77.0.3/24"))
	cli = NewWorkstation(t, hub, WorkstationMAC, WorkstationAddr)
	return srv, cli
}
