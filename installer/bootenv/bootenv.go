// Package bootenv reads and writes the GRUB environment block that chooses the A/B
// boot slot (docs/design.md §16): the 1024-byte "# GRUB Environment Block" file that
// grub-editenv and GRUB's load_env/save_env use, kept in two copies on QUANTIX-EFI.
//
// Writes from Linux never truncate or reallocate: each copy is overwritten in place
// with exactly 1024 bytes and fsynced before the other copy is touched, so a power
// cut leaves at least one copy whole. All variables fit in the first 512 bytes, one
// sector, so even a torn write of one copy leaves it all old or all new. Readers take
// the first copy that is valid.
package bootenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
)

// Size is the size of a GRUB environment block (GRUB_ENVBLK_DEFCFG in grub-editenv).
const Size = 1024

// Header starts every GRUB environment block (GRUB_ENVBLK_SIGNATURE).
const Header = "# GRUB Environment Block\n"

// sector is what one write makes atomic on the disks we know; every variable must
// lie inside it.
const sector = 512

// Variable names in the block, read by the boot menu (installer.GrubConfig).
const (
	VarOrder  = "QX_ORDER"
	VarATries = "QX_A_TRIES"
	VarBTries = "QX_B_TRIES"
	VarAOK    = "QX_A_OK"
	VarBOK    = "QX_B_OK"
)

// ErrInvalid is wrapped by every error about a block that is not a valid
// environment of ours.
var ErrInvalid = errors.New("invalid GRUB environment block")

// Vars is a GRUB environment: names to values.
type Vars map[string]string

// Parse reads a GRUB environment block as GRUB does (grub-core/lib/envblk.c): the
// header, then name=value lines, the rest '#' padding; a backslash escapes the
// next character in a value.
func Parse(b []byte) (Vars, error) {
	if len(b) != Size {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrInvalid, len(b), Size)
	}
	if !bytes.HasPrefix(b, []byte(Header)) {
		return nil, fmt.Errorf("%w: no %q header", ErrInvalid, strings.TrimSpace(Header))
	}
	v := Vars{}
	rest := b[len(Header):]
	for len(rest) > 0 {
		if rest[0] == '#' {
			// A comment line, or the padding up to the end.
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				if bytes.Count(rest, []byte("#")) != len(rest) {
					return nil, fmt.Errorf("%w: padding holds bytes other than '#'", ErrInvalid)
				}
				break
			}
			rest = rest[i+1:]
			continue
		}
		var val strings.Builder
		eq := bytes.IndexByte(rest, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("%w: line %q has no name=value", ErrInvalid, firstLine(rest))
		}
		name := string(rest[:eq])
		if strings.ContainsAny(name, "\n\\") {
			return nil, fmt.Errorf("%w: line %q has no name=value", ErrInvalid, firstLine(rest))
		}
		i := eq + 1
		for ; i < len(rest) && rest[i] != '\n'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
			}
			val.WriteByte(rest[i])
		}
		if i >= len(rest) {
			return nil, fmt.Errorf("%w: variable %s is not ended by a newline", ErrInvalid, name)
		}
		rest = rest[i+1:]
		v[name] = val.String()
	}
	return v, nil
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}

