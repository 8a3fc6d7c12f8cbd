package vdc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc"
	"github.com/quantix/quantix/vdc/vdctest"
)

// TestUICertificate: the first start generates a self-signed ECDSA P-256
// certificate next to secrets.toml (0600), for localhost, 127.0.0.1 and the
// hostname; a restart reuses it; the UI listener serves with it.
func TestUICertificate(t *testing.T) {
	skipShort(t)
	v := vdctest.Start(t, vdctest.Options{})
	certPEM, err := os.ReadFile(v.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(filepath.Dir(v.CertFile), vdc.TLSKeyName)
	for _, p := range []string{v.CertFile, keyPath} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", p, fi.Mode(), err)
		}
	}
	blk, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if cert.PublicKeyAlgorithm != x509.ECDSA || !slices.Contains(cert.DNSNames, "localhost") || !slices.Contains(cert.DNSNames, host) ||
		!slices.ContainsFunc(cert.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) }) {
		t.Errorf("certificate: %v DNS %v IPs %v; want ECDSA for localhost, %s and 127.0.0.1", cert.PublicKeyAlgorithm, cert.DNSNames, cert.IPAddresses, host)
	}
	c := v.HTTPSClient(t)
	resp, err := c.Get(v.UIURL + "/ui/hosts")
	if err != nil {
		t.Fatalf("HTTPS with exactly the generated certificate trusted: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("GET /ui/hosts: %d, want 303 to the login page", resp.StatusCode)
	}
	if !strings.Contains(v.Stdout.String(), "ui=https://127.0.0.1:") {
		t.Errorf("ready marker lacks ui=https://...:\n%s", v.Stdout)
	}
	// The plain listener sends browsers to the UI.
	resp, err = c.Get(v.URL + "/ui/vms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != v.UIURL+"/ui/vms" {
		t.Errorf("plain GET /ui/vms: %d %q, want 302 to %s/ui/vms", resp.StatusCode, loc, v.UIURL)
	}

	v.Restart(t)
	again, _ := os.ReadFile(v.CertFile)
	if !bytes.Equal(again, certPEM) {
		t.Errorf("the restart made a new certificate instead of reusing %s", v.CertFile)
	}
	if _, err := c.Get(v.UIURL + "/healthz"); err != nil {
		t.Errorf("HTTPS after the restart with the first certificate trusted: %v", err)
	}
}

// TestConfiguredCertificate: tls_cert/tls_key win over the generated one; a broken
// generated pair is a configuration error, never silently replaced.
func TestConfiguredCertificate(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	certPEM, keyPEM, err := vdc.SelfSignedCertificate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "c.pem"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "k.pem"), keyPEM, 0o600)
	pg := vdctest.Shared(t)
	cfg := vdc.DefaultConfig()
	cfg.Listen, cfg.UIListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DatabaseURL, cfg.AdminToken, cfg.Stdout = pg.NewDatabase(t), "admin-0123456789abcdef", io.Discard
	cfg.SecretsFile = filepath.Join(dir, "vdc", "secrets.toml")
	cfg.DataDir = dir
	cfg.TLSCert, cfg.TLSKey = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	svc, err := vdc.New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := newCtx()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	select {
	case <-svc.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + svc.UIAddr().String() + quantix.PathHealthz)
	if err != nil {
		t.Errorf("HTTPS with the configured certificate: %v", err)
	} else {
		resp.Body.Close()
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("stop: %v", err)
	}
	if _, err := os.Stat(cfg.TLSDir()); !os.IsNotExist(err) {
		t.Errorf("a configured pair still generated %s (%v)", cfg.TLSDir(), err)
	}

	// A broken generated certificate stops the start with a configuration error.
	cfg.TLSCert, cfg.TLSKey = "", ""
	os.MkdirAll(cfg.TLSDir(), 0o700)
	os.WriteFile(filepath.Join(cfg.TLSDir(), vdc.TLSCertName), []byte("garbage"), 0o600)
	os.WriteFile(filepath.Join(cfg.TLSDir(), vdc.TLSKeyName), keyPEM, 0o600)
	svc, _ = vdc.New(cfg, quiet)
	ctx, cancel = newCtx()
	defer cancel()
	err = svc.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), vdc.TLSCertName) || !strings.Contains(err.Error(), "configuration error") {
		t.Errorf("start with a broken generated certificate: %v, want a configuration error naming %s", err, vdc.TLSCertName)
	}
	if b, _ := os.ReadFile(filepath.Join(cfg.TLSDir(), vdc.TLSCertName)); string(b) != "garbage" {
		t.Errorf("the broken certificate was overwritten")
	}
}

func newCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}
