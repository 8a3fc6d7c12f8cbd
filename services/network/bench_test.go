package network

import (
	"context"
	"github.com/quantix/quantix/tests/netlab"
	"net"
	"strings"
	"testing"
	"time"
)

// The measurements of docs/design.md §12 for the network service. Run as root:
//
//	go test -run '^$' -bench . -benchtime 5x ./services/network/
//
// Each reports ms/op; the fallback benchmark also reports how far past the
// configured timeout the fallback address was in place.

// BenchmarkStaticApply is the kernel part of a static apply: flush, add, delete
// every default route, add the default route, write resolv.conf, read it all back.
func BenchmarkStaticApply(b *testing.B) {
	l := newLab(b)
	env, err := openNetEnv(l.clientPath)
	if err != nil {
		b.Fatal(err)
	}
	defer env.close()
	k, err := env.findLink("eth0", nil, "")
	if err != nil {
		b.Fatal(err)
	}
	cfg := l.config()
	gw := net.ParseIP(labGateway).To4()
	targets := []target{
		{source: SourceStatic, addr: &net.IPNet{IP: net.IPv4(10, 77, 0, 5).To4(), Mask: net.CIDRMask(24, 32)}, gw: gw, dns: []net.IP{gw}},
		{source: SourceStatic, addr: &net.IPNet{IP: net.IPv4(10, 77, 0, 6).To4(), Mask: net.CIDRMask(24, 32)}, gw: gw, dns: []net.IP{gw}},
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t := targets[i%2]
		if err := env.program(k, nil, t); err != nil {
			b.Fatal(err)
		}
		if err := writeResolv(cfg.ResolvConf, t.source, t.dns, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/op")
}

// BenchmarkSafeApplyStatic is a whole `qx-net apply --confirm-timeout 0` of a new
// static address through the socket: validate, apply, verify, ARP the gateway,
// persist.
func BenchmarkSafeApplyStatic(b *testing.B) {
	l := newLab(b)
	cfg := l.config()
	writeFile(b, cfg.PersistentPath, staticToml)
	r := l.run(cfg)
	r.waitMarker(b, SourceStatic, 5*time.Second)
	c := Client{Socket: cfg.Socket}
	configs := [][]byte{[]byte(staticToml), []byte(strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.6/24", 1))}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		res, err := c.Apply(context.Background(), "bench.toml", configs[(i+1)%2], 0, "")
		if err != nil || !res.Committed {
			b.Fatalf("Apply = %+v, %v", res, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/op")
}

// BenchmarkLinkUpToLease starts the service on a down link (it sets the link up)
// and times until the leased address is in the kernel.
func BenchmarkLinkUpToLease(b *testing.B) {
	l := newLab(b)
	l.startDHCP(time.Minute)
	var total time.Duration
	for b.Loop() {
		netlab.IP(b, "-n", l.client, "link", "set", "eth0", "down")
		netlab.IP(b, "-n", l.client, "addr", "flush", "dev", "eth0")
		cfg := l.config()
		cfg.Settings = mustParse(b, "dhcp.toml", dhcpToml)
		r := l.run(cfg)
		r.waitMarker(b, SourceDHCP, 10*time.Second)
		total += time.Since(r.start)
		r.cancel()
		if err := <-r.done; err != nil {
			b.Fatal(err)
		}
		r.done <- nil
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/op")
}

// BenchmarkFallback times the fallback with no DHCP server against the configured
// first-lease timeout: static fallback with a 1s timeout, and link-local with the
// default 10s timeout and the full RFC 3927 probe timing (probing runs during the
// timeout, so the address is ready when it ends).
func BenchmarkFallback(b *testing.B) {
	cases := []struct {
		name, toml, source string
		timeout            time.Duration
		rfc                bool
	}{
		{"static-1s", "interface = \"eth0\"\n[static]\naddress = \"10.77.0.9/24\"\ngateway = \"10.77.0.1\"\n[dhcp]\ntimeout = \"1s\"\n", SourceFallback, time.Second, false},
		{"link-local-rfc3927-10s", "interface = \"eth0\"\n", SourceLinkLocal, 10 * time.Second, true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			l := newLab(b)
			var total time.Duration
			for b.Loop() {
				cfg := l.config()
				cfg.Settings = mustParse(b, "fallback.toml", tc.toml)
				if tc.rfc {
					cfg.LinkLocal = RFC3927Timing
				}
				cfg.DHCPRetryInitial, cfg.DHCPRetryMax = 2*time.Second, 32*time.Second
				r := l.run(cfg)
				r.waitMarker(b, tc.source, tc.timeout+10*time.Second)
				total += time.Since(r.start)
				r.cancel()
				if err := <-r.done; err != nil {
					b.Fatal(err)
				}
				r.done <- nil
			}
			avg := total / time.Duration(b.N)
			b.ReportMetric(float64(avg.Microseconds())/1000, "ms/op")
			b.ReportMetric(float64((avg-tc.timeout).Microseconds())/1000, "ms-over-timeout")
		})
	}
}

// BenchmarkRejectRollback is the operator saying No to a pending static change:
// `qx-net rollback` until the last good static address is back in the kernel and
// its gateway answered ARP (the apply before it is not timed).
func BenchmarkRejectRollback(b *testing.B) {
	l := newLab(b)
	cfg := l.config()
	writeFile(b, cfg.PersistentPath, staticToml)
	r := l.run(cfg)
	r.waitMarker(b, SourceStatic, 5*time.Second)
	c := Client{Socket: cfg.Socket}
	moved := []byte(strings.Replace(staticToml, "10.77.0.5/24", "10.77.0.6/24", 1))
	var total time.Duration
	for b.Loop() {
		if _, err := c.Apply(context.Background(), "moved.toml", moved, time.Hour, ""); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		st, err := c.Rollback(context.Background(), "the benchmark")
		total += time.Since(t0)
		if err != nil || !st.LastRollback.Verified || st.Address != "10.77.0.5/24" {
			b.Fatalf("Rollback = %+v, %v", st, err)
		}
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/op")
}
