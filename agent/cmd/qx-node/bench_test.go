package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/agent/internal/libvirtdtest"
	"github.com/quantix/quantix/vdc/vdctest"
)

// BenchmarkProcess runs the real qx-node binary against a local vDC (1 s
// heartbeats) and a private libvirtd, and reports the time from exec to the ready
// marker and the resident memory after heartbeats settle (10 heartbeats with
// libvirt connected and the inventory sent).
//
//	go test -run '^$' -bench Process -benchtime 3x ./agent/cmd/qx-node/
func BenchmarkProcess(b *testing.B) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		b.Fatalf("go toolchain not in PATH: %v", err)
	}
	bin := filepath.Join(b.TempDir(), "qx-node")
	if out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build qx-node: %v\n%s", err, out)
	}
	if _, err := agent.DetectManagement(nil, ""); err != nil {
		b.Fatalf("needs a management address in the test's namespace: %v", err)
	}
	v := vdctest.Start(b, vdctest.Options{HeartbeatInterval: time.Second, Log: io.Discard})
	lv := libvirtdtest.Start(b)
	var startup, rss, hwm float64
	for i := 0; i < b.N; i++ {
		s, r, h := measureProcess(b, bin, v, lv.URI(), fmt.Sprintf("rss-%d-%d", b.N, i))
		startup += s.Seconds() * 1000
		rss += r
		hwm += h
	}
	n := float64(b.N)
	b.ReportMetric(startup/n, "ms-to-registered")
	b.ReportMetric(rss/n, "RSS-KiB")
	b.ReportMetric(hwm/n, "peak-RSS-KiB")
}

func measureProcess(b *testing.B, bin string, v *vdctest.VDC, libvirtURI, hostname string) (time.Duration, float64, float64) {
	dir := b.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--control-plane", v.AgentURL, "--join-token", v.JoinToken, "--hostname", hostname,
		"--state-dir", dir, "--config", filepath.Join(dir, "none.toml"), "--cmdline", filepath.Join(dir, "none"),
		"--libvirt-uri", libvirtURI, "--http-listen", addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Errorf("qx-node exit: %v (want 0 on SIGTERM)", err)
		}
	}()
	ready := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m, ok := quantix.ParseMarker(sc.Text()); ok && m.Kind == quantix.MarkerReady {
				ready <- time.Since(start)
			}
		}
	}()
	var startup time.Duration
	select {
	case startup = <-ready:
	case <-time.After(30 * time.Second):
		b.Fatalf("qx-node not registered within 30s")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := status(addr)
		if err == nil && st.Counts.Heartbeats >= 10 && st.Counts.StatePuts >= 1 && st.Hypervisor.State == quantix.HypervisorAvailable {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("qx-node did not reach 10 heartbeats with libvirt: %+v %v", st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rss, hwm := procMemory(b, cmd.Process.Pid)
	return startup, rss, hwm
}

func status(addr string) (agent.Status, error) {
	var st agent.Status
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// procMemory returns VmRSS and VmHWM of pid in KiB.
func procMemory(b *testing.B, pid int) (rss, hwm float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return rss, hwm
}
