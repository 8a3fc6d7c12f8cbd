package vm

import (
	"flag"
	"os"
	"regexp"
	"sync"
	"testing"
)

var (
	artifactMu   sync.Mutex
	artifactDirs = map[testing.TB]string{}
)

// ArtifactDir returns the folder for test t's VM artifacts (serial logs, QEMU stderr
// and command lines, pcaps). With `go test -artifacts -outputdir=DIR` it is
// t.ArtifactDir() under DIR/_artifacts. Otherwise it is a temporary folder that is
// removed when t passes and kept, with its path logged, when t fails.
func ArtifactDir(t testing.TB) string {
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
		d, err := os.MkdirTemp("", "quantix-vm-"+safeName(t.Name())+"-")
		if err != nil {
			t.Fatalf("artifact folder: %v", err)
		}
		dir = d
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("VM artifacts kept in %s (go test -artifacts keeps them under -outputdir)", dir)
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