// Encode returns v as a block, names sorted, as grub-editenv writes it.
func (v Vars) Encode() ([]byte, error) {
	names := make([]string, 0, len(v))
	for k := range v {
		if k == "" || strings.ContainsAny(k, "=\n\\#") {
			return nil, fmt.Errorf("GRUB environment: bad variable name %q", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	var b bytes.Buffer
	b.WriteString(Header)
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte('=')
		for _, c := range []byte(v[k]) {
			if c == '\\' || c == '\n' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('\n')
	}
	if b.Len() > sector {
		return nil, fmt.Errorf("GRUB environment: %d bytes of variables, at most %d fit in one sector", b.Len(), sector)
	}
	for b.Len() < Size {
		b.WriteByte('#')
	}
	return b.Bytes(), nil
}

// Slot is one slot's counters.
type Slot struct {
	// Tries is how many trial boots the slot has left (0..quantix.SlotMaxTries).
	Tries int
	// OK says the slot has been marked good: GRUB boots it without a trial.
	OK bool
}

// State is the slot choice: Order[0] is tried first.
type State struct {
	Order [2]string
	A, B  Slot
}

// Initial is the state of a fresh install: slot a good and first, b empty.
func Initial() State {
	return State{Order: [2]string{quantix.SlotA, quantix.SlotB}, A: Slot{OK: true}}
}

// Slot returns the counters of slot s.
func (s *State) Slot(name string) *Slot {
	if name == quantix.SlotB {
		return &s.B
	}
	return &s.A
}

// Boot is what GRUB will boot next from s (the same choice as the boot menu's
// script): the first slot in order that is good or has tries left, and whether it is
// a trial. ok is false when no slot qualifies.
func (s State) Boot() (slot string, trial, ok bool) {
	for _, n := range s.Order {
		sl := s.Slot(n)
		if sl.OK {
			return n, false, true
		}
		if sl.Tries > 0 {
			return n, true, true
		}
	}
	return "", false, false
}

// Vars returns s as environment variables.
func (s State) Vars() Vars {
	b := func(x bool) string {
		if x {
			return "1"
		}
		return "0"
	}
	return Vars{
		VarOrder:  s.Order[0] + " " + s.Order[1],
		VarATries: strconv.Itoa(s.A.Tries), VarBTries: strconv.Itoa(s.B.Tries),
		VarAOK: b(s.A.OK), VarBOK: b(s.B.OK),
	}
}

// Encode returns s as a block.
func (s State) Encode() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s.Vars().Encode()
}

// Validate checks the order and the counters.
func (s State) Validate() error {
	if !quantix.ValidSlot(s.Order[0]) || s.Order[1] != quantix.OtherSlot(s.Order[0]) {
		return fmt.Errorf("%w: %s %q, want \"a b\" or \"b a\"", ErrInvalid, VarOrder, s.Order[0]+" "+s.Order[1])
	}
	for _, n := range s.Order {
		if t := s.Slot(n).Tries; t < 0 || t > quantix.SlotMaxTries {
			return fmt.Errorf("%w: slot %s has %d tries, want 0..%d", ErrInvalid, n, t, quantix.SlotMaxTries)
		}
	}
	return nil
}

// Decode reads a block into a State, strictly: every variable present and valid.
// Other variables are allowed (GRUB or an operator may add some).
func Decode(b []byte) (State, error) {
	v, err := Parse(b)
	if err != nil {
		return State{}, err
	}
	var s State
	order := strings.Fields(v[VarOrder])
	if len(order) != 2 {
		return State{}, fmt.Errorf("%w: %s %q, want \"a b\" or \"b a\"", ErrInvalid, VarOrder, v[VarOrder])
	}
	s.Order = [2]string{order[0], order[1]}
	for _, f := range []struct {
		tries, ok string
		sl        *Slot
	}{{VarATries, VarAOK, &s.A}, {VarBTries, VarBOK, &s.B}} {
		t, err := strconv.Atoi(v[f.tries])
		if err != nil {
			return State{}, fmt.Errorf("%w: %s %q is not a number", ErrInvalid, f.tries, v[f.tries])
		}
		f.sl.Tries = t
		switch v[f.ok] {
		case "1":
			f.sl.OK = true
		case "0":
		default:
			return State{}, fmt.Errorf("%w: %s %q, want 0 or 1", ErrInvalid, f.ok, v[f.ok])
		}
	}
	return s, s.Validate()
}

// Files are the two copies of the block in a mounted ESP.
type Files struct {
	Primary, Backup string
	// beforeBackup, when set (tests), runs between the two copies' writes; an
	// error stops the write there, as a power cut would.
	beforeBackup func() error
}

// OnESP returns the copies in the ESP mounted at dir.
func OnESP(dir string) Files {
	return Files{
		Primary: filepath.Join(dir, filepath.FromSlash(quantix.ESPEnv)),
		Backup:  filepath.Join(dir, filepath.FromSlash(quantix.ESPEnvBackup)),
	}
}

// Read returns the state of the first valid copy and which file it came from. An
// invalid primary is named in the error only when the backup is invalid too.
func (f Files) Read() (State, string, error) {
	var errs []error
	for _, p := range []string{f.Primary, f.Backup} {
		b, err := os.ReadFile(p)
		if err == nil {
			var s State
			if s, err = Decode(b); err == nil {
				return s, p, nil
			}
		}
		errs = append(errs, fmt.Errorf("read %s: %w", p, err))
	}
	return State{}, "", fmt.Errorf("boot slot environment: no valid copy: %w", errors.Join(errs...))
}

// Write stores s in both copies: primary, fsync, backup, fsync.
func (f Files) Write(s State) error {
	b, err := s.Encode()
	if err != nil {
		return fmt.Errorf("write boot slot environment: %w", err)
	}
	if err := writeInPlace(f.Primary, b); err != nil {
		return err
	}
	if f.beforeBackup != nil {
		if err := f.beforeBackup(); err != nil {
			return err
		}
	}
	return writeInPlace(f.Backup, b)
}

// writeInPlace overwrites path's Size bytes without truncating it, so the file
// keeps its clusters (GRUB's save_env writes through the file's block list), and
// fsyncs it. A missing file is created (and its folder fsynced); a file of another
// size is refused, as GRUB would refuse it.
func writeInPlace(path string, b []byte) error {
	fl, err := os.OpenFile(path, os.O_WRONLY, 0)
	created := false
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		fl, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		created = true
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer fl.Close()
	if st, err := fl.Stat(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	} else if !created && st.Size() != Size {
		return fmt.Errorf("write %s: the file is %d bytes, a GRUB environment block is %d: refusing to resize it in place", path, st.Size(), Size)
	}
	if _, err := fl.WriteAt(b, 0); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := fl.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if created {
		d, err := os.Open(filepath.Dir(path))
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		defer d.Close()
		if err := d.Sync(); err != nil {
			return fmt.Errorf("write %s: fsync folder: %w", path, err)
		}
	}
	return fl.Close()
}

// Committed is the result of Commit.
type Committed struct {
	Slot string
	// RolledBack names the slot that was tried and failed (its tries ran out or
	// it was rejected, and GRUB booted this one), or "".
	RolledBack string
	State      State
}

// Commit marks the booted slot good and first: init calls it once the health gates
// of a trial passed, and on a slot GRUB fell back to, which then says which trial
// failed.
func (f Files) Commit(booted string) (*Committed, error) {
	if !quantix.ValidSlot(booted) {
		return nil, fmt.Errorf("commit slot %q: want a or b (%s on the kernel command line)", booted, quantix.ParamSlot)
	}
	st, _, err := f.Read()
	if err != nil {
		return nil, fmt.Errorf("commit slot %s: %w", booted, err)
	}
	c := &Committed{Slot: booted}
	if first := st.Order[0]; first != booted && !st.Slot(first).OK {
		c.RolledBack = first
	}
	st.Order = [2]string{booted, quantix.OtherSlot(booted)}
	*st.Slot(booted) = Slot{OK: true}
	if err := f.Write(st); err != nil {
		return nil, fmt.Errorf("commit slot %s: %w", booted, err)
	}
	c.State = st
	return c, nil
}

// Reject ends the trial of slot: no tries left, not good, so the next boot is the
// other slot. A good slot is not rejected (it is not on trial).
func (f Files) Reject(slot string) (State, error) {
	if !quantix.ValidSlot(slot) {
		return State{}, fmt.Errorf("reject slot %q: want a or b", slot)
	}
	st, _, err := f.Read()
	if err != nil {
		return State{}, fmt.Errorf("reject slot %s: %w", slot, err)
	}
	if st.Slot(slot).OK {
		return st, fmt.Errorf("reject slot %s: it is marked good, not on trial", slot)
	}
	st.Slot(slot).Tries = 0
	if err := f.Write(st); err != nil {
		return State{}, fmt.Errorf("reject slot %s: %w", slot, err)
	}
	return st, nil
}
