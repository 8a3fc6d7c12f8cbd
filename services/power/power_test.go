package power

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/creack/pty"
)

// DrainConsole returns once a terminal's output is sent, and skips files that are
// no terminals, well within its timeout.
func TestDrainConsole(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer slave.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := master.Read(buf); err != nil {
				return
			}
		}
	}()
	if _, err := slave.WriteString("time=... level=INFO msg=halting component=init action=reboot\n"); err != nil {
		t.Fatal(err)
	}
	plain, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	t0 := time.Now()
	DrainConsole(5*time.Second, slave, plain)
	if d := time.Since(t0); d >= 5*time.Second {
		t.Errorf("DrainConsole took its whole timeout (%v): a terminal or a plain file held it up", d)
	}
}
