package web_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/quantix/quantix/vdc/vdctest"
)

// ChromiumPath is Debian's chromium package's binary.
const ChromiumPath = "/usr/bin/chromium"

// browser is a headless Chromium tab that trusts exactly one vDC's certificate.
type browser struct {
	t         testing.TB
	ctx       context.Context
	artifacts string
}

// spkiHash is the base64 SHA-256 of the certificate's public key info, the form
// --ignore-certificate-errors-spki-list takes.
func spkiHash(t testing.TB, certFile string) string {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatalf("read the UI certificate: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
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

// newBrowser starts Chromium for v. A missing Chromium fails the test with the
// install command.
func newBrowser(t *testing.T, v *vdctest.VDC) *browser {
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
		chromedp.Flag("ignore-certificate-errors-spki-list", spkiHash(t, v.CertFile)),
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
	return &browser{t: t, ctx: ctx, artifacts: artifactDir(t)}
}

// do runs actions, each step limited to a minute.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v (page %s)", what, err, b.location())
	}
}

func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// evalAsync evaluates an expression that returns a promise.
func evalAsync[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// wait polls a JavaScript condition from Go (the page's CSP forbids the eval that
// chromedp.Poll uses in the page).
func (b *browser) wait(what, cond string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+cond+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.screenshot("failed-" + safeName(what))
			b.t.Fatalf("%s: not within %s (%s; last error %v; page %s)", what, timeout, cond, err, b.location())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *browser) location() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	l, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("location.pathname + location.search"))
	return l
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	return eval[string](b, fmt.Sprintf(`(document.querySelector(%q) || {textContent: ''}).textContent`, sel))
}

func (b *browser) html() string {
	b.t.Helper()
	return eval[string](b, "document.documentElement.outerHTML")
}

// noErrors fails the test on any CSP violation or script error the page had.
func (b *browser) noErrors(where string) {
	b.t.Helper()
	errs := eval[[]string](b, "window.__qxErrors || []")
	if len(errs) > 0 {
		b.t.Errorf("%s: the page reported %q", where, errs)
	}
}

// screenshot saves a full-page PNG as a test artifact.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.artifacts, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
	}
}

func (b *browser) cookies(url string) []*network.Cookie {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	if err != nil {
		b.t.Fatalf("read cookies: %v", err)
	}
	return res.Cookies
}

var (
	artifactMu   sync.Mutex
	artifactDirs = map[testing.TB]string{}
)

// artifactDir is where test t keeps its artifacts (screenshots), as tests/vm does:
// with `go test -artifacts -outputdir=DIR` it is t.ArtifactDir() under
// DIR/_artifacts; otherwise a temporary folder removed when t passes and kept, with
// its path logged, when t fails.
func artifactDir(t testing.TB) string {
	t.Helper()
	artifactMu.Lock()
	defer artifactMu.Unlock()
	if d, ok := artifactDirs[t]; ok {
		return d
	}
	var dir string
	if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		dir = t.ArtifactDir()
	} else {
		d, err := os.MkdirTemp("", "quantix-web-"+safeName(t.Name())+"-")
		if err != nil {
			t.Fatalf("artifact folder: %v", err)
		}
		dir = d
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("screenshots kept in %s (go test -artifacts keeps them under -outputdir)", dir)
				return
			}
			os.RemoveAll(dir)
		})
	}
	artifactDirs[t] = dir
	t.Cleanup(func() {
		artifactMu.Lock()
		delete(artifactDirs, t)
		artifactMu.Unlock()
	})
	return dir
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string {
	s = unsafeChars.ReplaceAllString(s, "_")
	if len(s) > 48 {
		s = s[:48]
	}
	return s
}

// js quotes s as a JavaScript string literal.
func js(s string) string { return fmt.Sprintf("%q", s) }
