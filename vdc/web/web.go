// Package web is the vDC's web UI, served by qx-vdc itself on its HTTPS listener:
// login with the admin token, server-side sessions in PostgreSQL, and pages (Hosts,
// host detail, VMs with the create form, VM detail with its console, Images,
// Storage pools, Join tokens) whose small hand-written JavaScript
// talks to the same API v1 as qx-ctl. Templates, CSS and JavaScript are embedded;
// nothing is fetched from elsewhere, so the UI works offline.
//
// The session layer is the only place where a cookie means anything: it checks the
// session and, for every state-changing request, the CSRF token and the request's
// origin, and only then marks the request admin-authorized for vdc/api
// (api.WithAdmin). The API's handlers, validation and JSON are not duplicated here.
package web

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/api"
	"github.com/quantix/quantix/vdc/store"
)

//go:embed assets
var assets embed.FS

// Config configures the UI.
type Config struct {
	Store *store.Store
	// API is the vDC's API v1 handler; the UI forwards /api/, /healthz, /readyz and
	// /metrics to it.
	API http.Handler
	// Admin checks the admin token, the login credential, against the cluster's
	// digest.
	Admin *store.AdminAuth
	// AgentPort is the API port agents use (TLS with the agent CA); the Join tokens
	// page shows https://<the host the browser used>:<AgentPort> as the vDC URL.
	AgentPort int
	// Now is the clock for sessions and login throttling (nil: time.Now). Tests
	// pass a fake one.
	Now func() time.Time
	// IdleTimeout ends a session unused for this long (0: DefaultIdleTimeout).
	IdleTimeout time.Duration
	// SessionLifetime ends a session this long after login, used or not
	// (0: DefaultSessionLifetime).
	SessionLifetime time.Duration
}

// Session and cookie parameters.
const (
	// DefaultIdleTimeout: an open Hosts page polls and so keeps its session alive;
	// a session nobody uses for an hour ends.
	DefaultIdleTimeout = time.Hour
	// DefaultSessionLifetime bounds every session, used or not: log in again after
	// 12 hours (a working day).
	DefaultSessionLifetime = 12 * time.Hour

	// SessionCookie holds the session id. The __Host- prefix makes the browser
	// insist on Secure, Path=/ and no Domain.
	SessionCookie = "__Host-qx_session"
	// LoginCookie holds the login form's anti-CSRF nonce (double submit).
	LoginCookie = "__Host-qx_login"
	// CSRFHeader carries the session's CSRF token on fetch requests; forms send it
	// as the field "csrf".
	CSRFHeader = "X-CSRF-Token"
)

// UI serves the web UI and, behind its session layer, the API.
type UI struct {
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	pages  map[string]*template.Template
	static map[string]staticFile
	origin *http.CrossOriginProtection
}

type staticFile struct {
	body  []byte
	ctype string
	etag  string
}

// New builds the UI.
func New(cfg Config, log *slog.Logger) (*UI, error) {
	if cfg.Store == nil || cfg.API == nil || cfg.Admin == nil {
		return nil, fmt.Errorf("web: Store, API and Admin are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.SessionLifetime <= 0 {
		cfg.SessionLifetime = DefaultSessionLifetime
	}
	u := &UI{cfg: cfg, log: log, mux: http.NewServeMux(), pages: map[string]*template.Template{},
		static: map[string]staticFile{}, origin: http.NewCrossOriginProtection()}
	if err := u.loadStatic(); err != nil {
		return nil, err
	}
	for _, p := range []string{"login", "hosts", "host", "vms", "vm", "images", "pools", "tokens", "upgrades"} {
		files := []string{"assets/templates/base.html", "assets/templates/" + p + ".html"}
		if p == "login" {
			files = files[1:]
		}
		t, err := template.New(p).Funcs(template.FuncMap{"asset": u.assetURL}).ParseFS(assets, files...)
		if err != nil {
			return nil, fmt.Errorf("web: parse %s: %w", p, err)
		}
		u.pages[p] = t
	}
	m := u.mux
	m.HandleFunc("GET /{$}", u.home)
	m.HandleFunc("GET /ui/{$}", u.home)
	m.HandleFunc("GET /ui/login", u.loginPage)
	m.HandleFunc("POST /ui/login", u.login)
	m.HandleFunc("POST /ui/logout", u.logout)
	m.HandleFunc("GET /ui/static/{name}", u.serveStatic)
	m.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, u.assetURL("icon.svg"), http.StatusFound)
	})
	m.HandleFunc("GET /ui/hosts", u.page("hosts", "Hosts"))
	m.HandleFunc("GET /ui/hosts/{id}", u.page("host", "Host"))
	m.HandleFunc("GET /ui/vms", u.page("vms", "Virtual machines"))
	m.HandleFunc("GET /ui/vms/{ref}", u.page("vm", "Virtual machine"))
	m.HandleFunc("GET /ui/images", u.page("images", "Images"))
	m.HandleFunc("GET /ui/pools", u.page("pools", "Storage pools"))
	m.HandleFunc("GET /ui/tokens", u.page("tokens", "Join tokens"))
	m.HandleFunc("GET /ui/upgrades", u.page("upgrades", "Upgrades"))
	m.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		u.plainError(w, http.StatusNotFound, "No such page: "+r.URL.Path)
	})
	m.HandleFunc("/", u.apiGate)
	return u, nil
}

