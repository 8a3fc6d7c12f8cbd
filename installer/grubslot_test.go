package installer

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/installer/bootenv"
)

// grub-script-check (Debian's grub-common) parses grub.cfg as GRUB does.
func TestGrubConfigScriptCheck(t *testing.T) {
	if _, err := exec.LookPath("grub-script-check"); err != nil {
		t.Fatal("grub-script-check not found: run make deps (apt-get install grub-common)")
	}
	cfg := filepath.Join(t.TempDir(), "grub.cfg")
	if err := os.WriteFile(cfg, []byte(GrubConfig("Quantix OS", "console=ttyS0,115200 panic=10 quantix.disk=x")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("grub-script-check", "--verbose", cfg).CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check: %v\n%s", err, out)
	}
}

// shGrub runs the slot choice of grub.cfg with /bin/sh against an ESP folder, with
// load_env and save_env done by Debian's grub-editenv, and returns the default and
// fallback entries and the echoed lines. GRUB's script language is close enough to
// sh for this part (set x=y becomes x=y); GRUB itself runs it in the VM tests.
func shGrub(t *testing.T, esp string) (def, fallback, out string) {
	t.Helper()
	script := grubSlotScript()
	script = regexp.MustCompile(`\bset (\w+=)`).ReplaceAllString(script, "$1")
	prelude := `
cd "$ESP"
load_env() { f="$2"; shift 2; l=$(grub-editenv ".$f" list) || return 1
  for v in "$@"; do val=$(printf '%s\n' "$l" | sed -n "s/^$v=//p"); [ -n "$val" ] && eval "$v=\"\$val\""; done; return 0; }
save_env() { f="$2"; shift 2; for v in "$@"; do eval "a=\"$v=\$$v\""; grub-editenv ".$f" set "$a" 2>/dev/null || return 1; done; }
`
	cmd := exec.Command("/bin/sh", "-c", prelude+script+"\necho \"DEFAULT=$default FALLBACK=$fallback\"\n")
	cmd.Env = append(os.Environ(), "ESP="+esp)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("slot script: %v\n%s", err, b)
	}
	out = string(b)
	m := regexp.MustCompile(`DEFAULT=(\S+) FALLBACK=(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("slot script printed no choice:\n%s", out)
	}
	return m[1], m[2], out
}

// The slot choice over several boots: a trial takes a try per boot and is saved to
// both copies; when its tries are gone the good slot boots; a committed slot boots
// without a trial; a corrupt first copy is read from the second.
func TestGrubSlotChoice(t *testing.T) {
	if _, err := exec.LookPath("grub-editenv"); err != nil {
		t.Fatal("grub-editenv not found: run make deps (apt-get install grub-common)")
	}
	esp := t.TempDir()
	files := bootenv.OnESP(esp)
	if err := files.Write(bootenv.Initial()); err != nil {
		t.Fatal(err)
	}
	boot := func(wantDef, wantFallback string) string {
		t.Helper()
		def, fb, out := shGrub(t, esp)
		if def != wantDef || fb != wantFallback {
			t.Fatalf("boot chose %s (fallback %s), want %s (fallback %s):\n%s", def, fb, wantDef, wantFallback, out)
		}
		return out
	}
	boot("quantix-a", "quantix-b")
	boot("quantix-a", "quantix-b") // a good slot takes no tries

	// An upgrade staged slot b.
	if err := files.Write(bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: quantix.SlotMaxTries}}); err != nil {
		t.Fatal(err)
	}
	for left := quantix.SlotMaxTries - 1; left >= 0; left-- {
		out := boot("quantix-b-trial", "quantix-a")
		if !strings.Contains(out, quantix.MarkerPrefix+quantix.MarkerBootSlot+" slot=b trial=1") {
			t.Errorf("no boot-slot marker for the trial:\n%s", out)
		}
		for _, p := range []string{files.Primary, files.Backup} {
			b, _ := os.ReadFile(p)
			s, err := bootenv.Decode(b)
			if err != nil || s.B.Tries != left || !s.A.OK {
				t.Fatalf("%s after a trial boot = %+v, %v; want b with %d tries left, a good", p, s, err, left)
			}
		}
	}
	// The trial never proved itself: back on a.
	boot("quantix-a", "quantix-b")

	// Staged again, committed after the first boot.
	if err := files.Write(bootenv.State{Order: [2]string{"b", "a"}, A: bootenv.Slot{OK: true}, B: bootenv.Slot{Tries: quantix.SlotMaxTries}}); err != nil {
		t.Fatal(err)
	}
	boot("quantix-b-trial", "quantix-a")
	s, _, err := files.Read()
	if err != nil {
		t.Fatal(err)
	}
	s.B.OK = true
	if err := files.Write(s); err != nil {
		t.Fatal(err)
	}
	boot("quantix-b", "quantix-a")

	// A corrupt first copy: the second one decides, and takes the trial's try.
	if err := files.Write(bootenv.State{Order: [2]string{"a", "b"}, A: bootenv.Slot{Tries: 2}, B: bootenv.Slot{OK: true}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Primary, []byte(strings.Repeat("x", bootenv.Size)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := boot("quantix-a-trial", "quantix-b")
	if !strings.Contains(out, "env=/"+quantix.ESPEnvBackup) {
		t.Errorf("the choice did not come from the backup:\n%s", out)
	}
	s, from, err := files.Read()
	if err != nil || from != files.Backup || s.A.Tries != 1 {
		t.Errorf("after a trial from the backup: Read() = %+v from %s, %v; want a with 1 try left from the backup", s, from, err)
	}

	// No environment at all: slot a, said on the console.
	os.Remove(files.Primary)
	os.Remove(files.Backup)
	if out := boot("quantix-a", "quantix-b"); !strings.Contains(out, "no valid boot slot environment") {
		t.Errorf("no warning without an environment:\n%s", out)
	}
}
