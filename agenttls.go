package quantix

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// This file is the agent transport contract (docs/design.md §15): the role name the
// vDC's agent certificates carry, the CA pin, the join token format that carries it
// and the TLS client configuration that checks it.

// AgentRoleName is the DNS name in every vDC serving certificate for agents, and the
// name agents verify. It names the role, never a host or an address, so a vDC that is
// renumbered or reached through another address keeps working.
const AgentRoleName = "vdc.quantix.internal"

// JoinTokenPrefix starts every join token: qx1.<pin>.<secret>.
const JoinTokenPrefix = "qx1"

// PathAgentCA is GET (admin): the agent CA's state; PathAgentCARotate is POST (admin):
// create the next CA.
const (
	PathAgentCA       = "/api/v1/agent-ca"
	PathAgentCARotate = "/api/v1/agent-ca/rotate"
)

// Sentinel errors of the agent transport.
var (
	// ErrJoinToken is wrapped when a join token is not qx1.<pin>.<secret>.
	ErrJoinToken = errors.New("malformed join token")
	// ErrPinMismatch is wrapped when the server's chain holds no pinned CA.
	ErrPinMismatch = errors.New("the vDC's certificate chain matches no trusted CA pin")
)

// SPKIPin is the pin of a certificate's public key: base64url (no padding) of the
// SHA-256 of its DER SubjectPublicKeyInfo, the kubeadm/k3s "CA hash" recipe:
// openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum.
func SPKIPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// ValidPin reports whether s has the form of a pin (43 base64url characters).
func ValidPin(s string) bool {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

// FormatJoinToken returns the full join token for a CA pin and a secret.
func FormatJoinToken(pin, secret string) string {
	return JoinTokenPrefix + "." + pin + "." + secret
}

// ParseJoinToken splits qx1.<pin>.<secret>. A token without the pin (the form of
// releases before transport security) is refused: the agent could not know whom it
// sends the secret to.
func ParseJoinToken(s string) (pin, secret string, err error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != JoinTokenPrefix {
		return "", "", fmt.Errorf("%w: want %s.<CA pin>.<secret> (qx-ctl tokens create, or the vDC's join-token page, "+
			"shows the full token; a token without the CA pin is no longer accepted)", ErrJoinToken, JoinTokenPrefix)
	}
	if !ValidPin(parts[1]) {
		return "", "", fmt.Errorf("%w: the CA pin %q is not 43 base64url characters (sha256)", ErrJoinToken, parts[1])
	}
	if len(parts[2]) < 16 || strings.ContainsAny(parts[2], " \t\r\n") {
		return "", "", fmt.Errorf("%w: the secret is shorter than 16 characters or holds white space", ErrJoinToken)
	}
	return parts[1], parts[2], nil
}

// SecretOfJoinToken is the secret part of a full token, or s itself when it is not
// one (the vDC's static tokens may be written either way).
func SecretOfJoinToken(s string) string {
	if _, sec, err := ParseJoinToken(s); err == nil {
		return sec
	}
	return s
}

// PinnedTLS returns the agents' TLS client configuration: the server must present a
// chain holding a CA whose public key has one of pins, and a leaf that this CA
// signed for AgentRoleName. System roots play no part. clockWarning, when not nil,
// is told when the local clock is before a certificate's validity (a node without
// RTC or NTP yet): the chain and the pin are still checked, at the certificate's own
// start time; the pin is never skipped. An expired certificate is refused.
func PinnedTLS(pins []string, clockWarning func(msg string)) *tls.Config {
	pins = slices.Clone(pins)
	return PinnedTLSFunc(func() []string { return pins }, clockWarning)
}

// PinnedTLSFunc is PinnedTLS with pins read at each handshake: the agent's trusted
// pins follow a CA rotation without a new transport.
func PinnedTLSFunc(pins func() []string, clockWarning func(msg string)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: AgentRoleName,
		// The standard verification is replaced, not skipped: VerifyConnection below
		// runs on every handshake, before any application data is sent.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyPinnedChain(cs.PeerCertificates, pins(), time.Now(), clockWarning)
		},
	}
}

// VerifyPinnedChain is PinnedTLS's check of a presented chain (leaf first) at now.
func VerifyPinnedChain(certs []*x509.Certificate, pins []string, now time.Time, clockWarning func(string)) error {
	if len(certs) == 0 {
		return fmt.Errorf("%w: the server presented no certificate", ErrPinMismatch)
	}
	if len(pins) == 0 {
		return fmt.Errorf("%w: this node trusts no CA pin yet (configure a %s.<pin>.<secret> join token)", ErrPinMismatch, JoinTokenPrefix)
	}
	leaf := certs[0]
	var seen []string
	for _, ca := range certs[1:] {
		pin := SPKIPin(ca)
		seen = append(seen, pin)
		if !slices.Contains(pins, pin) {
			continue
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		at := now
		for _, c := range []*x509.Certificate{leaf, ca} {
			if at.Before(c.NotBefore) {
				if clockWarning != nil {
					clockWarning(fmt.Sprintf("the local clock (%s) is before the vDC certificate's start (%s): "+
						"checked the chain and the CA pin at that start; set the clock (NTP)", now.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339)))
				}
				at = c.NotBefore.Add(time.Second)
			}
		}
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: AgentRoleName, Roots: roots, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			return fmt.Errorf("the vDC's certificate does not verify against its pinned CA %s for %s: %w", pin, AgentRoleName, err)
		}
		return nil
	}
	return fmt.Errorf("%w: trusted %v, the server's chain holds %v (subject %q): check the join token's pin "+
		"(qx-ctl ca show on the vDC) and that nothing between this node and the vDC terminates TLS", ErrPinMismatch,
		pins, seen, leaf.Subject.String())
}
