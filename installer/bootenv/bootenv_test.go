package bootenv

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
)

func needEditenv(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("grub-editenv"); err != nil {
		t.Fatal("grub-editenv not found: run make deps (apt-get install grub-common)")
	}
}

func editenv(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("grub-editenv", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("grub-editenv %v: %v: %s", args, err, out)
	}
	return string(out)
}

func trial() State {
	return State{Order: [2]string{quantix.SlotB, quantix.SlotA}, A: Slot{OK: true}, B: Slot{Tries: 3}}
}

func TestRoundTrip(t *testing.T) {
	for _, s := range []State{Initial(), trial(), {Order: [2]string{"a", "b"}, A: Slot{Tries: 1}, B: Slot{OK: true, Tries: 2}}} {
		b, err := s.Encode()
		if err != nil {
			t.Fatalf("Encode(%+v): %v", s, err)
		}
		if len(b) != Size {
			t.Fatalf("Encode(%+v) is %d bytes, want %d", s, len(b), Size)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(%+v)): %v", s, err)
		}
		if diff := cmp.Diff(s, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	files := OnESP(t.TempDir())
	if err := files.Write(trial()); err != nil {
		t.Fatal(err)
	}
	got, from, err := files.Read()
	if err != nil || from != files.Primary || got != trial() {
		t.Errorf("Read() = %+v, %s, %v; want %+v from %s", got, from, err, trial(), files.Primary)
	}
}

func TestEscapes(t *testing.T) {
	v := Vars{"x": `back\slash`, "y": "new\nline", "z": ""}
	b, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v, got); diff != "" {
		t.Errorf("escapes (-want +got):\n%s", diff)
	}
}

