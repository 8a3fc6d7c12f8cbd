package vdc

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

// Agent CA defaults (vdc.toml keys in parentheses).
const (
	DefaultAgentCALifetime   = 10 * 365 * 24 * time.Hour // agent_ca_lifetime
	DefaultAgentCAWarn       = 365 * 24 * time.Hour      // agent_ca_warn
	DefaultAgentCAOverlap    = 30 * 24 * time.Hour       // agent_ca_overlap
	DefaultAgentCertLifetime = 90 * 24 * time.Hour       // agent_cert_lifetime
)

// agentCAReload is how often a vDC rereads the CAs, so a rotation made through
// another vDC on the same database is announced here too.
const agentCAReload = 30 * time.Second

// agentCA keeps the agent CA (in PostgreSQL, shared by every vDC on the database)
// and this process's serving certificate issued from it: named AgentRoleName, never
// an address, and renewed at 2/3 of its lifetime on the next handshake (no restart).
// During a rotation's overlap it keeps serving from the old CA, whose pin every
// agent knows, while announcing both pins; at the end of the overlap it serves from
// the new one.
type agentCA struct {
	st                *store.Store
	log               *slog.Logger
	caLifetime        time.Duration
	certLifetime      time.Duration
	warnBefore        time.Duration
	overlap           time.Duration
	renewals, reloads atomic.Int64

	mu       sync.Mutex
	serving  store.AgentCA
	caCert   *x509.Certificate
	caKey    crypto.Signer
	next     []store.AgentCA
	skew     time.Duration // database clock minus ours
	switchAt time.Time     // local time the first next CA begins serving
	warned   bool
	cert     *tls.Certificate
	certPin  string // the CA cert was issued from
	renewAt  time.Time
}

// load reads the CAs (creating the first one) and makes the serving certificate.
func (k *agentCA) load(ctx context.Context) error {
	serving, next, dbNow, err := k.st.AgentCAs(ctx, k.generate)
	if err != nil {
		return err
	}
	caCert, caKey, err := parseCA(serving)
	if err != nil {
		return err
	}
	k.reloads.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.serving.Pin != "" && k.serving.Pin != serving.Pin {
		k.log.Info("serving agent certificates from the next CA: the rotation overlap ended", "old_pin", k.serving.Pin, "pin", serving.Pin)
	}
	k.serving, k.caCert, k.caKey, k.next = serving, caCert, caKey, next
	k.skew = dbNow.Sub(time.Now())
	k.switchAt = time.Time{}
	if len(next) > 0 {
		k.switchAt = next[0].ServingFrom.Add(-k.skew)
	}
	if left := time.Until(caCert.NotAfter); left < k.warnBefore && !k.warned {
		k.warned = true
		k.log.Warn("the agent CA expires soon: rotate it (qx-ctl ca rotate) before it does, or agents stop trusting this vDC",
			"pin", serving.Pin, "not_after", caCert.NotAfter, "left", left.Round(time.Hour))
	}
	_, err = k.certificateLocked(time.Now())
	return err
}

// run rereads the CAs every agentCAReload until ctx ends.
func (k *agentCA) run(ctx context.Context) {
	t := time.NewTicker(agentCAReload)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := k.load(ctx); err != nil && ctx.Err() == nil {
			k.log.Error("reload the agent CA", "err", err)
		}
	}
}

// switchIfDue rereads the CAs when a rotation's overlap has just ended, so that
// certificates, pins and status move to the next CA at once, on every vDC.
func (k *agentCA) switchIfDue() {
	k.mu.Lock()
	due := !k.switchAt.IsZero() && !time.Now().Before(k.switchAt)
	if due {
		k.switchAt = time.Time{} // one caller reloads; the others go on meanwhile
	}
	k.mu.Unlock()
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.load(ctx); err != nil {
		k.log.Error("switch to the next agent CA", "err", err)
		k.mu.Lock()
		k.switchAt = time.Now().Add(time.Second) // try again soon
		k.mu.Unlock()
	}
}

// getCertificate is tls.Config.GetCertificate for the agent listener.
func (k *agentCA) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.switchIfDue()
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.certificateLocked(time.Now())
}

func (k *agentCA) certificateLocked(now time.Time) (*tls.Certificate, error) {
	if k.cert != nil && k.certPin == k.serving.Pin && now.Before(k.renewAt) {
		return k.cert, nil
	}
	c, err := issueServing(k.caCert, k.caKey, now, k.certLifetime)
	if err != nil {
		if k.cert != nil {
			// The old certificate is still valid for a third of its life.
			k.log.Error("renew the agent serving certificate", "err", err)
			return k.cert, nil
		}
		return nil, err
	}
	if k.cert != nil {
		k.renewals.Add(1)
		k.log.Info("renewed the agent serving certificate", "ca_pin", k.serving.Pin, "not_after", c.Leaf.NotAfter)
	}
	// From the certificate's own end: X.509 times are whole seconds (and the CA's end
	// may come first), so now+lifetime could be past it with lifetimes of seconds.
	k.cert, k.certPin, k.renewAt = c, k.serving.Pin, now.Add(c.Leaf.NotAfter.Sub(now)*2/3)
	return c, nil
}

