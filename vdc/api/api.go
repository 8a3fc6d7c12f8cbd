// Package api is the vDC's HTTP API v1 (docs/design.md §5): registration, heartbeats and
// node state from the agents, the admin registry and inventory, join tokens, and
// /healthz, /readyz, /metrics. It validates every input and maps each problem to a
// 4xx naming the field; 5xx only ever means the vDC itself failed.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

// Config configures the API.
type Config struct {
	Store             *store.Store
	Heartbeats        *store.Batcher
	HeartbeatInterval time.Duration
	// Admin checks the admin bearer token against the cluster's digest (cached:
	// no query per request) and rotates it.
	Admin   *store.AdminAuth
	Metrics *Metrics
	// AgentURLs is announced to agents (vdc.toml agent_urls).
	AgentURLs []string
	// AgentCA is the CA agents pin (docs/design.md §15).
	AgentCA AgentCA
	// Desired wakes desired-state long-polls; nil answers them without waiting.
	Desired *store.Listener
	// DataDir holds the image files; MaxImageBytes bounds one upload.
	DataDir       string
	MaxImageBytes int64
	// TrustedKeysFiles hold the release keys uploaded bundles must be signed by
	// (one quantix.PublicKey a line; a missing file adds none).
	TrustedKeysFiles []string
	// Version is the vDC's own version (quantix.Version): no node is upgraded
	// past it, and the vDC's own upgrade goes only forward from it.
	Version string
	// Init is the local qx-init that runs this vDC on its appliance (the
	// controller endpoints); Hostname names this vDC in its own upgrade events
	// ("": os.Hostname()).
	Init     quantix.InitClient
	Hostname string
}

// AgentCA is what the API needs of the agent CA: the pins to announce, the state to
// show, and a rotation.
type AgentCA interface {
	Pins() []string
	JoinTokenPin() string
	Status() quantix.AgentCAStatus
	Rotate(ctx context.Context) (quantix.AgentCAStatus, error)
}

// API serves the vDC's HTTP API.
type API struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
	// unavailableLogged is when a 503 for an unavailable database was last logged
	// (unix nanoseconds): once a second, not once per request of a whole fleet.
	unavailableLogged atomic.Int64
}

// Default join token limits.
const (
	DefaultJoinTokenTTL  = 24 * time.Hour
	MaxJoinTokenTTL      = 365 * 24 * time.Hour
	DefaultJoinTokenUses = 1
	MaxJoinTokenUses     = 1_000_000
)

