package vdc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/quantix/quantix"
)

// Files of the generated self-signed certificate, in TLSDir.
const (
	TLSCertName = "cert.pem"
	TLSKeyName  = "key.pem"
)

// selfSignedValidity is how long a generated certificate lasts; an expired one is
// replaced at the next start.
const selfSignedValidity = 5 * 365 * 24 * time.Hour

// TLSDir is where the generated certificate lives: next to secrets.toml
// (/quantix/vdc/tls on the appliance), so it survives reboots with the rest of the
// vDC's configuration.
func (c *Config) TLSDir() string { return filepath.Join(filepath.Dir(c.SecretsFile), "tls") }

// loadTLS returns the UI's certificate: the configured tls_cert/tls_key pair, else
// the generated self-signed one, created at the first start and reused after.
func (s *Service) loadTLS() (tls.Certificate, error) {
	if s.cfg.TLSCert != "" {
		c, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return c, fmt.Errorf("%w: tls_cert %s / tls_key %s: %v", quantix.ErrConfig, s.cfg.TLSCert, s.cfg.TLSKey, err)
		}
		return c, nil
	}
	dir := s.cfg.TLSDir()
	certPath, keyPath := filepath.Join(dir, TLSCertName), filepath.Join(dir, TLSKeyName)
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	switch {
	case err == nil:
		leaf, perr := x509.ParseCertificate(c.Certificate[0])
		if perr == nil && time.Now().Before(leaf.NotAfter.Add(-24*time.Hour)) {
			return c, nil
		}
		s.log.Warn("the generated UI certificate expired; creating a new one", "cert", certPath)
	case errors.Is(err, fs.ErrNotExist):
	default:
		// A broken file is the operator's to look at: never overwrite it silently.
		return c, fmt.Errorf("%w: UI certificate %s / %s: %v (delete both to generate a new one, or set tls_cert and tls_key)",
			quantix.ErrConfig, certPath, keyPath, err)
	}
	certPEM, keyPEM, err := SelfSignedCertificate(time.Now())
	if err != nil {
		return c, err
	}
	// The key first: a crash between the two writes leaves a key without a
	// certificate, which the next start reports instead of pairing wrongly.
	if err := quantix.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return c, fmt.Errorf("store UI key: %w", err)
	}
	if err := quantix.WriteFileAtomic(certPath, certPEM, 0o600); err != nil {
		return c, fmt.Errorf("store UI certificate: %w", err)
	}
	s.log.Info("generated a self-signed UI certificate", "cert", certPath)
	return tls.X509KeyPair(certPEM, keyPEM)
}

// SelfSignedCertificate makes an ECDSA P-256 certificate for this machine: its
// hostname, localhost and every local address (127.0.0.1 and ::1 included).
func SelfSignedCertificate(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate UI key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("generate UI certificate serial: %w", err)
	}
	names := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		names = append([]string{h}, names...)
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !slices.ContainsFunc(ips, n.IP.Equal) {
				ips = append(ips, n.IP)
			}
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"Quantix vDC (self-signed)"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              names,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create UI certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode UI key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}