// Pins are the pins agents must trust now: the serving CA's and the next ones'.
func (k *agentCA) Pins() []string {
	k.switchIfDue()
	k.mu.Lock()
	defer k.mu.Unlock()
	pins := []string{k.serving.Pin}
	for _, n := range k.next {
		pins = append(pins, n.Pin)
	}
	return pins
}

// JoinTokenPin is the pin new join tokens carry: the serving CA's.
func (k *agentCA) JoinTokenPin() string {
	k.switchIfDue()
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.serving.Pin
}

// Status is GET /api/v1/agent-ca.
func (k *agentCA) Status() quantix.AgentCAStatus {
	k.switchIfDue()
	k.mu.Lock()
	defer k.mu.Unlock()
	wire := func(c store.AgentCA) quantix.AgentCA {
		return quantix.AgentCA{Pin: c.Pin, NotBefore: c.NotBefore, NotAfter: c.NotAfter, ServingFrom: c.ServingFrom, CertPEM: c.CertPEM}
	}
	st := quantix.AgentCAStatus{Serving: wire(k.serving), Pins: []string{k.serving.Pin}, JoinTokenPin: k.serving.Pin,
		ExpiresInSeconds: int64(time.Until(k.serving.NotAfter) / time.Second)}
	for i, n := range k.next {
		st.Pins = append(st.Pins, n.Pin)
		if i == 0 {
			w := wire(n)
			st.Next = &w
		}
	}
	if left := time.Until(k.serving.NotAfter); left < k.warnBefore {
		st.Warning = fmt.Sprintf("the agent CA %s expires on %s (in %d days): rotate it (qx-ctl ca rotate) before then",
			k.serving.Pin, k.serving.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))
	}
	return st
}

// Rotate creates the next CA; it serves after the overlap.
func (k *agentCA) Rotate(ctx context.Context) (quantix.AgentCAStatus, error) {
	if _, err := k.st.RotateAgentCA(ctx, k.generate, k.overlap); err != nil {
		return quantix.AgentCAStatus{}, err
	}
	if err := k.load(ctx); err != nil {
		return quantix.AgentCAStatus{}, err
	}
	return k.Status(), nil
}

// generate makes a new ECDSA P-256 CA.
func (k *agentCA) generate() (store.AgentCA, error) {
	return NewAgentCA(time.Now(), k.caLifetime)
}

// NewAgentCA makes a self-signed ECDSA P-256 CA for agent traffic valid from now
// for lifetime.
func NewAgentCA(now time.Time, lifetime time.Duration) (store.AgentCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return store.AgentCA{}, fmt.Errorf("generate agent CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Quantix vDC agent CA " + now.UTC().Format("2006-01-02T15:04:05Z"), Organization: []string{"Quantix"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return store.AgentCA{}, fmt.Errorf("create agent CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return store.AgentCA{}, fmt.Errorf("parse agent CA: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return store.AgentCA{}, fmt.Errorf("encode agent CA key: %w", err)
	}
	return store.AgentCA{Pin: quantix.SPKIPin(cert), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		KeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))}, nil
}

func parseCA(ca store.AgentCA) (*x509.Certificate, crypto.Signer, error) {
	cb, _ := pem.Decode([]byte(ca.CertPEM))
	kb, _ := pem.Decode([]byte(ca.KeyPEM))
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("agent CA %d (%s): the stored certificate or key is not PEM", ca.ID, ca.Pin)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA %d (%s): %w", ca.ID, ca.Pin, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	signer, ok := k.(crypto.Signer)
	if err != nil || !ok {
		return nil, nil, fmt.Errorf("agent CA %d (%s): the stored key is not a PKCS#8 signing key: %v", ca.ID, ca.Pin, err)
	}
	if quantix.SPKIPin(cert) != ca.Pin {
		return nil, nil, fmt.Errorf("agent CA %d: its certificate's pin is %s, the row says %s", ca.ID, quantix.SPKIPin(cert), ca.Pin)
	}
	return cert, signer, nil
}

// issueServing issues a serving certificate for AgentRoleName from the CA, and
// returns it with the CA in its chain (agents look for the pinned CA there).
func issueServing(ca *x509.Certificate, caKey crypto.Signer, now time.Time, lifetime time.Duration) (*tls.Certificate, error) {
	if ca == nil {
		return nil, errors.New("issue agent serving certificate: no CA loaded")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate agent serving key: %w", err)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: quantix.AgentRoleName, Organization: []string{"Quantix"}},
		// A minute back: a node clock slightly behind still accepts it without
		// the clock warning.
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{quantix.AgentRoleName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue agent serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse agent serving certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