// New builds the API.
func New(cfg Config, log *slog.Logger) *API {
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	a := &API{cfg: cfg, log: log, mux: http.NewServeMux()}
	m := a.mux
	m.HandleFunc("POST "+quantix.PathRegister, a.register)
	m.HandleFunc("POST "+quantix.PathNodes+"/{id}/heartbeat", a.heartbeat)
	m.HandleFunc("PUT "+quantix.PathNodes+"/{id}/state", a.putState)
	m.HandleFunc("POST "+quantix.PathNodes+"/{id}/events", a.postEvents)
	m.HandleFunc("GET "+quantix.PathNodes+"/{id}/desired", a.desired)
	m.HandleFunc("GET "+quantix.PathNodes+"/{id}/images/{image}", a.nodeImage)
	m.HandleFunc("PUT "+quantix.PathNodes+"/{id}/vms/{vm}/console", a.putConsole)
	m.HandleFunc("GET "+quantix.PathNodes+"/{id}/releases/{release}/{name}", a.nodeRelease)

	m.HandleFunc("GET "+quantix.PathNodes, a.admin(a.listNodes))
	m.HandleFunc("GET "+quantix.PathNodes+"/{id}", a.admin(a.getNode))
	m.HandleFunc("DELETE "+quantix.PathNodes+"/{id}", a.admin(a.deleteNode))
	m.HandleFunc("GET "+quantix.PathNodes+"/{id}/events", a.admin(a.nodeEvents))
	m.HandleFunc("PUT "+quantix.PathNodes+"/{id}/maintenance", a.admin(a.maintenance))
	m.HandleFunc("GET "+quantix.PathVMs, a.admin(a.listVMs))
	m.HandleFunc("POST "+quantix.PathVMs, a.admin(a.createVM))
	m.HandleFunc("GET "+quantix.PathVMs+"/{ref}", a.admin(a.getVM))
	m.HandleFunc("PATCH "+quantix.PathVMs+"/{ref}", a.admin(a.patchVM))
	m.HandleFunc("DELETE "+quantix.PathVMs+"/{ref}", a.admin(a.deleteVM))
	m.HandleFunc("POST "+quantix.PathVMs+"/{ref}/actions", a.admin(a.vmAction))
	m.HandleFunc("GET "+quantix.PathVMs+"/{ref}/console", a.admin(a.vmConsole))
	m.HandleFunc("GET "+quantix.PathVMs+"/{ref}/events", a.admin(a.vmEvents))
	m.HandleFunc("GET "+quantix.PathImages, a.admin(a.listImages))
	m.HandleFunc("POST "+quantix.PathImages, a.admin(a.uploadImage))
	m.HandleFunc("GET "+quantix.PathImages+"/{ref}", a.admin(a.getImage))
	m.HandleFunc("DELETE "+quantix.PathImages+"/{ref}", a.admin(a.deleteImage))
	m.HandleFunc("GET "+quantix.PathReleases, a.admin(a.listReleases))
	m.HandleFunc("POST "+quantix.PathReleases, a.admin(a.uploadRelease))
	m.HandleFunc("GET "+quantix.PathReleases+"/{ref}", a.admin(a.getRelease))
	m.HandleFunc("DELETE "+quantix.PathReleases+"/{ref}", a.admin(a.deleteRelease))
	m.HandleFunc("GET "+quantix.PathUpgrades, a.admin(a.listUpgrades))
	m.HandleFunc("POST "+quantix.PathUpgrades, a.admin(a.startUpgrade))
	m.HandleFunc("GET "+quantix.PathUpgrades+"/{id}", a.admin(a.getUpgrade))
	m.HandleFunc("POST "+quantix.PathUpgrades+"/{id}/cancel", a.admin(a.cancelUpgrade))
	m.HandleFunc("GET "+quantix.PathController, a.admin(a.controller))
	m.HandleFunc("POST "+quantix.PathControllerUpgrade, a.admin(a.upgradeController))
	m.HandleFunc("GET "+quantix.PathPools, a.admin(a.listPools))
	m.HandleFunc("POST "+quantix.PathJoinTokens, a.admin(a.createJoinToken))
	m.HandleFunc("GET "+quantix.PathAgentCA, a.admin(a.agentCA))
	m.HandleFunc("POST "+quantix.PathAgentCARotate, a.admin(a.rotateAgentCA))
	m.HandleFunc("POST "+quantix.PathAdminTokenRotate, a.admin(a.rotateAdminToken))

	m.HandleFunc("GET "+quantix.PathHealthz, a.healthz)
	m.HandleFunc("GET "+quantix.PathReadyz, a.readyz)
	m.HandleFunc("GET "+quantix.PathMetrics, a.metrics)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return a
}

// Metrics returns the API's metrics.
func (a *API) Metrics() *Metrics { return a.cfg.Metrics }

// ServeHTTP serves a request and records its latency by route.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	a.mux.ServeHTTP(sw, r)
	route := r.Pattern
	if i := strings.IndexByte(route, ' '); i >= 0 {
		route = route[i+1:]
	}
	if route == "/" || route == "" {
		route = "unmatched"
	}
	a.cfg.Metrics.Observe(r.Method, route, sw.code, time.Since(start))
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

// Unwrap lets http.ResponseController reach the connection (long-polls and image
// transfers set their own deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// httpError is an error with its status code and client-facing message.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="quantix-vdc"`)
	}
	writeJSON(w, code, quantix.Error{Error: msg})
}

