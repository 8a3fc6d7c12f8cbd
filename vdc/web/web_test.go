package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/web"
)

// TestLoginRequired: every page needs a session; GETs are sent to the login page
// (which brings them back), API calls without a session get the API's 401 JSON.
func TestLoginRequired(t *testing.T) {
	rg := newRig(t)
	for _, p := range []string{"/ui/hosts", "/ui/hosts/0b6f2f9e-3c1a-4f4e-9d7e-1f2a3b4c5d6e", "/ui/vms", "/ui/pools", "/ui/tokens", "/ui/vms?lost=true"} {
		w := rg.do(req(http.MethodGet, p, nil))
		want := "/ui/login?next=" + url.QueryEscape(p)
		if w.Code != http.StatusSeeOther || w.Header().Get("Location") != want {
			t.Errorf("GET %s without a session: %d Location %q, want 303 to %s", p, w.Code, w.Header().Get("Location"), want)
		}
	}
	for _, p := range []string{"/", "/ui/"} {
		if w := rg.do(req(http.MethodGet, p, nil)); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/ui/hosts" {
			t.Errorf("GET %s: %d %q, want 303 to /ui/hosts", p, w.Code, w.Header().Get("Location"))
		}
	}
	w := rg.apiCall(http.MethodGet, quantix.PathNodes, nil, nil, "")
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), `"error"`) ||
		!strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Errorf("GET nodes without a session: %d %s, want 401 JSON", w.Code, w.Body)
	}
	// A junk or unknown session cookie: 401 JSON for fetches, login for pages.
	junk := &http.Cookie{Name: web.SessionCookie, Value: strings.Repeat("A", 43)}
	if w := rg.apiCall(http.MethodGet, quantix.PathNodes, nil, junk, ""); w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "log in again") {
		t.Errorf("GET nodes with an unknown session: %d %s", w.Code, w.Body)
	}
	if w := rg.do(req(http.MethodGet, "/ui/hosts", nil, junk)); w.Code != http.StatusSeeOther {
		t.Errorf("GET /ui/hosts with an unknown session: %d", w.Code)
	}
	// Static assets need no session.
	if w := rg.do(req(http.MethodGet, "/ui/static/app.js", nil)); w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("GET app.js: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	if w := rg.do(req(http.MethodGet, "/ui/nope", nil)); w.Code != http.StatusNotFound {
		t.Errorf("GET /ui/nope: %d, want 404", w.Code)
	}
	// Bearer clients (qx-ctl) use the HTTPS listener like the plain one.
	r := req(http.MethodGet, quantix.PathNodes, nil)
	r.Header.Set("Authorization", "Bearer "+rg.admin)
	if w := rg.do(r); w.Code != http.StatusOK {
		t.Errorf("GET nodes with the admin bearer token: %d %s", w.Code, w.Body)
	}
}

