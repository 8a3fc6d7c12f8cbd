// Package client is a typed Go client of the vDC's admin HTTP API v1 (docs/design.md
// §5 and vdc/README.md): the node registry, node history, maintenance, the VM and
// storage pool inventory, join tokens, readiness and metrics, and a node's
// registration for tools that act as many nodes (qx-vdc-load). It speaks the wire
// types of package quantix, and every error says what failed: a non-2xx answer is
// an *Error carrying the HTTP status and the vDC's {"error": ...} message, a failed
// connection is a *TransportError.
// Callers branch with errors.Is on ErrNotFound, ErrUnauthorized and ErrUnavailable.
//
// qx-ctl is built on it; tests and other tools may use it too.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
)

// Sentinels for errors.Is.
var (
	// ErrNotFound: the vDC answered 404, or no node has the id or hostname asked for.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the vDC answered 401 (missing or wrong admin token).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnavailable: the vDC could not be reached (refused, timeout, reset) or
	// answered 502, 503 or 504. Trying again later may help; a TLS certificate that
	// cannot be verified is not this.
	ErrUnavailable = errors.New("vDC unreachable or unavailable")
	// ErrAmbiguous: a node reference names two different nodes.
	ErrAmbiguous = errors.New("ambiguous node reference")
)

// MaxResponseBytes bounds an answer: a registry of 10,000 nodes is a few MB, so this
// leaves room for very large inventories while refusing a runaway body.
const MaxResponseBytes = 256 << 20

// Error is a non-2xx answer of the vDC.
type Error struct {
	Method  string
	Path    string
	Status  int
	Message string // the vDC's {"error": ...}, or the start of the body
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %s (HTTP %d %s)", e.Method, e.Path, e.Message, e.Status, http.StatusText(e.Status))
}

// Is matches ErrNotFound (404), ErrUnauthorized (401) and ErrUnavailable (502, 503, 504).
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrUnavailable:
		return e.Status == http.StatusBadGateway || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout
	}
	return false
}

// TransportError is a request that got no HTTP answer: the connection was refused,
// timed out or broke, or the TLS handshake failed.
type TransportError struct {
	Method string
	URL    string
	Err    error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.Method, e.URL, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// Is matches ErrUnavailable unless the failure is a TLS certificate or protocol
// problem, which waiting does not fix.
func (e *TransportError) Is(target error) bool {
	return target == ErrUnavailable && !IsTLSError(e.Err)
}

// IsTLSError reports whether err comes from verifying the server's certificate or
// from a TLS handshake with something that does not speak TLS.
func IsTLSError(err error) bool {
	var (
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		he  x509.HostnameError
		cie x509.CertificateInvalidError
		rhe tls.RecordHeaderError
	)
	return errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &he) ||
		errors.As(err, &cie) || errors.As(err, &rhe)
}

// Config configures a Client.
type Config struct {
	// URL is the vDC's base URL, e.g. "https://vdc.example:8443"; a path prefix (a
	// reverse proxy) is kept.
	URL string
	// Token is the admin bearer token.
	Token string
	// HTTPClient sends the requests; nil means a client with the default transport.
	// Deadlines come from the contexts passed to each call.
	HTTPClient *http.Client
	// UserAgent is sent with every request; "" means "quantix-client/<version>".
	UserAgent string
}

// Client calls the vDC admin API. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
	ua    string
}

// New checks cfg and returns a client. It does not contact the vDC.
func New(cfg Config) (*Client, error) {
	base, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	ua := cfg.UserAgent
	if ua == "" {
		ua = "quantix-client/" + quantix.Version
	}
	return &Client{base: base, token: cfg.Token, hc: hc, ua: ua}, nil
}

// URL returns the base URL requests go to (no trailing slash).
func (c *Client) URL() string { return c.base }

