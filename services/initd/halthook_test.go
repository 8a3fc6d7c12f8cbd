package initd

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
)

// TestRunHaltHooks: hooks run in order with the action in their environment; one
// that hangs is killed (its whole process group) after its timeout and one that
// cannot start is logged, and neither stops the hooks after it.
func TestRunHaltHooks(t *testing.T) {
	dir := t.TempDir()
	mark := filepath.Join(dir, "mark")
	childPID := filepath.Join(dir, "child.pid")
	var log bytes.Buffer
	hooks := []quantix.HaltHook{
		{Command: "/bin/sh", Args: []string{"-c", `sleep 30 & echo $! > ` + childPID + `; sleep 30`}, TimeoutSeconds: 1},
		{Command: filepath.Join(dir, "missing")},
		{Command: "/bin/sh", Args: []string{"-c", `echo "$QUANTIX_HALT" >> ` + mark + `; echo said-something`}},
	}
	t0 := time.Now()
	RunHaltHooks(hooks, quantix.Poweroff, slog.New(slog.NewTextHandler(&log, nil)))
	if took := time.Since(t0); took > 5*time.Second {
		t.Errorf("hooks took %v; the hanging one must be killed after 1 s", took)
	}
	if b, _ := os.ReadFile(mark); string(b) != "poweroff\n" {
		t.Errorf("the last hook wrote %q, want the action", b)
	}
	for _, want := range []string{"killed after 1s", "missing", "said-something"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
	b, err := os.ReadFile(childPID)
	if err != nil {
		t.Fatal(err)
	}
	// Gone, or a zombie waiting for its reaper: not running on.
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
	if err == nil && !strings.Contains(string(stat), ") Z ") {
		t.Errorf("the hanging hook's child outlived it: %s", stat)
	}
}