// TestLogin: the form, wrong and right tokens, the cookie's flags, login CSRF.
func TestLogin(t *testing.T) {
	rg := newRig(t)
	w := rg.do(req(http.MethodGet, "/ui/login", nil))
	lc := cookie(t, w, web.LoginCookie)
	if lc == nil || !lc.Secure || !lc.HttpOnly || lc.SameSite != http.SameSiteStrictMode || lc.Path != "/" {
		t.Errorf("login nonce cookie = %+v, want Secure, HttpOnly, SameSite=Strict, Path=/", lc)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("login page Cache-Control = %q", cc)
	}

	w = rg.postLogin(t, "wrong-"+rg.admin)
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "Wrong admin token") || cookie(t, w, web.SessionCookie) != nil {
		t.Errorf("wrong token: %d, session %v:\n%s", w.Code, cookie(t, w, web.SessionCookie), w.Body)
	}

	w = rg.postLogin(t, rg.admin)
	s := cookie(t, w, web.SessionCookie)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/ui/vms" || s == nil {
		t.Fatalf("right token: %d %q %v", w.Code, w.Header().Get("Location"), s)
	}
	if !s.Secure || !s.HttpOnly || s.SameSite != http.SameSiteStrictMode || s.Path != "/" || s.Domain != "" ||
		s.MaxAge != int(web.DefaultSessionLifetime/time.Second) || len(s.Value) != 43 {
		t.Errorf("session cookie = %+v, want Secure, HttpOnly, SameSite=Strict, Path=/, no Domain, Max-Age 12h, 43 characters", s)
	}
	raw := strings.Join(w.Header().Values("Set-Cookie"), "\n")
	for _, want := range []string{"__Host-qx_session=", "Secure", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(raw, want) {
			t.Errorf("Set-Cookie lacks %s: %s", want, raw)
		}
	}
	// The database holds the digest only.
	var n int
	if err := rg.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM ui_sessions WHERE position($1::bytea in id_hash) > 0`, []byte(s.Value)).Scan(&n); err != nil || n != 0 {
		t.Errorf("ui_sessions holds the session id in clear (%d, %v)", n, err)
	}
	// A logged-in admin visiting the login page goes on.
	if w := rg.do(req(http.MethodGet, "/ui/login?next=/ui/pools", nil, s)); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/ui/pools" {
		t.Errorf("login page with a session: %d %q", w.Code, w.Header().Get("Location"))
	}

	// Login CSRF: without the nonce cookie, with a wrong field, or cross-site.
	_, field := rg.loginForm(t)
	nonce, _ := rg.loginForm(t)
	cases := []struct {
		name   string
		field  string
		cookie bool
		origin string
		code   int
	}{
		{"no nonce cookie", field, false, origin, http.StatusForbidden},
		{"field of another form", field, true, origin, http.StatusForbidden},
		{"cross-site", "", true, "https://evil.example", http.StatusForbidden},
	}
	for _, tc := range cases {
		f := tc.field
		if f == "" {
			f = loginFieldFor(t, rg, nonce)
		}
		form := url.Values{"token": {rg.admin}, "login_csrf": {f}}
		r := req(http.MethodPost, "/ui/login", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Origin", tc.origin)
		if tc.origin != origin {
			r.Header.Set("Sec-Fetch-Site", "cross-site")
		}
		if tc.cookie {
			r.AddCookie(nonce)
		}
		w := rg.do(r)
		if w.Code != tc.code || cookie(t, w, web.SessionCookie) != nil {
			t.Errorf("%s: %d (session %v), want %d and no session", tc.name, w.Code, cookie(t, w, web.SessionCookie) != nil, tc.code)
		}
	}
	if strings.Contains(rg.log.String(), rg.admin) || strings.Contains(rg.log.String(), s.Value) {
		t.Errorf("the log holds the admin token or a session id:\n%s", rg.log)
	}
}

// loginFieldFor fetches login forms until one carries the field for nonce: the
// field is an HMAC of the cookie, so the test recomputes it from a fresh page that
// was served with that cookie value.
func loginFieldFor(t *testing.T, rg *rig, nonce *http.Cookie) string {
	t.Helper()
	w := rg.do(req(http.MethodGet, "/ui/login", nil))
	c := cookie(t, w, web.LoginCookie)
	m := loginFieldRE.FindStringSubmatch(w.Body.String())
	*nonce = *c
	return m[1]
}

func TestSafeNext(t *testing.T) {
	rg := newRig(t)
	cases := []struct{ next, want string }{
		{"/ui/vms", "/ui/vms"},
		{"/ui/hosts?phase=ready&q=a", "/ui/hosts?phase=ready&q=a"},
		{"https://evil.example/", "/ui/hosts"},
		{"//evil.example/ui/", "/ui/hosts"},
		{"/ui//evil.example", "/ui/hosts"},
		{`/ui/\evil`, "/ui/hosts"},
		{"/api/v1/nodes", "/ui/hosts"},
		{"/ui/login", "/ui/hosts"},
		{"", "/ui/hosts"},
	}
	s, _ := rg.login(t)
	for _, tc := range cases {
		w := rg.do(req(http.MethodGet, "/ui/login?next="+url.QueryEscape(tc.next), nil, s))
		if got := w.Header().Get("Location"); got != tc.want {
			t.Errorf("login?next=%q redirects to %q, want %q", tc.next, got, tc.want)
		}
	}
}

// TestSessionExpiry drives the fake clock past the idle timeout and the absolute
// lifetime, and checks that a session survives a restart (a new UI on the same
// database).
func TestSessionExpiry(t *testing.T) {
	rg := newRig(t)
	ok := func(s *http.Cookie) bool {
		w := rg.do(req(http.MethodGet, "/ui/hosts", nil, s))
		return w.Code == http.StatusOK
	}
	s, _ := rg.login(t)
	rg.clock.Add(59 * time.Minute)
	if !ok(s) {
		t.Fatalf("session refused after 59 min idle (timeout %s)", web.DefaultIdleTimeout)
	}
	rg.clock.Add(59 * time.Minute) // 59 min after the last use
	if !ok(s) {
		t.Fatalf("session refused 59 min after its last use")
	}
	rg.clock.Add(web.DefaultIdleTimeout + time.Second)
	if ok(s) {
		t.Errorf("session accepted after %s idle", web.DefaultIdleTimeout+time.Second)
	}
	if w := rg.apiCall(http.MethodGet, quantix.PathNodes, nil, s, ""); w.Code != http.StatusUnauthorized {
		t.Errorf("API with an idle-expired session: %d, want 401", w.Code)
	}

	// Absolute lifetime: used every 50 minutes, still over after 12 h.
	s, _ = rg.login(t)
	start := rg.clock.Now()
	for rg.clock.Now().Sub(start) < web.DefaultSessionLifetime-50*time.Minute {
		rg.clock.Add(50 * time.Minute)
		if !ok(s) {
			t.Fatalf("active session refused %s after login", rg.clock.Now().Sub(start))
		}
	}
	rg.clock.Add(start.Add(web.DefaultSessionLifetime).Sub(rg.clock.Now()))
	if ok(s) {
		t.Errorf("session accepted at its absolute expiry (%s)", web.DefaultSessionLifetime)
	}

	// A restart: a new UI on the same database and clock accepts the session.
	s, _ = rg.login(t)
	ui2, err := web.New(web.Config{Store: rg.store, API: rg.api, Admin: rg.auth, Now: rg.clock.Now}, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	ui2.ServeHTTP(w, req(http.MethodGet, "/ui/tokens", nil, s))
	if w.Code != http.StatusOK {
		t.Errorf("session after a restart: %d, want 200", w.Code)
	}
	// Expired sessions are removed at the next login.
	var n int
	rg.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM ui_sessions`).Scan(&n)
	if n != 1 {
		t.Errorf("ui_sessions has %d rows, want 1 (the two expired ones deleted at the last login)", n)
	}
	// Without any login, the vDC's periodic prune removes it once it has expired.
	rg.ui.PruneSessions(context.Background())
	rg.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM ui_sessions`).Scan(&n)
	if n != 1 {
		t.Errorf("prune deleted a live session: %d rows, want 1", n)
	}
	rg.clock.Add(web.DefaultIdleTimeout + time.Second)
	rg.ui.PruneSessions(context.Background())
	rg.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM ui_sessions`).Scan(&n)
	if n != 0 {
		t.Errorf("after the idle timeout and a prune, ui_sessions has %d rows, want 0", n)
	}
}

