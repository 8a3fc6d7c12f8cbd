package web_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
	"github.com/quantix/quantix/vdc/vdctest"
)

// twoVDCs starts two vDCs on one database, configured alike (docs/design.md §17),
// and an HTTPS client for each (each trusts its own vDC's certificate).
func twoVDCs(t *testing.T) (a, b *vdctest.VDC, ca, cb *http.Client) {
	t.Helper()
	skipShort(t)
	a = vdctest.Start(t, vdctest.Options{})
	b = vdctest.Start(t, vdctest.Options{DatabaseURL: a.DatabaseURL, JoinTokens: []string{a.JoinToken}, AdminToken: a.AdminToken})
	return a, b, a.HTTPSClient(t), b.HTTPSClient(t)
}

// withSession sends a GET to url with the session cookie and returns the status.
func withSession(t *testing.T, c *http.Client, url string, s *http.Cookie) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.AddCookie(s)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestSessionsAcrossVDCs: a login through one vDC opens the pages and the API of the
// other; a rotation of the admin token through either ends every session on both,
// and the new token logs in.
func TestSessionsAcrossVDCs(t *testing.T) {
	a, b, ca, cb := twoVDCs(t)
	s := uiLogin(t, a, ca)
	for _, path := range []string{"/ui/hosts", quantix.PathNodes} {
		if code := withSession(t, cb, b.UIURL+path, s); code != http.StatusOK {
			t.Errorf("the other vDC's %s with the session: %d, want 200", path, code)
		}
	}
	var rot quantix.AdminTokenRotation
	agentCall(t, http.DefaultClient, http.MethodPost, b.URL+quantix.PathAdminTokenRotate, b.AdminToken, struct{}{}, &rot, http.StatusOK)
	if rot.UISessionsEnded != 1 {
		t.Errorf("rotation ended %d ui sessions, want 1", rot.UISessionsEnded)
	}
	for _, v := range []struct {
		c   *http.Client
		url string
	}{{ca, a.UIURL}, {cb, b.UIURL}} {
		if code := withSession(t, v.c, v.url+quantix.PathNodes, s); code != http.StatusUnauthorized {
			t.Errorf("%s with a session from before the rotation: %d, want 401", v.url, code)
		}
	}
	if code, _, s := uiLoginAs(t, b, cb, a.AdminToken); code != http.StatusUnauthorized || s != nil {
		t.Errorf("login with the old token: %d, session %v; want 401, none", code, s != nil)
	}
	code, _, s2 := uiLoginAs(t, b, cb, rot.AdminToken)
	if s2 == nil {
		t.Fatalf("login with the new token: %d, no session", code)
	}
	if code := withSession(t, ca, a.UIURL+quantix.PathNodes, s2); code != http.StatusOK {
		t.Errorf("the new session on the other vDC: %d, want 200", code)
	}
}

// TestLoginThrottleAcrossVDCs: failed logins from one address spread over two vDCs
// count together: after 6 (three on each) the address waits on both, as after 6 on
// one vDC (TestLoginThrottle), even with the right token.
func TestLoginThrottleAcrossVDCs(t *testing.T) {
	a, b, ca, cb := twoVDCs(t)
	vdcs := []struct {
		v *vdctest.VDC
		c *http.Client
	}{{a, ca}, {b, cb}}
	for i := range 6 {
		v := vdcs[i%2]
		if code, _, _ := uiLoginAs(t, v.v, v.c, "wrong-token-"+randHex(8)); code != http.StatusUnauthorized {
			t.Fatalf("failure %d (on vDC %d): %d, want 401", i+1, i%2, code)
		}
	}
	for i, v := range vdcs {
		code, retry, s := uiLoginAs(t, v.v, v.c, a.AdminToken)
		if code != http.StatusTooManyRequests || retry != "1" || s != nil {
			t.Errorf("vDC %d, right token after 6 failures spread over both: %d Retry-After %q session %v; want 429, 1, none",
				i, code, retry, s != nil)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	if code, _, s := uiLoginAs(t, b, cb, a.AdminToken); s == nil {
		t.Errorf("right token after the wait: %d, no session", code)
	}
}

// TestDatabaseDownAnswers503: with the database unreachable, admin requests (even
// one the vDC could answer from memory) and logins are 503 once the cached admin
// token digest is older than its TTL, never 401, so nobody hunts a token problem
// that is not there and a rotated-away token is not honoured past the bound; when
// the database is back, everything works again.
func TestDatabaseDownAnswers503(t *testing.T) {
	skipShort(t)
	dbURL := vdctest.Shared(t).NewDatabase(t)
	proxy := vdctest.StartProxy(t, dbURL)
	v := vdctest.Start(t, vdctest.Options{DatabaseURL: proxy.URL(dbURL), DatabaseTimeout: time.Second})
	c := v.HTTPSClient(t)
	agentCall(t, http.DefaultClient, http.MethodGet, v.URL+quantix.PathAgentCA, v.AdminToken, nil, nil, http.StatusOK)
	s := uiLogin(t, v, c)

	proxy.Cut()
	cut := time.Now()
	var code int
	var body []byte
	for {
		// Answered from memory once the token is checked: 200 while the cached
		// digest is younger than its TTL (it may be older already), then 503.
		code, body = rawCall(t, http.DefaultClient, http.MethodGet, v.URL+quantix.PathAgentCA, v.AdminToken, nil)
		if code != http.StatusOK || time.Since(cut) > store.AdminTokenTTL+5*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := time.Since(cut)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "database") || after > store.AdminTokenTTL+time.Second {
		t.Fatalf("admin GET %s %s after the database went away: %d %s, want 503 naming the database within the TTL (%s)",
			quantix.PathAgentCA, after.Round(time.Millisecond), code, body, store.AdminTokenTTL)
	}
	t.Logf("admin requests answered 503 %s after the database went away (TTL %s): %s", after.Round(time.Millisecond), store.AdminTokenTTL, body)
	if code, b := rawCall(t, http.DefaultClient, http.MethodGet, v.URL+quantix.PathNodes, "wrong-token-"+randHex(8), nil); code != http.StatusServiceUnavailable {
		t.Errorf("a wrong token while the database is away: %d %s, want 503 (the vDC cannot tell)", code, b)
	}
	if code, _, _ := uiLoginAs(t, v, c, v.AdminToken); code != http.StatusServiceUnavailable {
		t.Errorf("login while the database is away: %d, want 503", code)
	}
	if code := withSession(t, c, v.UIURL+quantix.PathNodes, s); code != http.StatusServiceUnavailable {
		t.Errorf("a session while the database is away: %d, want 503", code)
	}

	proxy.Heal(t)
	healed := time.Now()
	for {
		code, body = rawCall(t, http.DefaultClient, http.MethodGet, v.URL+quantix.PathNodes, v.AdminToken, nil)
		if code == http.StatusOK {
			break
		}
		if time.Since(healed) > 15*time.Second {
			t.Fatalf("admin GET %s %s after the database came back: %d %s", quantix.PathNodes, time.Since(healed), code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := withSession(t, c, v.UIURL+quantix.PathNodes, s); code != http.StatusOK {
		t.Errorf("the session after the database came back: %d, want 200", code)
	}
	if code, _, s := uiLoginAs(t, v, c, v.AdminToken); s == nil {
		t.Errorf("login after the database came back: %d, no session", code)
	}
}