// fail answers err: client errors with their message, store errors by kind, and
// anything else as a 500 whose details go to the log only.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	var te *store.TakeoverError
	var ce *store.ConflictError
	var re *store.RefusedError
	fe, isField := quantix.ErrFieldError(err)
	switch {
	case errors.As(err, &he):
		writeError(w, he.code, he.msg)
	case isField:
		writeError(w, http.StatusBadRequest, fe.Error())
	case errors.As(err, &te):
		writeError(w, http.StatusConflict, te.Error())
	case errors.As(err, &ce):
		writeError(w, http.StatusConflict, ce.Error())
	case errors.As(err, &re):
		writeError(w, http.StatusUnprocessableEntity, re.Error())
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, store.ErrUnauthorized):
		writeError(w, http.StatusUnauthorized, err.Error())
	case errors.Is(err, store.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case r.Context().Err() == nil && a.cfg.Store.Unavailable(err):
		// No primary now (a failover, a partition): the client retries.
		if now, last := time.Now().UnixNano(), a.unavailableLogged.Load(); now-last > int64(time.Second) &&
			a.unavailableLogged.CompareAndSwap(last, now) {
			a.log.Warn("database unavailable: answering 503", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "database unavailable, retry: "+err.Error())
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
	default:
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error; see the vDC log")
	}
}

// decode reads one JSON object of at most MaxRequestBytes into v, refusing unknown
// fields, and names the problem.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, quantix.MaxRequestBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = terr
			if err == nil {
				return badRequest("request body holds more than one JSON value")
			}
		}
	}
	if err == nil {
		return nil
	}
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		ute *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mbe):
		return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty: want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is truncated JSON")
	case errors.As(err, &se):
		return badRequest("request body is not valid JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &ute):
		if ute.Field == "" {
			return badRequest("request body is a JSON %s, want an object", ute.Value)
		}
		return badRequest("field %q: got JSON %s, want %s", jsonField(ute.Field), ute.Value, ute.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest("unknown field %s in request body", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return badRequest("request body: %v", err)
}

// jsonField drops the Go names of embedded structs from a JSON field path
// ("VMSpec.vcpus" is "vcpus" on the wire); wire names are lower case.
func jsonField(path string) string {
	parts := strings.Split(path, ".")
	out := parts[:0]
	for _, p := range parts {
		if p != "" && (p[0] < 'A' || p[0] > 'Z') {
			out = append(out, p)
		}
	}
	return strings.Join(out, ".")
}

// bearer returns the Authorization bearer token, or "".
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	const p = "Bearer "
	if len(h) > len(p) && strings.EqualFold(h[:len(p)], p) {
		return strings.TrimSpace(h[len(p):])
	}
	return ""
}

// adminKey marks a request context as admin-authorized by an in-process layer.
type adminKey struct{}

// WithAdmin returns ctx marked as admin-authorized. Only in-process callers that
// authenticated the admin another way use it: the web UI after checking its session
// cookie and, for state-changing requests, its CSRF token. Nothing a client sends
// can set it, and the API itself never looks at cookies, so a cookie alone never
// authorizes anything.
func WithAdmin(ctx context.Context) context.Context { return context.WithValue(ctx, adminKey{}, true) }

// IsAdmin says whether ctx was marked by WithAdmin.
func IsAdmin(ctx context.Context) bool {
	ok, _ := ctx.Value(adminKey{}).(bool)
	return ok
}

// admin guards an admin handler with the admin bearer token (or WithAdmin).
func (a *API) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if IsAdmin(r.Context()) {
			h(w, r)
			return
		}
		tok := bearer(r)
		if tok == "" {
			writeError(w, http.StatusUnauthorized, "missing admin token (Authorization: Bearer <admin token>)")
			return
		}
		ok, err := a.cfg.Admin.Check(r.Context(), tok)
		if err != nil {
			a.unavailable(w, r, err)
			return
		}
		if !ok {
			writeError(w, http.StatusUnauthorized, "wrong admin token")
			return
		}
		h(w, r)
	}
}

// unavailable answers a request the vDC cannot judge without the database (the
// admin token's digest could not be read): 503 with Retry-After, as every request
// that needs an unreachable database gets, never a 401 that would send the admin
// looking for a token problem.
func (a *API) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	if a.cfg.Store.Unavailable(err) {
		a.fail(w, r, err)
		return
	}
	if r.Context().Err() != nil {
		return // the client went away
	}
	a.log.Error("check the admin token", "err", err)
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "the admin token cannot be checked without the database, retry: "+err.Error())
}