// TestCSRF: state-changing requests need the session's token and a same-origin
// request; reads need neither; a cookie is nothing to the API itself.
func TestCSRF(t *testing.T) {
	rg := newRig(t)
	s, csrf := rg.login(t)
	id, _ := rg.register(t, "csrf-host")
	path := quantix.PathNode(id) + "/maintenance"

	if w := rg.apiCall(http.MethodGet, quantix.PathNodes, nil, s, ""); w.Code != http.StatusOK {
		t.Errorf("GET nodes with a session: %d %s", w.Code, w.Body)
	}
	cases := []struct {
		name  string
		token string
		site  string
		code  int
	}{
		{"no token", "", "same-origin", http.StatusForbidden},
		{"wrong token", strings.Repeat("0", 64), "same-origin", http.StatusForbidden},
		{"another session's token", "", "same-origin", http.StatusForbidden},
		{"cross-site with the token", csrf, "cross-site", http.StatusForbidden},
		{"same-origin with the token", csrf, "same-origin", http.StatusOK},
	}
	_, csrf2 := rg.login(t)
	for _, tc := range cases {
		tok := tc.token
		if tc.name == "another session's token" {
			tok = csrf2
		}
		r := req(http.MethodPut, path, strings.NewReader(`{"maintenance":true}`), s)
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Sec-Fetch-Site", tc.site)
		if tc.site == "cross-site" {
			r.Header.Set("Origin", "https://evil.example")
		}
		if tok != "" {
			r.Header.Set(web.CSRFHeader, tok)
		}
		w := rg.do(r)
		if w.Code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.name, w.Code, w.Body, tc.code)
		}
	}
	for _, m := range []string{http.MethodPost, http.MethodDelete} {
		p := quantix.PathJoinTokens
		var b any = quantix.JoinTokenRequest{}
		if m == http.MethodDelete {
			p, b = quantix.PathNode(id), nil
		}
		if w := rg.apiCall(m, p, b, s, ""); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "CSRF") {
			t.Errorf("%s %s without a CSRF token: %d %s, want 403 naming CSRF", m, p, w.Code, w.Body)
		}
	}
	// The API alone (the plain listener) never honours a session cookie, CSRF
	// token or not.
	r := httptest.NewRequest(http.MethodPut, path, strings.NewReader(`{"maintenance":false}`))
	r.AddCookie(s)
	r.Header.Set(web.CSRFHeader, csrf)
	w := httptest.NewRecorder()
	rg.api.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("plain API with a session cookie and CSRF token: %d, want 401", w.Code)
	}
}

