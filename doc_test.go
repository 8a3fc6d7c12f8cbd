package quantix

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// TestDesignCitations checks that every "docs/design.md §N" in the repository's Go
// and Markdown files names a section docs/design.md has: the sections keep their
// numbers, and a citation cannot point at nothing.
func TestDesignCitations(t *testing.T) {
	design, err := os.ReadFile(filepath.Join("docs", "design.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## ([0-9]+)\. `).FindAllSubmatch(design, -1) {
		sections[string(m[1])] = true
	}
	if len(sections) < 17 {
		t.Fatalf("docs/design.md has %d numbered sections, want at least 17", len(sections))
	}
	cite := regexp.MustCompile(`docs/design\.md §([0-9]+)`)
	n := 0
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "out" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !(strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".md")) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range cite.FindAllSubmatch(data, -1) {
			n++
			if !sections[string(m[1])] {
				t.Errorf("%s cites docs/design.md §%s, which does not exist", path, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("no file cites docs/design.md: is the pattern right?")
	}
}
