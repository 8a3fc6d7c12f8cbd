package web_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/api"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
	"github.com/quantix/quantix/vdc/web"
)

func TestMain(m *testing.M) { vdctest.Main(m) }

func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL (and Chromium): skipped with -short")
	}
}

// clock is a fake clock for sessions and throttling.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// rig is a UI in front of the real API and store on a fresh database, driven
// through ServeHTTP with a fake clock.
type rig struct {
	ui    *web.UI
	api   *api.API
	store *store.Store
	auth  *store.AdminAuth
	clock *clock
	admin string
	join  string
	log   *syncbuf.Buffer
}

func newRig(t *testing.T) *rig {
	t.Helper()
	skipShort(t)
	ctx := context.Background()
	dbURL := vdctest.Shared(t).NewDatabase(t)
	var logBuf syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	join := "join-" + randHex(16)
	st, err := store.Open(ctx, store.Config{DatabaseURL: dbURL, StaticJoinTokens: []string{join}}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	hb := store.NewBatcher(st, 1, 100, log)
	t.Cleanup(hb.Close)
	admin := "admin-" + randHex(32)
	if _, _, err := st.InitAdminToken(ctx, store.HashSecret(admin)); err != nil {
		t.Fatal(err)
	}
	auth := store.NewAdminAuth(st, 0)
	a := api.New(api.Config{Store: st, Heartbeats: hb, HeartbeatInterval: 30 * time.Second, Admin: auth}, log)
	c := &clock{t: time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)}
	ui, err := web.New(web.Config{Store: st, API: a, Admin: auth, AgentPort: 8080, Now: c.Now}, log)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{ui: ui, api: a, store: st, auth: auth, clock: c, admin: admin, join: join, log: &logBuf}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

const origin = "https://vdc.test"

// req builds a request to the UI as a same-origin browser would send it.
func req(method, path string, body io.Reader, cookies ...*http.Cookie) *http.Request {
	r := httptest.NewRequest(method, origin+path, body)
	r.RemoteAddr = "192.0.2.10:51000"
	if method != http.MethodGet && method != http.MethodHead {
		r.Header.Set("Origin", origin)
		r.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	for _, c := range cookies {
		r.AddCookie(c)
	}
	return r
}

func (rg *rig) do(r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	rg.ui.ServeHTTP(w, r)
	return w
}

func cookie(t testing.TB, w *httptest.ResponseRecorder, name string) *http.Cookie {
	t.Helper()
	for _, c := range w.Result().Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

var loginFieldRE = regexp.MustCompile(`name="login_csrf" value="([0-9a-f]+)"`)

// loginForm fetches the login page and returns its nonce cookie and hidden field.
func (rg *rig) loginForm(t testing.TB) (*http.Cookie, string) {
	t.Helper()
	w := rg.do(req(http.MethodGet, "/ui/login", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("GET /ui/login: %d", w.Code)
	}
	c := cookie(t, w, web.LoginCookie)
	m := loginFieldRE.FindStringSubmatch(w.Body.String())
	if c == nil || m == nil {
		t.Fatalf("login page without nonce cookie or login_csrf field:\n%s", w.Body)
	}
	return c, m[1]
}

// postLogin submits the login form with token.
func (rg *rig) postLogin(t testing.TB, token string) *httptest.ResponseRecorder {
	t.Helper()
	nonce, field := rg.loginForm(t)
	form := url.Values{"token": {token}, "login_csrf": {field}, "next": {"/ui/vms"}}
	r := req(http.MethodPost, "/ui/login", strings.NewReader(form.Encode()), nonce)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return rg.do(r)
}

// login logs in and returns the session cookie and the page's CSRF token.
func (rg *rig) login(t testing.TB) (*http.Cookie, string) {
	t.Helper()
	w := rg.postLogin(t, rg.admin)
	s := cookie(t, w, web.SessionCookie)
	if w.Code != http.StatusSeeOther || s == nil {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	return s, rg.csrf(t, s)
}

var csrfMetaRE = regexp.MustCompile(`<meta name="csrf-token" content="([0-9a-f]+)">`)

func (rg *rig) csrf(t testing.TB, s *http.Cookie) string {
	t.Helper()
	w := rg.do(req(http.MethodGet, "/ui/hosts", nil, s))
	m := csrfMetaRE.FindStringSubmatch(w.Body.String())
	if w.Code != http.StatusOK || m == nil {
		t.Fatalf("GET /ui/hosts with a session: %d, no csrf meta:\n%s", w.Code, w.Body)
	}
	return m[1]
}

// apiCall sends a JSON API request through the UI with a session cookie and an
// optional CSRF token.
func (rg *rig) apiCall(method, path string, body any, s *http.Cookie, csrf string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	var r *http.Request
	if s != nil {
		r = req(method, path, rd, s)
	} else {
		r = req(method, path, rd)
	}
	if body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	if csrf != "" {
		r.Header.Set(web.CSRFHeader, csrf)
	}
	return rg.do(r)
}

// register registers a node straight through the API (as an agent would).
func (rg *rig) register(t testing.TB, hostname string) (id, secret string) {
	t.Helper()
	secret = randHex(32)
	b, _ := json.Marshal(quantix.RegisterRequest{Hostname: hostname, MachineID: randHex(8), NodeSecret: secret,
		ManagementIP: "10.0.0.7", AgentVersion: "test"})
	r := httptest.NewRequest(http.MethodPost, quantix.PathRegister, bytes.NewReader(b))
	r.Header.Set("Authorization", "Bearer "+rg.join)
	w := httptest.NewRecorder()
	rg.api.ServeHTTP(w, r)
	var res quantix.RegisterResponse
	if w.Code != http.StatusCreated || json.Unmarshal(w.Body.Bytes(), &res) != nil {
		t.Fatalf("register %s: %d %s", hostname, w.Code, w.Body)
	}
	return res.NodeID, secret
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
