package quantix

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackageDocs checks that every package of the module says what it is for: a
// package doc comment in one of its files (for a package of tests only, in one of
// its test files).
func TestPackageDocs(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("this test lists the module's packages with the go command: %v", err)
	}
	var out, stderr bytes.Buffer
	cmd := exec.Command(goBin, "list", "-json", "./...")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list ./...: %v\n%s", err, stderr.String())
	}
	type pkg struct {
		ImportPath, Dir           string
		GoFiles, CgoFiles         []string
		TestGoFiles, XTestGoFiles []string
	}
	dec := json.NewDecoder(&out)
	n := 0
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list -json: %v", err)
		}
		n++
		files := append(p.GoFiles, p.CgoFiles...)
		if len(files) == 0 {
			files = append(p.TestGoFiles, p.XTestGoFiles...)
		}
		documented := false
		for _, name := range files {
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
				documented = true
				break
			}
		}
		if !documented {
			t.Errorf("package %s has no package doc comment (a // Package ... comment above the package clause of one file)", p.ImportPath)
		}
	}
	if n < 30 {
		t.Errorf("go list ./... found only %d packages", n)
	}
}
