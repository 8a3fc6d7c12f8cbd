package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix/vdc/web/webtest"
)

// 1b. The operator's first check after a node joins, as in the original: the
// vDC's web UI, in a real browser (headless Chromium), lists node-a on its Hosts
// page, ready, at its address. The browser on the host reaches the QvDC VM's
// HTTPS listener through the workstation (Workstation.Proxy) and trusts exactly
// the certificate the QvDC generated on its first boot.
func (s *suite) hostsPage(t *testing.T) {
	s.needNodeA(t)
	target := fmt.Sprintf("%s:%d", QvDCAddr.Addr(), UIPort)
	cert := s.uiCertificate(t, target)
	// The generated certificate names the address the appliance is reached at.
	if !slices.ContainsFunc(cert.IPAddresses, func(ip net.IP) bool { return ip.String() == QvDCAddr.Addr().String() }) {
		t.Errorf("the QvDC's UI certificate names %v, not its address %s", cert.IPAddresses, QvDCAddr.Addr())
	}
	base := "https://" + s.lab.WS.Proxy(t, target)

	t0 := time.Now()
	b := webtest.New(t, webtest.SPKIHash(cert))
	b.Login(base, AdminToken)
	row := fmt.Sprintf(`document.querySelector('#hosts tbody tr[data-key="%s"]')`, s.aID)
	b.Wait("node-a's row, ready", row+` && `+row+`.querySelector('.badge.phase-ready')`, APITimeout)
	t.Logf("login to node-a's row on the Hosts page: %v", time.Since(t0).Round(100*time.Millisecond))
	cells := webtest.Eval[[]string](b, `Array.from(`+row+`.cells).map(c => c.textContent)`)
	if len(cells) < 3 || cells[0] != hostA || cells[1] != nodeAStatic.Addr().String() || cells[2] != "Ready" {
		t.Errorf("node-a's row on the Hosts page = %q, want %s, %s, Ready first", cells, hostA, nodeAStatic.Addr())
	}
	b.NoErrors("hosts page")
	b.Screenshot("qvdc-hosts")
	if html := b.HTML(); strings.Contains(html, AdminToken) || strings.Contains(html, JoinToken) {
		t.Error("the Hosts page holds the admin or the join token")
	}
}

// uiCertificate reads the certificate the vDC's HTTPS listener presents, over the
// lab segment. Trust on first use, as an operator's first visit is: the test pins
// this key in the browser.
func (s *suite) uiCertificate(t *testing.T, target string) *x509.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := s.lab.WS.DialContext(ctx, "tcp", target)
	if err != nil {
		t.Fatalf("the vDC's web UI: %v", err)
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: QvDCAddr.Addr().String()})
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake with the vDC's web UI at %s: %v", target, err)
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		t.Fatalf("the vDC's web UI at %s presented no certificate", target)
	}
	return certs[0]
}
