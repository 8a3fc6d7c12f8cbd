package quantix

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os/exec"
	"strings"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testCA{c, key}
}

func (ca testCA) issue(t *testing.T, dns string, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dns},
		NotBefore: notBefore, NotAfter: notAfter, DNSNames: []string{dns},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestSPKIPinRecipe: the pin is the standard recipe, computed by the real openssl:
// openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum, base64url.
func TestSPKIPinRecipe(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("this test runs the real openssl: apt-get install openssl (%v)", err)
	}
	ca := newTestCA(t, "pin test")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	cmd := exec.Command("sh", "-c", "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum")
	cmd.Stdin = bytes.NewReader(certPEM)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl: %v", err)
	}
	sum, err := hex.DecodeString(strings.Fields(string(out))[0])
	if err != nil || len(sum) != sha256.Size {
		t.Fatalf("sha256sum printed %q", out)
	}
	want := base64.RawURLEncoding.EncodeToString(sum)
	if got := SPKIPin(ca.cert); got != want {
		t.Errorf("SPKIPin = %s, openssl recipe = %s", got, want)
	}
	if !ValidPin(want) || len(want) != 43 {
		t.Errorf("ValidPin(%q) = false or length %d, want a 43-character pin", want, len(want))
	}
}

func TestParseJoinToken(t *testing.T) {
	pin := strings.Repeat("A", 43)
	for _, tc := range []struct {
		in, pin, secret, err string
	}{
		{"qx1." + pin + ".0123456789abcdef", pin, "0123456789abcdef", ""},
		{FormatJoinToken(pin, "s3cr3t-s3cr3t-s3cr3t"), pin, "s3cr3t-s3cr3t-s3cr3t", ""},
		{"0123456789abcdef0123", "", "", "without the CA pin"},
		{"qx2." + pin + ".0123456789abcdef", "", "", "want qx1"},
		{"qx1.short.0123456789abcdef", "", "", `CA pin "short"`},
		{"qx1." + pin + ".short", "", "", "shorter than 16"},
		{"qx1." + pin + ".0123456789abcdef.extra", "", "", "want qx1"},
	} {
		p, s, err := ParseJoinToken(tc.in)
		if tc.err == "" {
			if err != nil || p != tc.pin || s != tc.secret {
				t.Errorf("ParseJoinToken(%q) = %q, %q, %v; want %q, %q", tc.in, p, s, err, tc.pin, tc.secret)
			}
			continue
		}
		if !errors.Is(err, ErrJoinToken) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseJoinToken(%q) = %v, want ErrJoinToken mentioning %q", tc.in, err, tc.err)
		}
	}
	if got := SecretOfJoinToken("qx1." + pin + ".0123456789abcdef"); got != "0123456789abcdef" {
		t.Errorf("SecretOfJoinToken(full) = %q", got)
	}
	if got := SecretOfJoinToken("lab-static-token-1234"); got != "lab-static-token-1234" {
		t.Errorf("SecretOfJoinToken(bare) = %q", got)
	}
}

func TestVerifyPinnedChain(t *testing.T) {
	now := time.Now()
	ca, other := newTestCA(t, "vdc agent CA"), newTestCA(t, "proxy CA")
	leaf := ca.issue(t, AgentRoleName, now.Add(-time.Minute), now.Add(time.Hour))
	pins := []string{SPKIPin(ca.cert)}
	if err := VerifyPinnedChain([]*x509.Certificate{leaf, ca.cert}, pins, now, nil); err != nil {
		t.Errorf("good chain: %v", err)
	}
	// A proxy with its own CA, even one presenting our CA's certificate next to a
	// leaf it signed itself.
	proxyLeaf := other.issue(t, AgentRoleName, now.Add(-time.Minute), now.Add(time.Hour))
	for name, chain := range map[string][]*x509.Certificate{
		"other CA":                 {proxyLeaf, other.cert},
		"our CA presented, forged": {proxyLeaf, ca.cert},
		"leaf only":                {leaf},
	} {
		if err := VerifyPinnedChain(chain, pins, now, nil); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "other CA" && !errors.Is(err, ErrPinMismatch) {
			t.Errorf("%s: %v, want ErrPinMismatch", name, err)
		}
	}
	// Named for another role: refused.
	wrongName := ca.issue(t, "www.example.com", now.Add(-time.Minute), now.Add(time.Hour))
	if err := VerifyPinnedChain([]*x509.Certificate{wrongName, ca.cert}, pins, now, nil); err == nil {
		t.Errorf("leaf for www.example.com accepted")
	}
	// A node clock years behind (no RTC, no NTP yet): accepted with a warning,
	// the pin still checked.
	var warned []string
	warn := func(m string) { warned = append(warned, m) }
	past := now.Add(-3 * 365 * 24 * time.Hour)
	if err := VerifyPinnedChain([]*x509.Certificate{leaf, ca.cert}, pins, past, warn); err != nil || len(warned) == 0 {
		t.Errorf("clock in the past: %v, warnings %q; want accepted with a warning", err, warned)
	}
	if err := VerifyPinnedChain([]*x509.Certificate{proxyLeaf, other.cert}, pins, past, warn); !errors.Is(err, ErrPinMismatch) {
		t.Errorf("clock in the past, other CA: %v, want ErrPinMismatch", err)
	}
	// Expired: refused.
	old := ca.issue(t, AgentRoleName, now.Add(-2*time.Hour), now.Add(-time.Hour))
	if err := VerifyPinnedChain([]*x509.Certificate{old, ca.cert}, pins, now, nil); err == nil {
		t.Errorf("expired leaf accepted")
	}
}
