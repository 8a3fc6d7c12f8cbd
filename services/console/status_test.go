package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
	"github.com/quantix/quantix/vdc/api"
)

// TestParsePhasesFromVDC reads the counts from what the vDC's own metrics code
// writes.
func TestParsePhasesFromVDC(t *testing.T) {
	var b strings.Builder
	api.NewMetrics().Write(&b, map[string]int{"ready": 3, "not_ready": 1, "disconnected": 2}, 7)
	got, err := ParsePhases(b.String())
	if err != nil {
		t.Fatal(err)
	}
	if got["ready"] != 3 || got["not_ready"] != 1 || got["disconnected"] != 2 || len(got) != 3 {
		t.Fatalf("ParsePhases = %v", got)
	}
	if s := FormatPhases(got); s != "ready 3, not_ready 1, disconnected 2, maintenance 0" {
		t.Fatalf("FormatPhases = %q", s)
	}
	// No nodes yet: the series header is there, the counts are zero.
	b.Reset()
	api.NewMetrics().Write(&b, map[string]int{}, 0)
	if got, err := ParsePhases(b.String()); err != nil || len(got) != 0 {
		t.Fatalf("ParsePhases(no nodes) = %v, %v", got, err)
	}
	if _, err := ParsePhases("up 1\n"); err == nil {
		t.Fatalf("ParsePhases accepted metrics without qx_vdc_nodes")
	}
	if _, err := ParsePhases("qx_vdc_nodes{phase=\"ready\"} x\n"); err == nil {
		t.Fatalf("ParsePhases accepted a bad count")
	}
}

func TestConfigMounted(t *testing.T) {
	tests := []struct {
		name, mountinfo string
		want            bool
	}{
		{"ext4 on /quantix", "22 1 0:21 / / rw - rootfs rootfs rw\n40 22 8:2 / /quantix rw,relatime - ext4 /dev/sda2 rw\n", true},
		{"nothing", "22 1 0:21 / / rw - rootfs rootfs rw\n", false},
		{"ram folder", "22 1 0:21 / / rw - rootfs rootfs rw\n40 22 0:30 / /quantix rw - tmpfs tmpfs rw\n", false},
		{"other folder", "40 22 8:2 / /quantix2 rw - ext4 /dev/sda2 rw\n", false},
		{"escaped", "40 22 8:2 / /my\\040cfg rw - ext4 /dev/sda2 rw\n", false},
	}
	for _, tt := range tests {
		p := filepath.Join(t.TempDir(), "mountinfo")
		os.WriteFile(p, []byte(tt.mountinfo), 0o644)
		got, err := configMounted(p, "/quantix")
		if err != nil || got != tt.want {
			t.Errorf("%s: configMounted = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
	p := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(p, []byte("40 22 8:2 / /my\\040cfg rw - ext4 /dev/sda2 rw\n"), 0o644)
	if got, _ := configMounted(p, "/my cfg"); !got {
		t.Errorf("configMounted does not unescape mount points")
	}
	if _, err := configMounted(filepath.Join(t.TempDir(), "none"), "/quantix"); err == nil {
		t.Errorf("configMounted of a missing file: no error")
	}
}

func TestTailLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.log")
	var b strings.Builder
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	os.WriteFile(p, []byte(b.String()), 0o644)
	got, err := TailLines(p, 3)
	if err != nil || strings.Join(got, "|") != "line 4997|line 4998|line 4999" {
		t.Fatalf("TailLines = %q, %v", got, err)
	}
	os.WriteFile(p, nil, 0o644)
	if got, err := TailLines(p, 3); err != nil || len(got) != 0 {
		t.Fatalf("TailLines(empty) = %q, %v", got, err)
	}
}

// serveInit answers the control protocol the console proposes to qx-init
// (services, restart) besides poweroff/reboot.
func serveInit(t *testing.T, path string, handle func(line string) string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintln(c, handle(strings.TrimSpace(line)))
			c.Close()
		}
	}()
}