// ParseURL checks a vDC base URL (http or https, a host, no credentials, query or
// fragment) and returns it without a trailing slash.
func ParseURL(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("vDC URL is empty")
	}
	if !strings.Contains(s, "://") {
		return "", fmt.Errorf("vDC URL %q: want an http:// or https:// URL", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("vDC URL %q: %w", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("vDC URL %q: want an http:// or https:// URL", s)
	case u.Host == "":
		return "", fmt.Errorf("vDC URL %q: no host", s)
	case u.User != nil:
		// Credentials in a URL end up in error messages and shell history.
		return "", fmt.Errorf("vDC URL %s://%s: must not hold credentials (the admin token is sent as a bearer token)", u.Scheme, u.Host)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("vDC URL %q: must not have a query or fragment", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// TLSConfig returns the TLS settings for a vDC with a certificate of its own:
// caFile (PEM, one or more certificates) is trusted in addition to the system roots.
// insecure turns certificate verification off; callers must say so loudly.
func TLSConfig(caFile string, insecure bool) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA certificate %s: no PEM certificate found", caFile)
		}
		cfg.RootCAs = pool
	}
	cfg.InsecureSkipVerify = insecure
	return cfg, nil
}

// do sends one request with the admin token and decodes a 2xx JSON answer into
// out (unless nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	_, err := c.send(ctx, method, path, c.token, in, out)
	return err
}

// send sends one request with bearer (none for "") and decodes a 2xx JSON answer
// into out (unless nil); it returns the HTTP status.
func (c *Client) send(ctx context.Context, method, path, bearer string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	status, data, err := c.roundTrip(ctx, method, path, bearer, body)
	if err != nil || out == nil {
		return status, err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return status, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return status, nil
}

// roundTrip sends one request and returns the status and body of a 2xx answer.
func (c *Client) roundTrip(ctx context.Context, method, path, bearer string, body io.Reader) (int, []byte, error) {
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	return c.roundTripType(ctx, method, path, bearer, ct, -1, body)
}

// roundTripType is roundTrip with a body of contentType and size (-1: unknown).
func (c *Client) roundTripType(ctx context.Context, method, path, bearer, contentType string, size int64, body io.Reader) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if size >= 0 {
		req.ContentLength = size
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error repeats method and URL; keep only its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, nil, &TransportError{Method: method, URL: c.base + path, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return resp.StatusCode, nil, &TransportError{Method: method, URL: c.base + path, Err: fmt.Errorf("read answer: %w", err)}
	}
	if len(data) > MaxResponseBytes {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: answer is larger than %d bytes", method, path, MaxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, nil, &Error{Method: method, Path: path, Status: resp.StatusCode, Message: errorMessage(data)}
	}
	return resp.StatusCode, data, nil
}

// errorMessage extracts {"error": ...}, else the start of the body.
func errorMessage(data []byte) string {
	var e quantix.Error
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return e.Error
	}
	msg := strings.TrimSpace(string(data))
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	if msg == "" {
		msg = "(empty answer)"
	}
	return msg
}

// Healthz is nil when the vDC process answers /healthz.
func (c *Client) Healthz(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, quantix.PathHealthz, nil, nil)
}

// Readyz is nil when the vDC answers /readyz: its database is reachable and its
// schema current.
func (c *Client) Readyz(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, quantix.PathReadyz, nil, nil)
}

// Metrics returns the unlabelled samples of the vDC's Prometheus /metrics by name.
func (c *Client) Metrics(ctx context.Context) (map[string]float64, error) {
	_, data, err := c.roundTrip(ctx, http.MethodGet, quantix.PathMetrics, c.token, nil)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.Contains(f[0], "{") {
			continue
		}
		name := f[0]
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return nil, fmt.Errorf("GET %s: sample %q: %w", quantix.PathMetrics, line, err)
		}
		m[name] = v
	}
	return m, nil
}

// Register registers a node as its agent does (docs/design.md §4), authorised by
// joinToken instead of the admin token ("" when the body's node_secret is the
// node's own). The answer must agree with its HTTP status: 201 Created exactly for
// a new node ("registered").
func (c *Client) Register(ctx context.Context, joinToken string, req quantix.RegisterRequest) (quantix.RegisterResponse, error) {
	var r quantix.RegisterResponse
	status, err := c.send(ctx, http.MethodPost, quantix.PathRegister, joinToken, req, &r)
	if err != nil {
		return r, err
	}
	if r.NodeID == "" {
		return r, fmt.Errorf("POST %s: the vDC answered without a node_id", quantix.PathRegister)
	}
	if created := status == http.StatusCreated; created != (r.Registration == quantix.RegistrationRegistered) {
		return r, fmt.Errorf("POST %s: HTTP %d with registration %q: 201 Created goes with %q and only with it",
			quantix.PathRegister, status, r.Registration, quantix.RegistrationRegistered)
	}
	return r, nil
}

