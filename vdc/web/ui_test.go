package web_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quantix/quantix"
	qxagent "github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/tests/syncbuf"
	"github.com/quantix/quantix/vdc/vdctest"
	"github.com/quantix/quantix/vdc/web"
	"github.com/quantix/quantix/vdc/web/webtest"
)

// logTee keeps the vDC's log for the secret checks and passes it to t.Log.
type logTee struct {
	buf syncbuf.Buffer
	t   testing.TB
}

func (l *logTee) Write(p []byte) (int, error) {
	l.buf.Write(p)
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// heartbeater heartbeats for a node every 300 ms until stopped.
type heartbeater struct {
	stop chan struct{}
	done sync.WaitGroup
}

func startHeartbeats(t *testing.T, v *vdctest.VDC, a agent) *heartbeater {
	h := &heartbeater{stop: make(chan struct{})}
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		tk := time.NewTicker(300 * time.Millisecond)
		defer tk.Stop()
		for {
			a.heartbeat(t, v, http.DefaultClient)
			select {
			case <-h.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return h
}

func (h *heartbeater) Stop() {
	close(h.stop)
	h.done.Wait()
}

// TestBrowser drives the real UI in headless Chromium against a real qx-vdc
// (its TLS listener, certificate trusted by public key) and PostgreSQL.
func TestBrowser(t *testing.T) {
	skipShort(t)
	logs := &logTee{t: t}
	v := vdctest.Start(t, vdctest.Options{HeartbeatInterval: time.Second, Log: logs})
	b := webtest.New(t, webtest.SPKIHashFile(t, v.CertFile))
	c := http.DefaultClient
	var secrets []string // must never appear in a page or the log
	secrets = append(secrets, v.AdminToken, v.JoinToken, vdctest.Shared(t).Password)
	pages := map[string]string{} // outer HTML of every page visited, by screenshot name

	grab := func(name string) {
		t.Helper()
		b.NoErrors(name)
		pages[name] = b.HTML()
		b.Screenshot(name)
	}

	// The browser trusts this vDC's key only: another self-signed server is refused.
	other := httptest.NewTLSServer(http.NotFoundHandler())
	defer other.Close()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	err := chromedp.Do(ctx, chromedp.Navigate(other.URL))
	cancel()
	if err == nil || !strings.Contains(err.Error(), "ERR_CERT") {
		t.Errorf("navigating to another self-signed server: %v, want a certificate error", err)
	}

	// --- Login required ---
	b.Do("open the hosts page", chromedp.Navigate(v.UIURL+"/ui/hosts"))
	if loc := b.Location(); loc != "/ui/login?next=%2Fui%2Fhosts" {
		t.Fatalf("without a session /ui/hosts shows %s, want the login page", loc)
	}
	b.Wait("login form", `document.querySelector('#token')`, 10*time.Second)
	grab("login")
	b.Do("log in with a wrong token",
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-admin-token-0123456789"),
		chromedp.Click(chromedp.CSS("#login-submit")))
	b.Wait("wrong-token error", `(document.querySelector('#login-error') || {}).textContent === 'Wrong admin token.'`, 10*time.Second)
	if loc := b.Location(); !strings.HasPrefix(loc, "/ui/login") {
		t.Errorf("after a wrong token the browser is on %s", loc)
	}
	grab("login-error")
	b.Do("log in with the admin token",
		chromedp.SendKeys(chromedp.CSS("#token"), v.AdminToken),
		chromedp.Click(chromedp.CSS("#login-submit")))
	b.Wait("hosts page after login", `location.pathname === '/ui/hosts' && document.body.dataset.loaded === 'true'`, 15*time.Second)

	// The session cookie as the browser holds it.
	var session string
	for _, ck := range b.Cookies(v.UIURL) {
		if ck.Name == web.SessionCookie {
			session = ck.Value
			if !ck.Secure || !ck.HTTPOnly || ck.SameSite != "Strict" || ck.Path != "/" {
				t.Errorf("session cookie in the browser: %+v; want Secure, HttpOnly, SameSite=Strict, Path=/", ck)
			}
		}
	}
	if session == "" {
		t.Fatalf("no %s cookie after login", web.SessionCookie)
	}
	secrets = append(secrets, session)
	csrf := webtest.Eval[string](b, `document.querySelector('meta[name="csrf-token"]').content`)

	// --- A node registered while the page is open appears without a reload ---
	webtest.Eval[bool](b, "window.__qxMark = true")
	a := registerAgent(t, v, c, "web-node-1.lab")
	secrets = append(secrets, a.Secret)
	hb := startHeartbeats(t, v, a)
	row := fmt.Sprintf(`document.querySelector('#hosts tbody tr[data-key="%s"]')`, a.ID)
	b.Wait("the new node's row", row, 15*time.Second)
	if !webtest.Eval[bool](b, "window.__qxMark === true") {
		t.Errorf("the page reloaded to show the new node")
	}
	b.Wait("ready badge", row+`.querySelector('.badge.phase-ready').textContent === 'Ready'`, 15*time.Second)
	cells := webtest.Eval[[]string](b, `Array.from(`+row+`.cells).map(c => c.textContent)`)
	for i, want := range []string{"web-node-1.lab", "10.1.2.3", "Ready", "", "23.5 %16 cores · 32 threads · AMD EPYC 7302P", "20 GiB / 64 GiB", "0", "0.9.1", "available (9.0.0)"} {
		if want != "" && (i >= len(cells) || cells[i] != want) {
			t.Errorf("hosts row cell %d = %q, want %q (row %q)", i, cells[min(i, len(cells)-1)], want, cells)
		}
	}
	if !strings.HasSuffix(cells[3], "s ago") {
		t.Errorf("last heartbeat cell = %q, want an age", cells[3])
	}
	if got := b.Text(`#phase-tabs [data-count="ready"]`); got != "1" {
		t.Errorf("ready tab count = %q, want 1", got)
	}
	grab("hosts")

	// Search and phase filters keep working while the list refreshes.
	b.Do("search", chromedp.SendKeys(chromedp.CSS("#search"), "nomatch"))
	b.Wait("empty search result", `!document.querySelector('#empty').hidden`, 10*time.Second)
	if loc := b.Location(); loc != "/ui/hosts?q=nomatch" {
		t.Errorf("search is not kept in the URL: %s", loc)
	}
	webtest.Eval[bool](b, `(document.querySelector('#search').value = '') === ''`)
	b.Do("search again", chromedp.SendKeys(chromedp.CSS("#search"), "web-node"))
	b.Wait("search result", row, 10*time.Second)

	// --- The phase badge follows the heartbeats ---
	hb.Stop()
	b.Wait("not ready or disconnected badge", row+`.querySelector('.badge.phase-not_ready, .badge.phase-disconnected')`, 20*time.Second)
	b.Wait("disconnected badge", row+`.querySelector('.badge.phase-disconnected').textContent === 'Disconnected'`, 20*time.Second)
	if !webtest.Eval[bool](b, "window.__qxMark === true") {
		t.Errorf("the page reloaded while the phase changed")
	}
	b.Do("disconnected tab", chromedp.Click(chromedp.CSS(`#phase-tabs [data-phase="disconnected"]`)))
	b.Wait("disconnected filter", `location.search === '?phase=disconnected&q=web-node' && `+row, 10*time.Second)
	grab("hosts-disconnected")

	// --- Inventory ---
	vms := []quantix.VM{
		{UUID: vmUUID(1), Name: "db-1", PowerState: quantix.PowerRunning, VCPUs: 4, MemoryBytes: 8 << 30},
		{UUID: vmUUID(2), Name: "web-1", PowerState: quantix.PowerRunning, VCPUs: 2, MemoryBytes: 4 << 30},
		{UUID: vmUUID(3), Name: "old-1", PowerState: quantix.PowerShutoff, VCPUs: 1, MemoryBytes: 1 << 30},
	}
	pools := []quantix.StoragePool{{Name: "default", Type: "dir", Path: "/var/lib/quantix/images", State: "running", CapacityBytes: 500 << 30, AvailableBytes: 320 << 30},
		{Name: "scratch", Type: "dir", Path: "/scratch", State: "running", CapacityBytes: 100 << 30, AvailableBytes: 90 << 30}}
	a.putState(t, v, c, vms, pools)
	a.putState(t, v, c, vms[:2], pools[:1]) // old-1 and scratch are lost

	// --- Host detail: maintenance on and off ---
	b.Do("open the host", chromedp.Click(chromedp.CSS(`#hosts tbody tr[data-key="`+a.ID+`"] a`)))
	b.Wait("host page", `location.pathname === '/ui/hosts/`+a.ID+`' && document.body.dataset.loaded === 'true'`, 15*time.Second)
	b.Wait("host VMs", `document.querySelectorAll('#h-vms tbody tr').length === 3 && document.querySelectorAll('#h-pools tbody tr').length === 2`, 10*time.Second)
	if got := b.Text("#h-title"); got != "web-node-1.lab" {
		t.Errorf("host title = %q", got)
	}
	lost := webtest.Eval[[]string](b, `Array.from(document.querySelectorAll('#h-vms tr.is-lost td:first-child')).map(td => td.textContent)`)
	if strings.Join(lost, ",") != "old-1" {
		t.Errorf("lost VMs on the host page = %q, want old-1", lost)
	}
	events := b.Text("#h-events tbody")
	for _, want := range []string{"registered", "ready -> not_ready", "disconnected", "vm old-1"} {
		if !strings.Contains(events, want) {
			t.Errorf("host events lack %q:\n%s", want, events)
		}
	}
	b.Do("enter maintenance", chromedp.Click(chromedp.CSS("#maint-btn")))
	b.Wait("maintenance badge", `document.querySelector('#h-phase').textContent === 'Maintenance' && document.querySelector('#h-phase').classList.contains('phase-maintenance')`, 10*time.Second)
	if n := v.Node(t, a.ID); n.Phase != quantix.PhaseMaintenance {
		t.Errorf("after Enter maintenance the API says %s", n.Phase)
	}
	b.Wait("exit button", `document.querySelector('#maint-btn').textContent === 'Exit maintenance'`, 5*time.Second)
	grab("host-maintenance")
	b.Do("exit maintenance", chromedp.Click(chromedp.CSS("#maint-btn")))
	b.Wait("left maintenance", `document.querySelector('#h-phase').textContent === 'Disconnected'`, 10*time.Second)
	if n := v.Node(t, a.ID); n.Phase != quantix.PhaseDisconnected {
		t.Errorf("after Exit maintenance the API says %s, want disconnected (no heartbeats)", n.Phase)
	}
	b.Wait("maintenance events", `document.querySelector('#h-events tbody').textContent.includes('maintenance -> disconnected (set by an admin)')`, 10*time.Second)
	grab("host")

	// --- A state-changing request without the CSRF token is refused ---
	noCSRF := webtest.EvalAsync[int](b, `fetch('/api/v1/nodes/`+a.ID+`/maintenance', {method: 'PUT', headers: {'Content-Type': 'application/json'}, body: '{"maintenance": true}'}).then(r => r.status)`)
	if noCSRF != http.StatusForbidden {
		t.Errorf("PUT maintenance from the page without X-CSRF-Token: %d, want 403", noCSRF)
	}
	if n := v.Node(t, a.ID); n.Phase == quantix.PhaseMaintenance {
		t.Errorf("the CSRF-less request changed the node")
	}
	withCSRF := webtest.EvalAsync[int](b, `fetch('/api/v1/join-tokens', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': `+webtest.JS(csrf)+`}, body: '{"ttl_seconds": 60}'}).then(r => r.status)`)
	if withCSRF != http.StatusCreated {
		t.Errorf("POST join-tokens from the page with the CSRF token: %d, want 201", withCSRF)
	}

	// --- VMs and storage pools pages ---
	b.Do("vms page", chromedp.Navigate(v.UIURL+"/ui/vms"))
	b.Wait("vms", `document.body.dataset.loaded === 'true' && document.querySelectorAll('#inventory tbody tr').length === 3`, 15*time.Second)
	if got := b.Text(`#inventory tbody tr.is-lost .badge.lost`); got != "Lost" {
		t.Errorf("lost VM badge = %q, want Lost", got)
	}
	if got := b.Text(`#inventory tbody tr.is-lost .sub`); !strings.HasPrefix(got, "not reported in the node's full state · since ") {
		t.Errorf("lost VM note = %q, want the reason and the time", got)
	}
	grab("vms")
	b.Do("lost tab", chromedp.Click(chromedp.CSS(`#lost-tabs [data-lost="true"]`)))
	b.Wait("lost VMs only", `location.search === '?lost=true' && document.querySelectorAll('#inventory tbody tr').length === 1 && document.querySelector('#inventory tbody td').textContent === 'old-1'`, 10*time.Second)
	b.Do("pools page", chromedp.Navigate(v.UIURL+"/ui/pools"))
	b.Wait("pools", `document.body.dataset.loaded === 'true' && document.querySelectorAll('#inventory tbody tr').length === 2`, 15*time.Second)
	if got := b.Text(`#inventory tbody tr.is-lost td`); got != "scratch" {
		t.Errorf("lost pool = %q, want scratch", got)
	}
	grab("pools")

	// --- Join tokens: created once, shown with the kernel command line and agent.toml ---
	b.Do("tokens page", chromedp.Navigate(v.UIURL+"/ui/tokens"))
	grab("tokens")
	b.Do("create a token",
		chromedp.Click(chromedp.CSS("#uses")),
		chromedp.KeyEvent("\b"),
		chromedp.SendKeys(chromedp.CSS("#uses"), "2"),
		chromedp.SendKeys(chromedp.CSS("#description"), "rack 4"),
		chromedp.Click(chromedp.CSS("#create-token")))
	b.Wait("the new token", `document.body.dataset.created === 'true'`, 10*time.Second)
	token := b.Text("#token-value")
	if pin, secret, err := quantix.ParseJoinToken(token); err != nil || pin != v.Pin || len(secret) != 64 {
		t.Fatalf("token shown = %q (%v), want qx1.%s.<64 hex characters>", token, err, v.Pin)
	}
	if got := b.Text("#ca-pin"); got != v.Pin {
		t.Errorf("agent CA pin shown = %q, want %q", got, v.Pin)
	}
	secrets = append(secrets, token)
	wantCmdline := quantix.ParamVDC + "=" + v.AgentURL + " " + quantix.ParamToken + "=" + token
	if got := b.Text("#cmdline"); got != wantCmdline {
		t.Errorf("kernel command line = %q, want %q", got, wantCmdline)
	}
	cl := quantix.ParseCmdline(b.Text("#cmdline"))
	if cl.Value(quantix.ParamVDC) != v.AgentURL || cl.Value(quantix.ParamToken) != token {
		t.Errorf("the command line parses to vdc %q token %q", cl.Value(quantix.ParamVDC), cl.Value(quantix.ParamToken))
	}
	var fc qxagent.FileConfig
	if err := quantix.DecodeTOML("agent.toml", []byte(b.Text("#agent-toml")), &fc); err != nil || fc.ControlPlane != v.AgentURL || fc.JoinToken != token || fc.Validate() != nil {
		t.Errorf("agent.toml lines %q decode to %+v, %v; want control_plane %s and the token", b.Text("#agent-toml"), fc, err, v.AgentURL)
	}
	if meta := b.Text("#token-meta"); !strings.Contains(meta, "2 uses") || !strings.Contains(meta, "rack 4") {
		t.Errorf("token details = %q", meta)
	}
	grab("tokens-created")
	// The token works: a new node registers with it.
	tv := v
	req := quantix.RegisterRequest{Hostname: "joined-by-ui", MachineID: randHex(8), NodeSecret: randHex(32), ManagementIP: "10.1.2.9"}
	agentCall(t, c, http.MethodPost, tv.AgentURL+quantix.PathRegister, token, req, nil, http.StatusCreated)
	secrets = append(secrets, req.NodeSecret)

	// --- Delete with confirmation ---
	b.Do("host page again", chromedp.Navigate(v.UIURL+"/ui/hosts/"+a.ID))
	b.Wait("host page loaded", `document.body.dataset.loaded === 'true' && !document.querySelector('#delete-btn').disabled`, 15*time.Second)
	b.Do("delete, then cancel", chromedp.Click(chromedp.CSS("#delete-btn")))
	b.Wait("confirmation dialog", `document.querySelector('#delete-dialog').open`, 5*time.Second)
	if got := b.Text("#dlg-name"); got != "web-node-1.lab" {
		t.Errorf("the dialog names %q", got)
	}
	grab("host-delete-dialog")
	b.Do("cancel", chromedp.Click(chromedp.CSS("#cancel-delete")))
	b.Wait("dialog closed", `!document.querySelector('#delete-dialog').open`, 5*time.Second)
	time.Sleep(500 * time.Millisecond)
	v.Node(t, a.ID) // still there
	b.Do("delete, then confirm", chromedp.Click(chromedp.CSS("#delete-btn")))
	b.Wait("confirmation dialog", `document.querySelector('#delete-dialog').open`, 5*time.Second)
	b.Do("confirm", chromedp.Click(chromedp.CSS("#confirm-delete")))
	b.Wait("back on the hosts page", `location.pathname === '/ui/hosts' && document.body.dataset.loaded === 'true'`, 15*time.Second)
	b.Wait("deleted toast", `document.querySelector('#toast').textContent === 'Deleted host web-node-1.lab'`, 5*time.Second)
	b.Wait("the row is gone", `!`+row, 10*time.Second)
	if webtest.Eval[bool](b, "!!"+row) {
		t.Errorf("the deleted host is still listed")
	}
	if code, body := rawCall(t, c, http.MethodGet, v.URL+quantix.PathNode(a.ID), v.AdminToken, nil); code != http.StatusNotFound {
		t.Errorf("GET the deleted node: %d %s, want 404", code, body)
	}
	grab("hosts-after-delete")

	// --- No page and no log line shows a secret ---
	if len(pages) != 12 {
		t.Errorf("checked %d pages, want 12", len(pages))
	}
	for name, html := range pages {
		for _, s := range secrets {
			if s != token && strings.Contains(html, s) {
				t.Errorf("page %s holds a secret (%.6s...)", name, s)
			}
		}
		if name != "tokens-created" && strings.Contains(html, token) {
			t.Errorf("page %s shows the join token", name)
		}
	}
	visible := webtest.Eval[string](b, "document.body.innerText")
	if strings.Contains(visible, csrf) {
		t.Errorf("the page text shows the CSRF token")
	}

	// --- Logout ends the session ---
	b.Do("log out", chromedp.Click(chromedp.CSS(".logout button")))
	b.Wait("login page", `location.pathname === '/ui/login'`, 10*time.Second)
	b.Do("hosts after logout", chromedp.Navigate(v.UIURL+"/ui/vms"))
	if loc := b.Location(); !strings.HasPrefix(loc, "/ui/login") {
		t.Errorf("after logout /ui/vms shows %s, want the login page", loc)
	}
	// The old session id no longer works, even with its CSRF token.
	r, _ := http.NewRequest(http.MethodGet, v.UIURL+quantix.PathNodes, nil)
	r.AddCookie(&http.Cookie{Name: web.SessionCookie, Value: session})
	resp, err := v.HTTPSClient(t).Do(r)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("API with the logged-out session: %d, want 401", resp.StatusCode)
	}

	log := logs.buf.String()
	for _, s := range append(secrets, csrf) {
		if strings.Contains(log, s) {
			t.Errorf("the vDC log holds a secret (%.6s...)", s)
		}
	}
	if !strings.Contains(log, "ui login failed") || !strings.Contains(log, "ui logout") {
		t.Errorf("the log lacks the login failure or the logout")
	}
}
