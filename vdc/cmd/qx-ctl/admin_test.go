package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix/quantix"
)

// TestAdminTokenRotate: `admin-token rotate` writes the new token into the token
// file it used (0600) without printing it, after which the file works and the old
// token does not; --print and -o json show it instead, leaving the file alone.
func TestAdminTokenRotate(t *testing.T) {
	l := newLab(t)
	file := filepath.Join(t.TempDir(), "admin-token")
	writeFile(t, file, l.v.AdminToken+"\n", 0o600)
	r := l.must("admin-token", "rotate", "--token-file", file)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) != 64 || tok == l.v.AdminToken || !strings.Contains(r.stdout, "written to "+file) || strings.Contains(r.stdout, tok) {
		t.Fatalf("rotate: %s\nwant the new 64-hex token in %s (it holds %d characters), not on stdout", r, file, len(tok))
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, %v; want 0600", fi.Mode(), err)
	}
	l.must("nodes", "list", "--token-file", file)
	if r := l.ctl("nodes", "list"); r.code != exitAuth { // QX_ADMIN_TOKEN: the old one
		t.Errorf("the old token after the rotation: %s\nwant exit %d", r, exitAuth)
	}

	r = l.must("admin-token", "rotate", "--token-file", file, "--print")
	if b, _ := os.ReadFile(file); strings.TrimSpace(string(b)) != tok || strings.Contains(r.stdout, tok) {
		t.Fatalf("rotate --print: %s\nwant the token file untouched", r)
	}
	var printed string
	for _, line := range strings.Split(r.stdout, "\n") {
		if v, ok := strings.CutPrefix(line, "new admin token:"); ok {
			printed = strings.TrimSpace(v)
		}
	}
	if len(printed) != 64 {
		t.Fatalf("rotate --print: no new token on stdout:\n%s", r)
	}
	t.Setenv(envToken, printed)
	r = l.must("admin-token", "rotate", "-o", "json")
	var rot quantix.AdminTokenRotation
	decodeStrict(t, r.stdout, &rot)
	if len(rot.AdminToken) != 64 || rot.Generation != 4 || rot.PropagationSeconds < 1 {
		t.Errorf("rotate -o json = %+v, want a token, generation 4, a propagation bound", rot)
	}
	if r := l.ctl("nodes", "list"); r.code != exitAuth {
		t.Errorf("the --print token after the next rotation: %s\nwant exit %d", r, exitAuth)
	}
	if r := l.ctl("admin-token", "rotate", "now"); r.code != exitUsage {
		t.Errorf("rotate with an argument: %s\nwant exit %d", r, exitUsage)
	}
}