func TestInitClientProtocol(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "init.sock")
	var restarted []string
	serveInit(t, sock, func(line string) string {
		switch {
		case line == "services":
			b, _ := json.Marshal(map[string]any{"services": []quantix.ServiceStatus{{Name: "network", State: "ready", PID: 42}, {Name: "agent", State: "restarting", Restarts: 3, LastError: "exit 1"}}})
			return string(b)
		case strings.HasPrefix(line, "restart "):
			if line == "restart nosuch" {
				return "error: no service nosuch"
			}
			restarted = append(restarted, strings.TrimPrefix(line, "restart "))
			return "ok"
		case line == "reboot":
			return "ok"
		}
		return fmt.Sprintf("error: unknown request %q (poweroff or reboot)", line)
	})
	c := InitClient{Socket: sock}
	ctx := context.Background()
	svcs, err := c.Services(ctx)
	if err != nil || len(svcs) != 2 || svcs[0].State != "ready" || svcs[1].Restarts != 3 || svcs[0].Origin != "init" {
		t.Fatalf("Services = %+v, %v", svcs, err)
	}
	if err := c.Restart(ctx, "agent"); err != nil || len(restarted) != 1 {
		t.Fatalf("Restart = %v (%v)", err, restarted)
	}
	if err := c.Restart(ctx, "nosuch"); err == nil || !strings.Contains(err.Error(), "no service nosuch") {
		t.Fatalf("Restart(nosuch) = %v", err)
	}
	if err := c.Restart(ctx, "a b"); err == nil {
		t.Fatalf("Restart accepted a name with a space")
	}
	if err := c.Power(ctx, PowerReboot); err != nil {
		t.Fatalf("Power(reboot) = %v", err)
	}
	if err := c.Power(ctx, PowerPoweroff); !errors.Is(err, quantix.ErrInitUnsupported) {
		t.Fatalf("Power(poweroff) against an init that refuses = %v", err)
	}
	if err := c.Power(ctx, "halt"); err == nil {
		t.Fatalf("Power accepted halt")
	}
}

// TestInitClientFallback: against today's qx-init (poweroff and reboot only), the
// states come from /proc and the logs, and restart says what is missing.
func TestInitClientFallback(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "init.sock")
	serveInit(t, sock, func(line string) string {
		return fmt.Sprintf("error: unknown request %q (poweroff or reboot)", line)
	})
	proc := filepath.Join(dir, "proc")
	os.MkdirAll(filepath.Join(proc, "7"), 0o755)
	os.WriteFile(filepath.Join(proc, "7", "cmdline"), []byte("/usr/bin/qx-net\x00serve\x00"), 0o644)
	os.MkdirAll(filepath.Join(proc, "9"), 0o755)
	os.WriteFile(filepath.Join(proc, "9", "cmdline"), []byte("/usr/bin/qx-vdc\x00serve\x00"), 0o644)
	logs := filepath.Join(dir, "log")
	os.MkdirAll(logs, 0o755)
	os.WriteFile(filepath.Join(logs, "network.log"), []byte(quantix.ReadyMarker("network", "addr", "10.0.0.5/24")+"\n"), 0o644)
	os.WriteFile(filepath.Join(logs, "vdc.log"), []byte(quantix.ReadyMarker("vdc")+"\n"+quantix.FatalMarker("vdc", errors.New("db gone"))+"\n"), 0o644)
	c := InitClient{Socket: sock, ProcRoot: proc, LogDir: logs, Known: []KnownService{
		{Name: "network", Command: "/bin/qx-net"}, {Name: "vdc", Command: "qx-vdc"}, {Name: "agent", Command: "/bin/qx-node"}}}
	svcs, err := c.Services(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, s := range svcs {
		got = append(got, fmt.Sprintf("%s=%s/%d/%s", s.Name, s.State, s.PID, s.Origin))
	}
	if want := "network=ready/7//proc vdc=running/9//proc agent=not running/0//proc"; strings.Join(got, " ") != want {
		t.Fatalf("Services = %s, want %s", strings.Join(got, " "), want)
	}
	if err := c.Restart(context.Background(), "network"); !errors.Is(err, quantix.ErrInitUnsupported) {
		t.Fatalf("Restart = %v, want quantix.ErrInitUnsupported", err)
	}
	// No socket at all and no known services: an error, not an empty list.
	if _, err := (InitClient{Socket: filepath.Join(dir, "none.sock")}).Services(context.Background()); err == nil {
		t.Fatalf("Services without init: no error")
	}
}