// Nodes lists the registry.
func (c *Client) Nodes(ctx context.Context) ([]quantix.Node, error) {
	var l quantix.NodeList
	err := c.do(ctx, http.MethodGet, quantix.PathNodes, nil, &l)
	return l.Nodes, err
}

// Node returns one node by id.
func (c *Client) Node(ctx context.Context, id string) (quantix.Node, error) {
	var n quantix.Node
	err := c.do(ctx, http.MethodGet, quantix.PathNode(url.PathEscape(id)), nil, &n)
	return n, err
}

// DeleteNode removes a node from the registry. Its history stays. A node with
// managed VMs is refused (409) unless DeleteNodeForce.
func (c *Client) DeleteNode(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, quantix.PathNode(url.PathEscape(id)), nil, nil)
}

// DeleteNodeForce removes a node and the managed VMs assigned to it.
func (c *Client) DeleteNodeForce(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, quantix.PathNode(url.PathEscape(id))+"?force=1", nil, nil)
}

// NodeEvents returns a node's history, oldest first.
func (c *Client) NodeEvents(ctx context.Context, id string) ([]quantix.NodeEvent, error) {
	var l struct {
		Events []quantix.NodeEvent `json:"events"`
	}
	err := c.do(ctx, http.MethodGet, quantix.PathEvents(url.PathEscape(id)), nil, &l)
	return l.Events, err
}

// SetMaintenance puts a node into maintenance (on) or takes it out, and returns the
// node as the vDC answers it.
func (c *Client) SetMaintenance(ctx context.Context, id string, on bool) (quantix.Node, error) {
	var n quantix.Node
	err := c.do(ctx, http.MethodPut, quantix.PathNode(url.PathEscape(id))+"/maintenance", map[string]bool{"maintenance": on}, &n)
	return n, err
}

// VMs returns the VM inventory of every node.
func (c *Client) VMs(ctx context.Context) ([]quantix.InventoryVM, error) {
	var l quantix.VMList
	err := c.do(ctx, http.MethodGet, quantix.PathVMs, nil, &l)
	return l.VMs, err
}

// Pools returns the storage pool inventory of every node.
func (c *Client) Pools(ctx context.Context) ([]quantix.InventoryPool, error) {
	var l quantix.PoolList
	err := c.do(ctx, http.MethodGet, quantix.PathPools, nil, &l)
	return l.StoragePools, err
}

// AgentCA returns the agent CA's state (pins, expiry, a rotation in progress).
func (c *Client) AgentCA(ctx context.Context) (quantix.AgentCAStatus, error) {
	var st quantix.AgentCAStatus
	err := c.do(ctx, http.MethodGet, quantix.PathAgentCA, nil, &st)
	return st, err
}

// RotateAgentCA starts an agent CA rotation: the next CA serves after the overlap.
func (c *Client) RotateAgentCA(ctx context.Context) (quantix.AgentCAStatus, error) {
	var st quantix.AgentCAStatus
	err := c.do(ctx, http.MethodPost, quantix.PathAgentCARotate, struct{}{}, &st)
	return st, err
}

// RotateAdminToken replaces the cluster's admin token; the answer holds the new one,
// the only time the vDC shows it. The client goes on using the old token: make a
// new client with the new one.
func (c *Client) RotateAdminToken(ctx context.Context) (quantix.AdminTokenRotation, error) {
	var rot quantix.AdminTokenRotation
	err := c.do(ctx, http.MethodPost, quantix.PathAdminTokenRotate, struct{}{}, &rot)
	if err == nil && rot.AdminToken == "" {
		return rot, fmt.Errorf("POST %s: the vDC answered without a token", quantix.PathAdminTokenRotate)
	}
	return rot, err
}

// CreateJoinToken creates a join token; its secret is in the answer only.
func (c *Client) CreateJoinToken(ctx context.Context, req quantix.JoinTokenRequest) (quantix.JoinToken, error) {
	var tok quantix.JoinToken
	err := c.do(ctx, http.MethodPost, quantix.PathJoinTokens, req, &tok)
	if err == nil && tok.Token == "" {
		err = fmt.Errorf("POST %s: the vDC answered without a token", quantix.PathJoinTokens)
	}
	return tok, err
}
