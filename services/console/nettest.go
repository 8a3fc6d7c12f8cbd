package console

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

// CheckResult is one line of "test management network".
type CheckResult struct {
	Name   string // "gateway 10.0.0.1", "dns 10.0.0.53", "vdc http://..."
	OK     bool
	Detail string
	Took   time.Duration
}

// TestNetwork checks the gateway (ICMP echo), every DNS server (a query for the
// vDC's host name, or the reverse of our own address: any answer, even "no such
// name", proves the server answers) and the vDC (GET /healthz). The checks run in
// parallel, each bounded by timeout.
func TestNetwork(ctx context.Context, st *network.Status, vdcURL string, timeout time.Duration) []CheckResult {
	var (
		mu  sync.Mutex
		out []CheckResult
		wg  sync.WaitGroup
	)
	add := func(r CheckResult) {
		mu.Lock()
		out = append(out, r)
		mu.Unlock()
	}
	run := func(name string, f func(ctx context.Context) (string, error)) {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			t0 := time.Now()
			detail, err := f(ctx)
			r := CheckResult{Name: name, OK: err == nil, Detail: detail, Took: time.Since(t0)}
			if err != nil {
				r.Detail = err.Error()
			}
			add(r)
		})
	}
	if st == nil {
		return []CheckResult{{Name: "network service", Detail: "no status from the network service"}}
	}
	if st.Gateway == "" {
		add(CheckResult{Name: "gateway", Detail: "no gateway configured"})
	} else {
		gw := st.Gateway
		run("gateway "+gw, func(ctx context.Context) (string, error) { return ping(ctx, gw) })
	}
	var self string
	if st.Address != "" {
		self, _, _ = strings.Cut(st.Address, "/")
	}
	vhost := ""
	if u, err := url.Parse(vdcURL); err == nil && vdcURL != "" {
		vhost = u.Hostname()
	}
	if len(st.DNS) == 0 {
		add(CheckResult{Name: "dns", Detail: "no DNS server configured"})
	}
	for _, d := range st.DNS {
		server := d
		run("dns "+server, func(ctx context.Context) (string, error) { return dnsCheck(ctx, server, vhost, self) })
	}
	if vdcURL == "" {
		add(CheckResult{Name: "vdc", Detail: "no vDC URL known"})
	} else {
		run("vdc "+vdcURL, func(ctx context.Context) (string, error) { return httpCheck(ctx, vdcURL) })
	}
	wg.Wait()
	order := func(r CheckResult) int {
		switch {
		case strings.HasPrefix(r.Name, "gateway"):
			return 0
		case strings.HasPrefix(r.Name, "dns"):
			return 1
		}
		return 2
	}
	for i := 1; i < len(out); i++ { // small: insertion sort, stable
		for j := i; j > 0 && (order(out[j]) < order(out[j-1]) || order(out[j]) == order(out[j-1]) && out[j].Name < out[j-1].Name); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// ping sends ICMP echo requests to ip until one is answered or ctx ends. It uses a
// raw socket (the console runs as root) and falls back to an unprivileged ICMP
// socket.
func ping(ctx context.Context, ip string) (string, error) {
	dst := net.ParseIP(ip).To4()
	if dst == nil {
		return "", fmt.Errorf("%q is not an IPv4 address", ip)
	}
	network, addr := "ip4:icmp", net.Addr(&net.IPAddr{IP: dst})
	c, err := icmp.ListenPacket(network, "0.0.0.0")
	if err != nil {
		network, addr = "udp4", &net.UDPAddr{IP: dst}
		if c, err = icmp.ListenPacket(network, "0.0.0.0"); err != nil {
			return "", fmt.Errorf("icmp socket: %w", err)
		}
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	t0 := time.Now()
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("quantix-console")}}
		b, _ := msg.Marshal(nil)
		sent := time.Now()
		if _, err := c.WriteTo(b, addr); err != nil {
			return "", fmt.Errorf("send echo: %w", err)
		}
		dl := sent.Add(700 * time.Millisecond)
		if d, ok := ctx.Deadline(); ok && d.Before(dl) {
			dl = d
		}
		c.SetReadDeadline(dl)
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			rm, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if !sameIP(from, dst) {
				continue
			}
			if e, ok := rm.Body.(*icmp.Echo); ok && (network == "udp4" || e.ID == id) {
				return fmt.Sprintf("echo reply in %.1fms", float64(time.Since(sent).Microseconds())/1000), nil
			}
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("no echo reply in %s", time.Since(t0).Round(time.Millisecond))
		}
	}
}

func sameIP(a net.Addr, ip net.IP) bool {
	switch v := a.(type) {
	case *net.IPAddr:
		return v.IP.Equal(ip)
	case *net.UDPAddr:
		return v.IP.Equal(ip)
	}
	return false
}

func dnsCheck(ctx context.Context, server, name, self string) (string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", net.JoinHostPort(server, "53"))
	}}
	var err error
	var what string
	switch {
	case name != "" && net.ParseIP(name) == nil:
		what = name
		var addrs []string
		addrs, err = r.LookupHost(ctx, name)
		if err == nil {
			return fmt.Sprintf("%s is %s", name, strings.Join(addrs, ", ")), nil
		}
	case self != "":
		what = "reverse of " + self
		var names []string
		names, err = r.LookupAddr(ctx, self)
		if err == nil {
			return fmt.Sprintf("%s is %s", self, strings.Join(names, ", ")), nil
		}
	default:
		what = quantix.ImageQuantixOS + ".invalid"
		_, err = r.LookupHost(ctx, what)
	}
	var de *net.DNSError
	if errors.As(err, &de) && de.IsNotFound {
		return fmt.Sprintf("answers (%s: no name)", what), nil
	}
	return "", fmt.Errorf("%s: %w", what, err)
}

func httpCheck(ctx context.Context, base string) (string, error) {
	u := strings.TrimRight(base, "/") + quantix.PathHealthz
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", quantix.PathHealthz, resp.Status)
	}
	return "GET " + quantix.PathHealthz + ": " + resp.Status, nil
}