// TestGatherAgentAndVDC reads the agent's /status and the vDC's /metrics from real
// HTTP servers.
func TestGatherAgentAndVDC(t *testing.T) {
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"node_id":"n-1","vdc_url":"http://10.0.0.2:8080","state":"refused","error":"hostname taken: delete node n-0 first","registration":{"ok":false,"result":""},"counts":{"vms":2}}`)
	}))
	defer agent.Close()
	vdc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != quantix.PathMetrics {
			http.NotFound(w, r)
			return
		}
		api.NewMetrics().Write(w, map[string]int{"ready": 5, "maintenance": 1}, 0)
	}))
	defer vdc.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "uptime"), []byte("3723.5 100.0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "mountinfo"), []byte("40 22 8:2 / /quantix rw - ext4 /dev/sda2 rw\n"), 0o644)
	cfg := Config{Image: quantix.ImageQuantixOS, AgentURL: agent.URL, NetworkSocket: filepath.Join(dir, "none.sock"),
		UptimePath: filepath.Join(dir, "uptime"), MountInfo: filepath.Join(dir, "mountinfo"), ConfigDir: "/quantix",
		PasswordFile: filepath.Join(dir, "password")}
	s := gather(context.Background(), &cfg)
	if s.Agent == nil || s.Agent.NodeID != "n-1" || s.Agent.State != "refused" || s.AgentErr != nil {
		t.Fatalf("agent: %+v, %v", s.Agent, s.AgentErr)
	}
	if s.Uptime != 3723500*time.Millisecond || !s.Persistent || s.PasswordSet || s.NetErr == nil {
		t.Fatalf("snapshot: uptime %v persistent %v password %v net error %v", s.Uptime, s.Persistent, s.PasswordSet, s.NetErr)
	}
	cfg.Image, cfg.VDCURL, cfg.LogDir = quantix.ImageQvDC, vdc.URL, dir
	s = gather(context.Background(), &cfg)
	if s.Phases["ready"] != 5 || s.Phases["maintenance"] != 1 || s.VDCErr != nil {
		t.Fatalf("phases: %v, %v", s.Phases, s.VDCErr)
	}
	if s.VDCUI != "" {
		t.Errorf("web UI %q before the vDC said where", s.VDCUI)
	}
	// The web UI's address comes from the vDC's last ready marker in its log.
	os.WriteFile(filepath.Join(dir, "vdc.log"), []byte("level=INFO msg=starting\n"+
		quantix.ReadyMarker("vdc", "url", "http://[::]:8080", "ui", "https://[::]:9443", "epoch", "1")+"\n"+
		quantix.ReadyMarker("vdc", "url", "http://[::]:8080", "ui", "https://[::]:8443", "epoch", "2")+"\nlevel=INFO msg=serving\n"), 0o644)
	s = gather(context.Background(), &cfg)
	s.Net = &network.Status{Address: "10.0.0.2/24"}
	if got := s.URL(&cfg); s.VDCUI != "https://[::]:8443" || got != "https://10.0.0.2:8443/" {
		t.Errorf("web UI %q, URL %q; want https://[::]:8443 from the last marker, shown as https://10.0.0.2:8443/", s.VDCUI, got)
	}
	cfg.VDCUIURL = "https://127.0.0.1:10443"
	if got := s.URL(&cfg); got != "https://10.0.0.2:10443/" {
		t.Errorf("URL with --vdc-ui-url = %q, want https://10.0.0.2:10443/", got)
	}
	cfg.VDCUIURL = ""
	cfg.VDCURL = agent.URL // no /metrics there
	s = gather(context.Background(), &cfg)
	if s.VDCErr == nil || !strings.Contains(s.VDCErr.Error(), "404") {
		t.Fatalf("phases from a server without metrics: %v, %v", s.Phases, s.VDCErr)
	}
}
