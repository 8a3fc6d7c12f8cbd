package initd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// TestSupervisorAfterBoot: an after_boot service does not hold up AllReady (boot-
// complete), does not start before StartAfterBoot, and starts after it.
func TestSupervisorAfterBoot(t *testing.T) {
	modes := map[string]string{"network": "ready", "libvirtd": "ready"}
	s, console, events, _ := newSup(t, modes, nil, []string{"network", "libvirtd"}, nil)
	s.svcs["libvirtd"].spec.AfterBoot = true
	runSup(t, s)
	select {
	case <-s.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("AllReady waits for the after_boot service; events %v; console:\n%s", readEvents(t, events), console.String())
	}
	time.Sleep(300 * time.Millisecond)
	if ev := readEvents(t, events); index(ev, "libvirtd start") >= 0 {
		t.Fatalf("the after_boot service started before StartAfterBoot: %v", ev)
	}
	s.StartAfterBoot()
	s.StartAfterBoot() // twice is harmless
	select {
	case <-s.Ready("libvirtd"):
	case <-time.After(20 * time.Second):
		t.Fatalf("after_boot service not ready after StartAfterBoot; events %v", readEvents(t, events))
	}
}

// TestSupervisorBootPriority: a boot_priority = "low" service runs at nice 19, all
// its threads, until StartAfterBoot gives it the normal priority; the others run
// at the normal priority throughout.
func TestSupervisorBootPriority(t *testing.T) {
	base, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	base = 20 - base // the raw syscall returns 20 - nice
	modes := map[string]string{"network": "ready", "console": "ready"}
	s, _, events, _ := newSup(t, modes, nil, []string{"network", "console"}, nil)
	s.svcs["console"].spec.BootPriority = quantix.PriorityLow
	runSup(t, s)
	select {
	case <-s.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("not ready; events %v", readEvents(t, events))
	}
	pids := map[string]int{}
	for _, st := range s.Services() {
		pids[st.Name] = st.PID
	}
	if got := threadNices(t, pids["console"]); !allEqual(got, lowNice) {
		t.Errorf("console during the boot: thread nices %v, want all %d", got, lowNice)
	}
	if got := threadNices(t, pids["network"]); !allEqual(got, base) {
		t.Errorf("network during the boot: thread nices %v, want all %d", got, base)
	}
	s.StartAfterBoot()
	if got := threadNices(t, pids["console"]); !allEqual(got, 0) {
		t.Errorf("console after boot-complete: thread nices %v, want all 0", got)
	}
}

// threadNices reads the nice value of every thread of pid from /proc.
func threadNices(t *testing.T, pid int) []int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		// Fields after "(comm)": state is field 3, nice field 19.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		n, err := strconv.Atoi(f[16])
		if err != nil {
			t.Fatalf("stat of %d/%s: %q", pid, task.Name(), b)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		t.Fatalf("no threads for pid %d", pid)
	}
	return out
}

func allEqual(xs []int, v int) bool {
	for _, x := range xs {
		if x != v {
			return false
		}
	}
	return true
}

// TestLinkModprobe: /sbin/modprobe comes from init (the image has none) and points
// at the image's modprobe command; linking again is harmless; a missing command
// or a file in the way is an error that names it.
func TestLinkModprobe(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sbin", "modprobe")
	target := filepath.Join(dir, "bbin", "modprobe")
	if err := LinkModprobe(path, target); err == nil || !strings.Contains(err.Error(), "the image has no modprobe") {
		t.Errorf("LinkModprobe without the command: %v, want an error saying so", err)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := LinkModprobe(path, target); err != nil {
			t.Fatalf("link %d: %v", i, err)
		}
		if got, err := os.Readlink(path); err != nil || got != target {
			t.Fatalf("%s -> %q (%v), want -> %s", path, got, err, target)
		}
	}
	if err := LinkModprobe(target, path); err == nil || !strings.Contains(err.Error(), target) {
		t.Errorf("LinkModprobe over a file: %v, want an error naming %s", err, target)
	}
}
