package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/api"
	"github.com/quantix/quantix/vdc/store"
)

// A session id is 32 random bytes (256 bits), base64url in the cookie. The database
// holds only its SHA-256 digest. The CSRF token is derived from the id (an HMAC
// keyed with it), so it needs no storage and reveals nothing about the id.

func newSessionID() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func sessionHash(sid string) [32]byte { return sha256.Sum256([]byte("quantix-ui-session:" + sid)) }

func derive(key, label string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(label))
	return hex.EncodeToString(m.Sum(nil))
}

func csrfToken(sid string) string { return derive(sid, "quantix-ui-csrf") }

// loginFormToken is the login form's hidden field for a login nonce cookie.
func loginFormToken(nonce string) string { return derive(nonce, "quantix-ui-login") }

func sameToken(got, want string) bool {
	return got != "" && hmac.Equal([]byte(got), []byte(want))
}

func (u *UI) session(ctx context.Context, sid string) (store.UISession, error) {
	if len(sid) != 43 { // base64url of 32 bytes: refuse junk without a query
		return store.UISession{}, store.ErrNotFound
	}
	return u.cfg.Store.Session(ctx, sessionHash(sid), u.cfg.Now(), u.cfg.IdleTimeout)
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func apiWithAdmin(ctx context.Context) context.Context { return api.WithAdmin(ctx) }

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(quantix.Error{Error: msg})
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

// safeNext keeps the login redirect on this UI: a path under /ui/, nothing that a
// browser could read as another host.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/ui/") || strings.HasPrefix(next, "/ui/login") ||
		strings.ContainsAny(next, "\\\r\n") || strings.Contains(next, "//") {
		return "/ui/hosts"
	}
	return next
}

