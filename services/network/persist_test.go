package network

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writerEnv makes the test binary a writer that saves network.toml in a loop until
// it is killed (TestCrashDuringSave).
const writerEnv = "QX_NET_TEST_WRITER"

func TestMain(m *testing.M) {
	if path := os.Getenv(writerEnv); path != "" {
		a, b := []byte(crashConfig("10.0.0.5/24")), []byte(crashConfig("10.0.0.6/24"))
		fmt.Println("writing")
		for i := 0; ; i++ {
			data := a
			if i%2 == 1 {
				data = b
			}
			if err := persist(path, data); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
	os.Exit(m.Run())
}

// crashConfig is a valid network.toml padded to 256 KiB so a write takes long
// enough to be interrupted.
func crashConfig(addr string) string {
	head := fmt.Sprintf("interface = \"eth0\"\nmode = \"static\"\n[static]\naddress = %q\ngateway = \"10.0.0.1\"\n", addr)
	return head + strings.Repeat("# padding padding padding padding padding padding padding padding\n", 256<<10/66)
}

// TestCrashDuringSave kills a process in the middle of saving network.toml, many
// times: what is left is always a complete, valid config, old or new.
func TestCrashDuringSave(t *testing.T) {
	if testing.Short() {
		t.Skip("subprocess test: skipped with -short")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "quantix", "network", "network.toml")
	if err := persist(path, []byte(crashConfig("10.0.0.5/24"))); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{crashConfig("10.0.0.5/24"): true, crashConfig("10.0.0.6/24"): true}
	for i := 0; i < 20; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), writerEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if _, err := out.Read(buf); err != nil { // "writing": it is in the loop
			t.Fatalf("writer did not start: %v", err)
		}
		time.Sleep(time.Duration(5+rand.IntN(40)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("writer ended by itself (%v), not killed mid-save", err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("kill %d: read: %v", i, err)
		}
		if !want[string(b)] {
			t.Fatalf("kill %d: torn file of %d bytes", i, len(b))
		}
		if _, err := Load(path); err != nil {
			t.Fatalf("kill %d: Load: %v", i, err)
		}
	}
	// Temp files left behind prove kills landed in the middle of saves.
	torn, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".network.toml.tmp-*"))
	t.Logf("%d of 20 kills interrupted a save (temp files left)", len(torn))
	if len(torn) == 0 {
		t.Errorf("no kill landed in the middle of a save: the test proved nothing")
	}
	removeStaleTemp(path)
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".network.toml.tmp-*")); len(left) != 0 {
		t.Errorf("removeStaleTemp left %q", left)
	}
}