func TestLogout(t *testing.T) {
	rg := newRig(t)
	s, csrf := rg.login(t)
	post := func(field string) *httptest.ResponseRecorder {
		r := req(http.MethodPost, "/ui/logout", strings.NewReader(url.Values{"csrf": {field}}.Encode()), s)
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return rg.do(r)
	}
	if w := post(""); w.Code != http.StatusForbidden {
		t.Errorf("logout without the CSRF field: %d, want 403", w.Code)
	}
	w := post(csrf)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/ui/login" {
		t.Fatalf("logout: %d %q", w.Code, w.Header().Get("Location"))
	}
	if c := cookie(t, w, web.SessionCookie); c == nil || c.MaxAge >= 0 {
		t.Errorf("logout did not clear the cookie: %+v", c)
	}
	if w := rg.do(req(http.MethodGet, "/ui/hosts", nil, s)); w.Code != http.StatusSeeOther {
		t.Errorf("the logged-out session still opens pages: %d", w.Code)
	}
	var n int
	rg.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM ui_sessions`).Scan(&n)
	if n != 0 {
		t.Errorf("ui_sessions has %d rows after logout, want 0", n)
	}
}

// TestLoginThrottle: 5 failures are free, then the address waits 1 s, 2 s, ...;
// while it waits even the right token is refused; another address is not slowed.
func TestLoginThrottle(t *testing.T) {
	rg := newRig(t)
	for i := 1; i <= 6; i++ {
		if w := rg.postLogin(t, "wrong"); w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i, w.Code)
		}
	}
	w := rg.postLogin(t, rg.admin)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" || cookie(t, w, web.SessionCookie) != nil {
		t.Fatalf("right token during the lockout: %d Retry-After %q, want 429, 1 s, no session", w.Code, w.Header().Get("Retry-After"))
	}
	rg.clock.Add(time.Second + time.Millisecond)
	if w := rg.postLogin(t, "wrong"); w.Code != http.StatusUnauthorized {
		t.Fatalf("7th failure: %d", w.Code)
	}
	if w := rg.postLogin(t, rg.admin); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "2" {
		t.Errorf("after the 7th failure: %d Retry-After %q, want 429, 2 s", w.Code, w.Header().Get("Retry-After"))
	}
	// Another address logs in meanwhile.
	nonce, field := rg.loginForm(t)
	r := req(http.MethodPost, "/ui/login", strings.NewReader(url.Values{"token": {rg.admin}, "login_csrf": {field}}.Encode()), nonce)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.RemoteAddr = "198.51.100.3:4000"
	if w := rg.do(r); w.Code != http.StatusSeeOther {
		t.Errorf("login from another address during the lockout: %d, want 303", w.Code)
	}
	rg.clock.Add(2 * time.Second)
	if w := rg.postLogin(t, rg.admin); w.Code != http.StatusSeeOther {
		t.Errorf("right token after the wait: %d, want 303", w.Code)
	}
	// Success cleared the address: 5 more failures are free again.
	for i := 1; i <= 5; i++ {
		rg.postLogin(t, "wrong")
	}
	if w := rg.postLogin(t, rg.admin); w.Code != http.StatusSeeOther {
		t.Errorf("right token after 5 new failures: %d, want 303", w.Code)
	}
}

// TestSecurityHeaders: every answer of the HTTPS listener carries the policy;
// pages and API answers are not cached.
func TestSecurityHeaders(t *testing.T) {
	rg := newRig(t)
	s, _ := rg.login(t)
	for _, tc := range []struct {
		path    string
		cookie  bool
		noStore bool
	}{
		{"/ui/login", false, true},
		{"/ui/hosts", true, true},
		{"/ui/static/app.css", false, false},
		{quantix.PathNodes, true, true},
	} {
		r := req(http.MethodGet, tc.path, nil)
		if tc.cookie {
			r.AddCookie(s)
		}
		w := rg.do(r)
		h := w.Header()
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "script-src 'self'") ||
			strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: CSP %q", tc.path, csp)
		}
		if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: headers %v", tc.path, h)
		}
		if tc.noStore && h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", tc.path, h.Get("Cache-Control"))
		}
		if w.Code != http.StatusOK {
			t.Errorf("%s: %d", tc.path, w.Code)
		}
	}
	// Pages hold no inline script or style: the CSP would block them.
	for _, p := range []string{"/ui/hosts", "/ui/hosts/0b6f2f9e-3c1a-4f4e-9d7e-1f2a3b4c5d6e", "/ui/vms", "/ui/pools", "/ui/tokens"} {
		body := rg.do(req(http.MethodGet, p, nil, s)).Body.String()
		for _, bad := range []string{"<script>", "style=", "onclick", "onload=", "<style"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s holds %q", p, bad)
			}
		}
	}
	body := rg.do(req(http.MethodGet, "/ui/login", nil)).Body.String()
	if strings.Contains(body, "<script") || strings.Contains(body, "style=") {
		t.Errorf("login page holds script or inline style")
	}
}

// TestRedirectBrowsers: the plain listener sends browsers to HTTPS and serves the
// API unchanged.
func TestRedirectBrowsers(t *testing.T) {
	rg := newRig(t)
	h := web.RedirectBrowsers(rg.api, 8443)
	cases := []struct {
		method, target, host string
		code                 int
		loc                  string
	}{
		{"GET", "/", "10.0.0.2:8080", http.StatusFound, "https://10.0.0.2:8443/"},
		{"GET", "/ui/hosts?phase=ready", "vdc.example:8080", http.StatusFound, "https://vdc.example:8443/ui/hosts?phase=ready"},
		{"HEAD", "/ui/login", "[2001:db8::1]:8080", http.StatusFound, "https://[2001:db8::1]:8443/ui/login"},
		{"GET", quantix.PathNodes, "10.0.0.2:8080", http.StatusUnauthorized, ""},
		{"GET", quantix.PathHealthz, "10.0.0.2:8080", http.StatusOK, ""},
		{"POST", "/ui/login", "10.0.0.2:8080", http.StatusNotFound, ""},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(tc.method, "http://"+tc.host+tc.target, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.code || w.Header().Get("Location") != tc.loc {
			t.Errorf("%s %s (Host %s): %d %q, want %d %q", tc.method, tc.target, tc.host, w.Code, w.Header().Get("Location"), tc.code, tc.loc)
		}
	}
}