func (u *UI) setCookie(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	c := &http.Cookie{Name: name, Value: value, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(maxAge / time.Second)}
	if maxAge < 0 {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

// loginPage shows the login form, or sends a logged-in admin on.
func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	next := safeNext(r.URL.Query().Get("next"))
	if c, err := r.Cookie(SessionCookie); err == nil {
		if _, err := u.session(r.Context(), c.Value); err == nil {
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
	}
	u.renderLogin(w, r, http.StatusOK, next, "")
}

// renderLogin renders the form with a fresh login nonce: a cookie, and its HMAC as
// a hidden field. A cross-site page can neither read the field nor (SameSite=Strict)
// send the cookie, so it cannot log a victim into the attacker's session.
func (u *UI) renderLogin(w http.ResponseWriter, r *http.Request, code int, next, msg string) {
	nonce := newSessionID()
	u.setCookie(w, LoginCookie, nonce, time.Hour)
	d := u.baseData(r, "login", "Log in")
	d.Nav = nil
	d.LoginNonce, d.Next, d.Error = loginFormToken(nonce), next, msg
	u.render(w, code, "login", d)
}

func clientIP(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

const loginDBDown = "Cannot log in now: the database is not answering; try again."

func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		u.renderLogin(w, r, http.StatusBadRequest, "/ui/hosts", "The form could not be read; try again.")
		return
	}
	next := safeNext(r.PostFormValue("next"))
	if err := u.origin.Check(r); err != nil {
		u.renderLogin(w, r, http.StatusForbidden, next, "Cross-site login refused.")
		return
	}
	c, err := r.Cookie(LoginCookie)
	if err != nil || !sameToken(r.PostFormValue("login_csrf"), loginFormToken(c.Value)) {
		u.renderLogin(w, r, http.StatusForbidden, next, "The login form expired; enter the token again.")
		return
	}
	ip := clientIP(r)
	now := u.cfg.Now()
	n, wait, err := u.cfg.Store.LoginAttempt(r.Context(), ip, now, loginThrottle())
	if err != nil {
		u.log.Error("count ui login attempt", "err", err)
		u.renderLogin(w, r, http.StatusServiceUnavailable, next, loginDBDown)
		return
	}
	if wait > 0 {
		secs := int(math.Ceil(wait.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		u.renderLogin(w, r, http.StatusTooManyRequests, next,
			"Too many failed logins from your address; try again in "+strconv.Itoa(secs)+" s.")
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	ok, err := u.cfg.Admin.Check(r.Context(), tok)
	if err != nil {
		u.log.Error("check ui login", "err", err)
		u.renderLogin(w, r, http.StatusServiceUnavailable, next, "Cannot check the token: the database is not answering; try again.")
		return
	}
	if !ok {
		u.log.Warn("ui login failed", "remote", ip, "failures", n)
		u.renderLogin(w, r, http.StatusUnauthorized, next, "Wrong admin token.")
		return
	}
	if err := u.cfg.Store.LoginSucceeded(r.Context(), ip); err != nil {
		u.log.Error("clear ui login attempts", "err", err)
		u.renderLogin(w, r, http.StatusServiceUnavailable, next, loginDBDown)
		return
	}
	sid := newSessionID()
	if err := u.cfg.Store.CreateSession(r.Context(), sessionHash(sid), now, now.Add(u.cfg.SessionLifetime),
		ip, r.UserAgent()); err != nil {
		u.log.Error("create ui session", "err", err)
		u.renderLogin(w, r, http.StatusServiceUnavailable, next, "Cannot create a session: the database is not answering.")
		return
	}
	u.PruneSessions(r.Context())
	u.log.Info("ui login", "remote", ip)
	u.setCookie(w, LoginCookie, "", -1)
	u.setCookie(w, SessionCookie, sid, u.cfg.SessionLifetime)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
		return
	}
	if err := u.origin.Check(r); err != nil {
		u.plainError(w, http.StatusForbidden, "Cross-origin request refused.")
		return
	}
	if !sameToken(r.PostFormValue("csrf"), csrfToken(c.Value)) {
		u.plainError(w, http.StatusForbidden, "Missing or wrong CSRF token; reload the page and log out again.")
		return
	}
	if err := u.cfg.Store.DeleteSession(r.Context(), sessionHash(c.Value)); err != nil {
		u.log.Error("delete ui session", "err", err)
		u.plainError(w, http.StatusServiceUnavailable, "Cannot end the session: the database is not answering.")
		return
	}
	u.log.Info("ui logout", "remote", clientIP(r))
	u.setCookie(w, SessionCookie, "", -1)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// loginThrottle slows down guessing the admin token from one address: 5 failures
// are free, then each further one locks the address out for 1 s, 2 s, 4 s ... up to
// 5 minutes. A success clears the address; 15 quiet minutes forget it. There is no
// global lock: it would let anyone lock the admin out. (The admin token is 256
// random bits when generated, so the throttle is about noise, not feasibility.) The
// counts are in PostgreSQL, shared by every vDC of the database: spreading guesses
// over several vDCs buys no more of them (store.LoginAttempt).
const (
	throttleFree    = 5
	throttleMaxWait = 5 * time.Minute
	throttleForget  = 15 * time.Minute
)

func loginThrottle() store.LoginThrottle {
	return store.LoginThrottle{Free: throttleFree, MaxWait: throttleMaxWait, Forget: throttleForget}
}

// PruneSessions deletes the sessions past their lifetime or idle timeout, logging
// how many, and the login attempts the throttle has forgotten. The vDC calls it
// every PruneEvery, and each login does too.
func (u *UI) PruneSessions(ctx context.Context) {
	now := u.cfg.Now()
	n, err := u.cfg.Store.DeleteExpiredSessions(ctx, now, u.cfg.IdleTimeout)
	switch {
	case err != nil && ctx.Err() == nil:
		u.log.Warn("delete expired ui sessions", "err", err)
	case n > 0:
		u.log.Info("deleted expired ui sessions", "count", n)
	}
	if _, err := u.cfg.Store.DeleteStaleLoginAttempts(ctx, now.Add(-throttleForget)); err != nil && ctx.Err() == nil {
		u.log.Warn("delete stale ui login attempts", "err", err)
	}
}

// PruneEvery is how often the vDC deletes expired UI sessions.
const PruneEvery = 10 * time.Minute