func (u *UI) loadStatic() error {
	return fs.WalkDir(assets, "assets/static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assets.ReadFile(path)
		if err != nil {
			return err
		}
		name := d.Name()
		ctype := "application/octet-stream"
		switch {
		case strings.HasSuffix(name, ".css"):
			ctype = "text/css; charset=utf-8"
		case strings.HasSuffix(name, ".js"):
			ctype = "text/javascript; charset=utf-8"
		case strings.HasSuffix(name, ".svg"):
			ctype = "image/svg+xml"
		}
		sum := sha256.Sum256(b)
		u.static[name] = staticFile{body: b, ctype: ctype, etag: hex.EncodeToString(sum[:8])}
		return nil
	})
}

// assetURL names a static file with its content hash, so browsers may cache it
// for long and still never run a stale script after an upgrade.
func (u *UI) assetURL(name string) string {
	f, ok := u.static[name]
	if !ok {
		panic("web: no static asset " + name) // a template bug, caught by the tests
	}
	return "/ui/static/" + name + "?v=" + f.etag
}

func (u *UI) serveStatic(w http.ResponseWriter, r *http.Request) {
	f, ok := u.static[r.PathValue("name")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", f.ctype)
	w.Header().Set("ETag", `"`+f.etag+`"`)
	w.Header().Set("Cache-Control", "public, max-age=86400")
	if r.Header.Get("If-None-Match") == `"`+f.etag+`"` {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Write(f.body)
}

// contentSecurityPolicy allows nothing but this origin's own files: no inline
// script or style, no framing, forms post only here.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// ServeHTTP serves the UI's pages and assets, and the API behind the session layer.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), usb=()")
	// No Strict-Transport-Security: with the generated self-signed certificate it
	// would turn the browser's certificate warning into a dead end.
	u.mux.ServeHTTP(w, r)
}

func (u *UI) home(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/ui/hosts", http.StatusSeeOther)
}

// apiGate forwards everything that is not a UI page to the API. A request with an
// Authorization header or without a session cookie goes as it is (the API checks
// bearer tokens itself). A session cookie is checked here; a state-changing request
// also needs the session's CSRF token and a same-origin request; only then is the
// request marked admin-authorized.
func (u *UI) apiGate(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		u.cfg.API.ServeHTTP(w, r)
		return
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		u.cfg.API.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	sid := c.Value
	if _, err := u.session(r.Context(), sid); err != nil {
		if !isNotFound(err) {
			u.log.Error("check ui session", "err", err)
			writeJSONError(w, http.StatusServiceUnavailable, "cannot check the session: the database is not answering")
			return
		}
		writeJSONError(w, http.StatusUnauthorized, "the session has expired or was logged out; log in again")
		return
	}
	if !safeMethod(r.Method) {
		if err := u.origin.Check(r); err != nil {
			writeJSONError(w, http.StatusForbidden, "cross-origin request refused")
			return
		}
		if !sameToken(r.Header.Get(CSRFHeader), csrfToken(sid)) {
			writeJSONError(w, http.StatusForbidden, "missing or wrong CSRF token ("+CSRFHeader+" header)")
			return
		}
	}
	u.cfg.API.ServeHTTP(w, r.WithContext(apiWithAdmin(r.Context())))
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// page serves a UI page to a logged-in admin; anyone else is sent to the login
// page, which brings them back afterwards.
func (u *UI) page(name, title string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		sid, ok := u.requireSession(w, r)
		if !ok {
			return
		}
		d := u.baseData(r, name, title)
		d.CSRF = csrfToken(sid)
		if name == "host" {
			id := strings.ToLower(r.PathValue("id"))
			if !api.IsUUID(id) {
				u.plainError(w, http.StatusNotFound, "No such host: "+r.PathValue("id"))
				return
			}
			d.NodeID = id
		}
		if name == "vm" {
			ref := r.PathValue("ref")
			if quantix.ValidVMName(ref) != nil && !api.IsUUID(ref) {
				u.plainError(w, http.StatusNotFound, "No such VM: "+ref)
				return
			}
			d.VMRef = ref
		}
		u.render(w, http.StatusOK, name, d)
	}
}

// requireSession returns the request's live session id, or redirects to the login
// page and returns false.
func (u *UI) requireSession(w http.ResponseWriter, r *http.Request) (string, bool) {
	c, err := r.Cookie(SessionCookie)
	if err == nil && c.Value != "" {
		_, err = u.session(r.Context(), c.Value)
		if err == nil {
			return c.Value, true
		}
		if !isNotFound(err) {
			u.log.Error("check ui session", "err", err)
			u.plainError(w, http.StatusServiceUnavailable, "Cannot check the session: the database is not answering.")
			return "", false
		}
	}
	http.Redirect(w, r, "/ui/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	return "", false
}

// pageData is what the templates see.
type pageData struct {
	Title, Page string
	CSRF        string
	NodeID      string
	VMRef       string // the vm page's VM, a name or UUID
	AgentURL    string
	Version     string
	Nav         []navItem
	// login page
	Error, LoginNonce, Next string
}

type navItem struct {
	Href, Label string
	Active      bool
}

func (u *UI) baseData(r *http.Request, page, title string) pageData {
	d := pageData{Title: title, Page: page, Version: quantix.Version, AgentURL: u.agentURL(r)}
	for _, n := range []struct{ page, href, label string }{
		{"hosts", "/ui/hosts", "Hosts"}, {"vms", "/ui/vms", "VMs"}, {"images", "/ui/images", "Images"}, {"pools", "/ui/pools", "Storage pools"},
		{"tokens", "/ui/tokens", "Join tokens"}, {"upgrades", "/ui/upgrades", "Upgrades"},
	} {
		d.Nav = append(d.Nav, navItem{n.href, n.label, n.page == page || (page == "host" && n.page == "hosts") || (page == "vm" && n.page == "vms")})
	}
	return d
}

// agentURL is the API URL agents use (TLS, the agent CA), on the host the browser
// reached.
func (u *UI) agentURL(r *http.Request) string {
	host := requestHost(r)
	return "https://" + net.JoinHostPort(host, strconv.Itoa(u.cfg.AgentPort))
}

// requestHost is the host part of the request's Host header, else the local
// address the request came in on.
func requestHost(r *http.Request) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "" {
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			if h, _, err := net.SplitHostPort(a.String()); err == nil {
				host = h
			}
		}
	}
	return host
}

func (u *UI) render(w http.ResponseWriter, code int, page string, d pageData) {
	var b strings.Builder
	if err := u.pages[page].ExecuteTemplate(&b, page+".html", d); err != nil {
		u.log.Error("render ui page", "page", page, "err", err)
		u.plainError(w, http.StatusInternalServerError, "Internal error; see the vDC log.")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprint(w, b.String())
}

func (u *UI) plainError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// RedirectBrowsers wraps the plain HTTP API handler: agents and qx-ctl are served
// as before, while a browser asking for / or /ui/... is sent to the UI's HTTPS port
// on the same host (the session cookie is Secure, so the UI exists only there).
func RedirectBrowsers(api http.Handler, uiPort int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
			(p == "/" || p == "/ui" || strings.HasPrefix(p, "/ui/") || p == "/favicon.ico") {
			target := "https://" + net.JoinHostPort(requestHost(r), strconv.Itoa(uiPort)) + r.URL.RequestURI()
			http.Redirect(w, r, target, http.StatusFound)
			return
		}
		api.ServeHTTP(w, r)
	})
}
