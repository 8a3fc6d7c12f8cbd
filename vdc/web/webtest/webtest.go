// Package webtest drives the vDC web UI in a real browser for tests: Debian's
// headless Chromium through chromedp, trusting exactly one vDC certificate (by its
// public key), with a probe that records CSP violations, script errors and render
// timing, and full-page screenshots kept as test artifacts.
package webtest

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/quantix/quantix/tests/artifacts"
)

// ChromiumPath is Debian's chromium package's binary.
const ChromiumPath = "/usr/bin/chromium"

// Browser is a headless Chromium tab that trusts exactly one vDC's certificate.
type Browser struct {
	T         testing.TB
	Ctx       context.Context
	Artifacts string // where Screenshot writes
}

// SPKIHashFile is SPKIHash of the PEM certificate in certFile.
func SPKIHashFile(t testing.TB, certFile string) string {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatalf("read the UI certificate: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", certFile)
		return ""
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return SPKIHash(c)
}

// SPKIHash is the base64 SHA-256 of the certificate's public key info, the form
// Chromium's --ignore-certificate-errors-spki-list takes.
func SPKIHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// pageProbe runs in every document before the page's own script (CDP-injected
// scripts are not subject to the page's CSP). It records CSP violations and
// script errors, and when the first table rows appear and are painted.
const pageProbe = `
window.__qxErrors = [];
addEventListener('securitypolicyviolation', (e) => __qxErrors.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));
addEventListener('error', (e) => __qxErrors.push('error: ' + e.message));
addEventListener('unhandledrejection', (e) => __qxErrors.push('unhandled rejection: ' + e.reason));
new MutationObserver(() => {
  const tb = document.querySelector('table.grid tbody');
  if (!window.__rowsAt && tb && tb.children.length > 0) {
    window.__rowsAt = performance.now();
    requestAnimationFrame(() => setTimeout(() => { window.__rowsPaintedAt = performance.now(); }, 0));
  }
}).observe(document, { childList: true, subtree: true });
`

// New starts Chromium for t, trusting the certificate whose public key has the
// SPKI hash spki (SPKIHash) and no other. A missing Chromium fails the test with
// the install command.
func New(t testing.TB, spki string) *Browser {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		t.Fatalf("%s: %v: run make deps (apt-get install chromium)", ChromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(ChromiumPath),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
		// Trust the vDC's self-signed certificate and nothing else: Chromium
		// accepts a certificate error only for this public key.
		chromedp.Flag("ignore-certificate-errors-spki-list", spki),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("lang", "en-US"),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses its sandbox as root
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: pageProbe}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &Browser{T: t, Ctx: ctx, Artifacts: ArtifactDir(t)}
}

// Do runs actions, each step limited to a minute.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.T.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.T.Fatalf("%s: %v (page %s)", what, err, b.Location())
	}
}

func Eval[T any](b *Browser, expr string) T {
	b.T.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.T.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// EvalAsync evaluates an expression that returns a promise.
func EvalAsync[T any](b *Browser, expr string) T {
	b.T.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.T.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// Wait polls a JavaScript condition from Go (the page's CSP forbids the eval that
// chromedp.Poll uses in the page).
func (b *Browser) Wait(what, cond string, timeout time.Duration) {
	b.T.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(b.Ctx, 10*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+cond+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.Screenshot("failed-" + artifacts.SafeName(what))
			b.T.Fatalf("%s: not within %s (%s; last error %v; page %s)", what, timeout, cond, err, b.Location())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *Browser) Location() string {
	ctx, cancel := context.WithTimeout(b.Ctx, 5*time.Second)
	defer cancel()
	l, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("location.pathname + location.search"))
	return l
}

func (b *Browser) Text(sel string) string {
	b.T.Helper()
	return Eval[string](b, fmt.Sprintf(`(document.querySelector(%q) || {textContent: ''}).textContent`, sel))
}

func (b *Browser) HTML() string {
	b.T.Helper()
	return Eval[string](b, "document.documentElement.outerHTML")
}

// NoErrors fails the test on any CSP violation or script error the page had.
func (b *Browser) NoErrors(where string) {
	b.T.Helper()
	errs := Eval[[]string](b, "window.__qxErrors || []")
	if len(errs) > 0 {
		b.T.Errorf("%s: the page reported %q", where, errs)
	}
}

// Screenshot saves a full-page PNG as a test artifact.
func (b *Browser) Screenshot(name string) {
	b.T.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.T.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.Artifacts, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.T.Errorf("screenshot %s: %v", name, err)
	}
}

func (b *Browser) Cookies(url string) []*network.Cookie {
	b.T.Helper()
	res, err := chromedp.Call(b.Ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	if err != nil {
		b.T.Fatalf("read cookies: %v", err)
	}
	return res.Cookies
}

// ArtifactDir is where test t keeps its artifacts (screenshots), shared with the
// test's VM artifacts: see artifacts.Dir.
func ArtifactDir(t testing.TB) string { return artifacts.Dir(t) }

// JS quotes s as a JavaScript string literal.
func JS(s string) string { return fmt.Sprintf("%q", s) }

// Login opens base (the UI's https:// root) at the Hosts page, which sends a
// browser without a session to the login form, logs in with the admin token and
// waits for the Hosts page to have loaded its data.
func (b *Browser) Login(base, token string) {
	b.T.Helper()
	b.Do("open the hosts page", chromedp.Navigate(base+"/ui/hosts"))
	b.Wait("login form", `document.querySelector('#token')`, 30*time.Second)
	b.Do("log in with the admin token",
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login-submit")))
	b.Wait("hosts page after login", `location.pathname === '/ui/hosts' && document.body.dataset.loaded === 'true'`, 30*time.Second)
}