// Blocks made by Debian's grub-editenv read with ours, and ours read with it.
func TestGrubEditenvCompatible(t *testing.T) {
	needEditenv(t)
	dir := t.TempDir()
	theirs := filepath.Join(dir, "theirs")
	editenv(t, theirs, "create")
	editenv(t, theirs, "set", "QX_ORDER=b a", "QX_A_TRIES=0", "QX_A_OK=1", "QX_B_TRIES=3", "QX_B_OK=0", `odd=a\b`)
	b, err := os.ReadFile(theirs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode(grub-editenv's block): %v\n%s", err, b)
	}
	if got != trial() {
		t.Errorf("Decode(grub-editenv's block) = %+v, want %+v", got, trial())
	}
	if v, _ := Parse(b); v["odd"] != `a\b` {
		t.Errorf("grub-editenv's odd=a\\b parsed as %q", v["odd"])
	}

	ours := filepath.Join(dir, "ours")
	files := Files{Primary: ours, Backup: ours + ".bak"}
	if err := files.Write(trial()); err != nil {
		t.Fatal(err)
	}
	list := editenv(t, ours, "list")
	want := "QX_A_OK=1\nQX_A_TRIES=0\nQX_B_OK=0\nQX_B_TRIES=3\nQX_ORDER=b a\n"
	if list != want {
		t.Errorf("grub-editenv list = %q, want %q", list, want)
	}
	// grub-editenv rewrites our block as its own: byte for byte the same.
	editenv(t, ours, "set", "QX_B_TRIES=3")
	after, err := os.ReadFile(ours)
	if err != nil {
		t.Fatal(err)
	}
	mine, _ := trial().Encode()
	if string(after) != string(mine) {
		t.Errorf("grub-editenv rewrote our block differently:\n%q\nwant\n%q", after, mine)
	}
	// GRUB's own change (save_env QX_B_TRIES=2) is read back.
	editenv(t, ours, "set", "QX_B_TRIES=2")
	s, _, err := Files{Primary: ours, Backup: ours + ".bak"}.Read()
	if err != nil || s.B.Tries != 2 {
		t.Errorf("after grub-editenv set QX_B_TRIES=2: Read() = %+v, %v", s, err)
	}
}

func TestCorruptPrimaryUsesBackup(t *testing.T) {
	for name, corrupt := range map[string]func(string) error{
		"garbage": func(p string) error {
			return os.WriteFile(p, []byte(strings.Repeat("\xff", Size)), 0o644)
		},
		"truncated": func(p string) error { return os.Truncate(p, 100) },
		"missing":   os.Remove,
		"bad order": func(p string) error {
			b, _ := Vars{VarOrder: "a a", VarATries: "0", VarBTries: "0", VarAOK: "1", VarBOK: "0"}.Encode()
			return os.WriteFile(p, b, 0o644)
		},
	} {
		t.Run(name, func(t *testing.T) {
			files := OnESP(t.TempDir())
			if err := files.Write(trial()); err != nil {
				t.Fatal(err)
			}
			if err := corrupt(files.Primary); err != nil {
				t.Fatal(err)
			}
			got, from, err := files.Read()
			if err != nil || from != files.Backup || got != trial() {
				t.Errorf("Read() = %+v, %s, %v; want %+v from the backup", got, from, err, trial())
			}
		})
	}
	files := OnESP(t.TempDir())
	if _, _, err := files.Read(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read() with no copies = %v, want an error wrapping ErrNotExist", err)
	}
}

// A power cut between the two copies, or in the middle of the first, leaves a
// valid environment: the new one or the old one.
func TestInterruptedWrite(t *testing.T) {
	files := OnESP(t.TempDir())
	old := Initial()
	if err := files.Write(old); err != nil {
		t.Fatal(err)
	}
	cut := errors.New("power cut")
	files.beforeBackup = func() error { return cut }
	if err := files.Write(trial()); !errors.Is(err, cut) {
		t.Fatalf("Write = %v, want the power cut", err)
	}
	got, from, err := files.Read()
	if err != nil || got != trial() || from != files.Primary {
		t.Errorf("after a cut between the copies: Read() = %+v, %s, %v; want the new state from the primary", got, from, err)
	}
	b, _ := os.ReadFile(files.Backup)
	if s, err := Decode(b); err != nil || s != old {
		t.Errorf("backup after the cut = %+v, %v; want the old state", s, err)
	}

	// A torn first copy: half a sector of the new block over the old one.
	files.beforeBackup = nil
	if err := files.Write(old); err != nil {
		t.Fatal(err)
	}
	nb, _ := trial().Encode()
	ob, _ := os.ReadFile(files.Primary)
	torn := append(append([]byte{}, nb[:40]...), ob[40:]...)
	if err := os.WriteFile(files.Primary, torn, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _, err = files.Read()
	if err != nil || (got != old && got != trial()) {
		t.Errorf("after a torn first copy: Read() = %+v, %v; want the old or the new state", got, err)
	}
}

func TestWriteKeepsFileInPlace(t *testing.T) {
	files := OnESP(t.TempDir())
	if err := files.Write(Initial()); err != nil {
		t.Fatal(err)
	}
	st0, _ := os.Stat(files.Primary)
	if err := files.Write(trial()); err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(files.Primary)
	if !os.SameFile(st0, st1) || st1.Size() != Size {
		t.Errorf("Write replaced or resized the file (same inode %v, size %d)", os.SameFile(st0, st1), st1.Size())
	}
	if err := os.WriteFile(files.Primary, make([]byte, 2048), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := files.Write(Initial()); err == nil || !strings.Contains(err.Error(), "refusing to resize") {
		t.Errorf("Write over a 2048-byte file = %v, want a refusal", err)
	}
}

func TestValidate(t *testing.T) {
	for _, s := range []State{
		{Order: [2]string{"a", "a"}},
		{Order: [2]string{"c", "a"}},
		{Order: [2]string{"a", "b"}, A: Slot{Tries: 4}},
		{Order: [2]string{"a", "b"}, B: Slot{Tries: -1}},
	} {
		if _, err := s.Encode(); !errors.Is(err, ErrInvalid) {
			t.Errorf("Encode(%+v) = %v, want ErrInvalid", s, err)
		}
	}
}

func TestBoot(t *testing.T) {
	for _, c := range []struct {
		s     State
		slot  string
		trial bool
	}{
		{Initial(), "a", false},
		{trial(), "b", true},
		{State{Order: [2]string{"b", "a"}, A: Slot{OK: true}}, "a", false}, // b's tries ran out
		{State{Order: [2]string{"a", "b"}, B: Slot{OK: true}}, "b", false},
	} {
		slot, tr, ok := c.s.Boot()
		if !ok || slot != c.slot || tr != c.trial {
			t.Errorf("%+v.Boot() = %s, %v, %v; want %s, %v", c.s, slot, tr, ok, c.slot, c.trial)
		}
	}
}
