package quantix

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// WriteFileAtomic replaces path with data so that a crash leaves either the old file
// or the new one, never a torn one (docs/design.md §2): temp file in the same folder, fsync,
// rename, fsync the folder. Missing parent folders are created with mode 0755.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: open folder for fsync: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync folder: %w", path, err)
	}
	return nil
}

// ErrUnknownKey is wrapped when a TOML file holds a key the schema does not know.
var ErrUnknownKey = errors.New("unknown key")

// DecodeTOMLFile strictly decodes the TOML file at path into v (docs/design.md §3).
func DecodeTOMLFile(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err // *PathError already names the file
	}
	return DecodeTOML(path, data, v)
}

// DecodeTOML strictly decodes data into v: a syntax error or a type mismatch names
// the file and line; an unknown key is an error naming the file, line and key.
// name is the file name used in messages.
func DecodeTOML(name string, data []byte, v any) error {
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(v)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return fmt.Errorf("%s:%d: %s", name, perr.Position.Line, perr.Message)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := checkTables(md, reflect.TypeOf(v), nil); err != nil {
		return fmt.Errorf("%s:%d: %w", name, keyLine(data, toml.Key(err.key)), err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		line := keyLine(data, k)
		if line > 0 {
			return fmt.Errorf("%s:%d: %w %q", name, line, ErrUnknownKey, k.String())
		}
		return fmt.Errorf("%s: %w %q", name, ErrUnknownKey, k.String())
	}
	return nil
}

// keyLine finds the line on which key k is defined, for error messages.
// BurntSushi/toml does not expose key positions for undecoded keys, so this scans
// for the table header and then the key's last component. It returns 0 if unsure.
func keyLine(data []byte, k toml.Key) int {
	if len(k) == 0 {
		return 0
	}
	table := strings.Join(k[:len(k)-1], ".")
	last := k[len(k)-1]
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "[["):
			cur = strings.TrimSpace(strings.Trim(line, "[]"))
			if cur == strings.Join(k, ".") {
				return n
			}
		case strings.HasPrefix(line, "["):
			cur = strings.TrimSpace(strings.Trim(strings.SplitN(line, "#", 2)[0], "[] "))
			if cur == strings.Join(k, ".") {
				return n
			}
		default:
			key, _, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			key = strings.Trim(strings.TrimSpace(key), `"'`)
			if cur == table && key == last {
				return n
			}
			// dotted key: a.b = 1 at top level
			if cur == "" && key == strings.Join(k, ".") {
				return n
			}
			if cur != "" && key == strings.TrimPrefix(strings.Join(k, "."), cur+".") && strings.HasPrefix(strings.Join(k, "."), cur+".") {
				return n
			}
		}
	}
	return 0
}

// tableTypeError says that a key holding a scalar was decoded into a table-shaped
// field: BurntSushi/toml silently ignores that (labels = "x" into a map).
type tableTypeError struct {
	key  []string
	have string
}

func (e *tableTypeError) Error() string {
	return fmt.Sprintf("key %q must be a table, found %s", strings.Join(e.key, "."), strings.ToLower(e.have))
}

// checkTables walks the struct type t and reports the first defined key whose
// field is a map or struct but whose TOML value is not a table.
func checkTables(md toml.MetaData, t reflect.Type, path []string) *tableTypeError {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() != reflect.Map && ft.Kind() != reflect.Struct {
			continue
		}
		key := append(append([]string(nil), path...), name)
		if !md.IsDefined(key...) {
			continue
		}
		if typ := md.Type(key...); typ != "Hash" {
			if ft.Kind() == reflect.Struct && ft.Implements(reflect.TypeOf((*interface{ UnmarshalText([]byte) error })(nil)).Elem()) ||
				reflect.PointerTo(ft).Implements(reflect.TypeOf((*interface{ UnmarshalText([]byte) error })(nil)).Elem()) {
				continue // e.g. a duration type decoded from a string
			}
			return &tableTypeError{key: key, have: typ}
		}
		if ft.Kind() == reflect.Struct {
			if err := checkTables(md, ft, key); err != nil {
				return err
			}
		}
	}
	return nil
}

// Duration is a time.Duration written as "30s" or "2m" in TOML files.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// FileSHA256 is the hex sha256 of a file's bytes (image manifests, the node's
// image cache).
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