func (a *API) rotateAdminToken(w http.ResponseWriter, r *http.Request) {
	tok, st, ended, err := a.cfg.Admin.Rotate(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store") // the answer holds the token
	writeJSON(w, http.StatusOK, quantix.AdminTokenRotation{AdminToken: tok, Generation: st.Generation,
		PropagationSeconds: int(math.Ceil(a.cfg.Admin.TTL().Seconds())), UISessionsEnded: ended})
}

// nodeID returns the {id} path value if it is a UUID.
func nodeID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !IsUUID(id) {
		return "", badRequest("node id %q in the path is not a UUID", id)
	}
	return strings.ToLower(id), nil
}

// IsUUID reports whether s is a UUID in its 36-character text form (either case).
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func (a *API) intervalSeconds() int {
	s := int(a.cfg.HeartbeatInterval / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := a.cfg.Store.CheckReady(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request) {
	phases, err := a.cfg.Store.CountByPhase(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	batches, _ := a.cfg.Heartbeats.Stats()
	a.cfg.Metrics.Write(w, phases, batches)
	if a.cfg.AgentCA != nil {
		WriteAgentCA(w, a.cfg.AgentCA.Status())
	}
	if d := a.cfg.Desired; d != nil {
		up := 0
		if d.Up() {
			up = 1
		}
		fmt.Fprintf(w, "# HELP qx_vdc_desired_listener_up Whether desired-state changes wake long-polls at once (LISTEN in place).\n"+
			"# TYPE qx_vdc_desired_listener_up gauge\nqx_vdc_desired_listener_up %d\n"+
			"# HELP qx_vdc_desired_waiters Desired-state long-polls waiting.\n# TYPE qx_vdc_desired_waiters gauge\nqx_vdc_desired_waiters %d\n",
			up, d.Waiters())
	}
}

// pins are the agent CA pins every register and heartbeat answer announces.
func (a *API) pins() []string {
	if a.cfg.AgentCA == nil {
		return nil
	}
	return a.cfg.AgentCA.Pins()
}

// Plain is the API on the plain-HTTP side of the listen port. Unless allowAgents
// (vdc.toml agent_plain_http, labs), it refuses every request an agent makes
// (registration, and a node's own endpoints under /api/v1/nodes/{id}/ without the
// admin token): their secrets must travel inside TLS only. Health checks, metrics and the
// admin API stay reachable for qx-ctl.
func (a *API) Plain(allowAgents bool) http.Handler {
	if allowAgents {
		return a
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		agent := r.URL.Path == quantix.PathRegister
		if sub, ok := strings.CutPrefix(r.URL.Path, quantix.PathNodes+"/"); ok && strings.Contains(sub, "/") && !agent {
			// A node's own endpoints (/api/v1/nodes/{id}/...), unless the admin asks.
			ok, err := a.cfg.Admin.Check(r.Context(), bearer(r))
			if err != nil {
				a.unavailable(w, r, err)
				return
			}
			agent = !ok
		}
		if agent {
			// 403, not 426: an agent reads the JSON error, and an upgrade on the
			// same port is what it must do anyway.
			writeError(w, http.StatusForbidden, "agents must use https:// on this port (TLS with the join token's CA pin); "+
				"plain HTTP for agents is off unless vdc.toml sets agent_plain_http = true (labs only)")
			return
		}
		a.ServeHTTP(w, r)
	})
}

func (a *API) agentCA(w http.ResponseWriter, r *http.Request) {
	if a.cfg.AgentCA == nil {
		writeError(w, http.StatusServiceUnavailable, "this vDC has no agent CA")
		return
	}
	writeJSON(w, http.StatusOK, a.cfg.AgentCA.Status())
}

func (a *API) rotateAgentCA(w http.ResponseWriter, r *http.Request) {
	if a.cfg.AgentCA == nil {
		writeError(w, http.StatusServiceUnavailable, "this vDC has no agent CA")
		return
	}
	st, err := a.cfg.AgentCA.Rotate(r.Context())
	if errors.Is(err, store.ErrRotationPending) {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("agent CA rotation started", "pins", st.Pins, "next_serves_from", st.Next.ServingFrom)
	writeJSON(w, http.StatusOK, st)
}
