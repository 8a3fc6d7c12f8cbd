// Package artifacts gives each test one folder for the files a failure is
// diagnosed with (VM serial logs, QEMU command lines, pcaps, browser screenshots),
// shared by every helper that writes them for that test.
package artifacts

import (
	"flag"
	"os"
	"regexp"
	"sync"
	"testing"
)

var (
	mu   sync.Mutex
	dirs = map[testing.TB]string{}
)

// Dir returns the folder for test t's artifacts. With `go test -artifacts
// -outputdir=DIR` it is t.ArtifactDir() under DIR/_artifacts. Otherwise it is a
// temporary folder that is removed when t passes and kept, with its path logged,
// when t fails. Every call for the same t returns the same folder.
func Dir(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if d, ok := dirs[t]; ok {
		return d
	}
	var dir string
	if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		dir = t.ArtifactDir()
	} else {
		d, err := os.MkdirTemp("", "quantix-"+SafeName(t.Name())+"-")
		if err != nil {
			t.Fatalf("artifact folder: %v", err)
		}
		dir = d
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("artifacts kept in %s (go test -artifacts keeps them under -outputdir)", dir)
				return
			}
			os.RemoveAll(dir)
		})
	}
	dirs[t] = dir
	t.Cleanup(func() {
		mu.Lock()
		delete(dirs, t)
		mu.Unlock()
	})
	return dir
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// SafeName makes s usable as (part of) a file name: runs of other characters
// become "_", and it is cut to 48 bytes.
func SafeName(s string) string {
	s = unsafeChars.ReplaceAllString(s, "_")
	if len(s) > 48 {
		s = s[:48]
	}
	return s
}
