package console

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

func testConfig(t *testing.T, image string) *Config {
	dir := t.TempDir()
	c := &Config{Image: image, Version: "0.1.0", PasswordFile: filepath.Join(dir, "password"),
		HostnameFile: filepath.Join(dir, "hostname"), NetworkSocket: filepath.Join(dir, "net.sock"),
		NetworkConfig: filepath.Join(dir, "network.toml"), LogDir: dir, AgentURL: "http://127.0.0.1:9101",
		VDCURL: "http://127.0.0.1:8080", InitSocket: filepath.Join(dir, "init.sock"), MountInfo: filepath.Join(dir, "mountinfo"),
		UptimePath: filepath.Join(dir, "uptime"), SysBlock: filepath.Join(dir, "sys"), DevDir: filepath.Join(dir, "dev"),
		MediaDir: filepath.Join(dir, "media")}
	c.fill()
	c.SetHostname = func(string) error { return nil }
	c.Init = InitClient{Socket: c.InitSocket}
	return c
}

func snapshot() *Snapshot {
	return &Snapshot{
		Image: "quantix-os", Version: "0.1.0", Hostname: "node-1", Uptime: 26*time.Hour + 3*time.Minute,
		Net: &network.Status{Interface: "eth0", MAC: "52:54:00:12:34:56", Mode: "dhcp", Source: "dhcp",
			Address: "10.0.0.100/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.53"}},
		Agent: &AgentStatus{NodeID: "5d7c0a3e-6f0b-4f44-9a52-0d1f1c5b7a10", VDC: "http://10.0.0.2:8080", State: "registered"},
		Services: []ServiceState{{ServiceStatus: quantix.ServiceStatus{Name: "network", State: "ready", PID: 10}}, {ServiceStatus: quantix.ServiceStatus{Name: "agent", State: "ready", PID: 11}},
			{ServiceStatus: quantix.ServiceStatus{Name: "console", State: "running", PID: 12}}},
		Persistent: true, PasswordSet: true,
	}
}

// update feeds msgs to m and runs the commands they return that finish quickly
// (clock ticks never do), feeding their messages back.
func update(t *testing.T, m Model, msgs ...tea.Msg) Model {
	t.Helper()
	for _, msg := range msgs {
		mm, cmd := m.Update(msg)
		m = mm.(Model)
		m = runCmd(t, m, cmd)
	}
	return m
}

func runCmd(t *testing.T, m Model, cmd tea.Cmd) Model {
	if cmd == nil {
		return m
	}
	out := make(chan tea.Msg, 1)
	go func() { out <- cmd() }()
	select {
	case msg := <-out:
		switch msg := msg.(type) {
		case tea.BatchMsg:
			for _, c := range msg {
				m = runCmd(t, m, c)
			}
			return m
		case tickMsg, nil:
			return m
		case snapMsg:
			return m // tests set the snapshot themselves
		}
		return update(t, m, msg)
	case <-time.After(5 * time.Second):
		return m
	}
}

func keys(s string) []tea.Msg {
	var out []tea.Msg
	for _, r := range s {
		switch r {
		case '\r':
			out = append(out, tea.KeyMsg{Type: tea.KeyEnter})
		case 0x1b:
			out = append(out, tea.KeyMsg{Type: tea.KeyEsc})
		case '\t':
			out = append(out, tea.KeyMsg{Type: tea.KeyTab})
		case 0x15:
			out = append(out, tea.KeyMsg{Type: tea.KeyCtrlU})
		default:
			out = append(out, tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
		}
	}
	return out
}

func checkFits(t *testing.T, name, view string, w, h int) {
	t.Helper()
	lines := strings.Split(view, "\n")
	if len(lines) > h {
		t.Errorf("%s: %d lines, the screen has %d:\n%s", name, len(lines), h, view)
	}
	for i, l := range lines {
		if len(l) >= w {
			t.Errorf("%s: line %d is %d columns (max %d): %q", name, i+1, len(l), w-1, l)
		}
		for _, c := range []byte(l) {
			if c < 0x20 || c > 0x7e {
				t.Errorf("%s: line %d holds byte 0x%02x: %q", name, i+1, c, l)
				break
			}
		}
	}
}

func TestStatusScreen(t *testing.T) {
	tests := []struct {
		name  string
		image string
		edit  func(s *Snapshot)
		want  []string
		not   []string
	}{
		{"quantix-os", quantix.ImageQuantixOS, func(s *Snapshot) {}, []string{
			"Quantix OS 0.1.0 (quantix-os)  host node-1  [locked]",
			"Interface     eth0 (52:54:00:12:34:56)",
			"Address       10.0.0.100/24  source dhcp  (mode dhcp)",
			"Gateway       10.0.0.1", "DNS           10.0.0.53",
			"Open          http://10.0.0.100:9101/status",
			"Registration  registered", "Node ID       5d7c0a3e-6f0b-4f44-9a52-0d1f1c5b7a10",
			"Services      network ready, agent ready, console running",
			"Uptime        1d 02h03m"}, []string{"NOTHING PERSISTS", "PENDING", "No console password"}},
		{"qvdc", quantix.ImageQvDC, func(s *Snapshot) {
			s.Agent, s.Phases = nil, map[string]int{"ready": 4, "disconnected": 1}
		}, []string{"Quantix vDC 0.1.0 (qvdc)", "Open          http://10.0.0.100:8080/",
			"Nodes         ready 4, not_ready 0, disconnected 1, maintenance 0"}, []string{"Registration"}},
		{"qvdc web ui", quantix.ImageQvDC, func(s *Snapshot) {
			s.Agent, s.Phases, s.VDCUI = nil, map[string]int{"ready": 1}, "https://[::]:8443"
		}, []string{"Open          https://10.0.0.100:8443/"}, []string{":8080"}},
		{"qvdc without vdc", quantix.ImageQvDC, func(s *Snapshot) {
			s.Agent, s.VDCErr = nil, errors.New("vdc metrics: connection refused")
		}, []string{"Nodes         unknown: vdc metrics: connection refused"}, nil},
		{"no config disk, no password, link-local", quantix.ImageQuantixOS, func(s *Snapshot) {
			s.Persistent, s.PasswordSet = false, false
			s.Net.Source, s.Net.Address, s.Net.Gateway = "link-local", "169.254.7.9/16", ""
		}, []string{"WARNING: no QUANTIX-CFG disk: NOTHING PERSISTS.", "No console password yet",
			"169.254.7.9/16  source link-local", "Gateway       none"}, nil},
		{"pending change", quantix.ImageQuantixOS, func(s *Snapshot) {
			s.Net.Pending = &network.PendingStatus{Deadline: time.Date(2026, 1, 1, 10, 11, 12, 0, time.UTC)}
			s.Net.Source, s.Net.Mode = "static", "static"
		}, []string{"PENDING network change: rolls back at 10:11:12 unless confirmed (press c)."}, nil},
		{"no network service", quantix.ImageQuantixOS, func(s *Snapshot) {
			s.Net, s.NetErr = nil, errors.New("connect to the network service: refused")
		}, []string{"Network       unknown: connect to the network service: refused"}, []string{"Open"}},
		{"agent refused", quantix.ImageQuantixOS, func(s *Snapshot) {
			s.Agent.State, s.Agent.NodeID, s.Agent.Error = "refused", "", "409: hostname node-1 belongs to node 77: delete it first"
		}, []string{"Registration  refused", "Node ID       none yet", "Agent error   409: hostname node-1"}, nil},
	}
	for _, tt := range tests {
		cfg := testConfig(t, tt.image)
		s := snapshot()
		s.Image = tt.image
		tt.edit(s)
		m := update(t, NewModel(cfg), snapMsg{s})
		v := m.View()
		checkFits(t, tt.name, v, 80, 24)
		for _, w := range tt.want {
			if !strings.Contains(v, w) {
				t.Errorf("%s: status does not show %q:\n%s", tt.name, w, v)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(v, n) {
				t.Errorf("%s: status shows %q:\n%s", tt.name, n, v)
			}
		}
	}
}

// TestEveryScreenFits draws every screen with long and hostile values on 80x24
// (and a smaller terminal): nothing overflows, nothing but ASCII is drawn.
func TestEveryScreenFits(t *testing.T) {
	cfg := testConfig(t, quantix.ImageQuantixOS)
	if err := (PasswordStore{Path: cfg.PasswordFile}).Set("correct horse"); err != nil {
		t.Fatal(err)
	}
	s := snapshot()
	s.Persistent = false
	s.Hostname = strings.Repeat("a", 63) + "." + strings.Repeat("b", 63)
	s.Agent.Error = strings.Repeat("a very long error \u00e9\u4e16 ", 20)
	for i := 0; i < 30; i++ {
		s.Services = append(s.Services, ServiceState{ServiceStatus: quantix.ServiceStatus{Name: "svc" + strings.Repeat("x", i), State: "restarting"}})
	}
	s.Net.Pending = &network.PendingStatus{Deadline: time.Now().Add(time.Minute)}
	s.Net.LastRollback = &network.RollbackStatus{At: time.Now(), Reason: strings.Repeat("gateway did not answer ", 10)}
	screens := map[string][]tea.Msg{
		"status":   nil,
		"password": keys("n"),
		"network":  append(keys("ncorrect horse\r \t\x15999.1.1.1/99\t\x15gw\t\x15a, b, c\t\r"), tea.KeyMsg{Type: tea.KeyEnter}),
		"hostname": keys("hcorrect horse\r\x15bad_name!\r"),
		"services": keys("s"),
		"power":    keys("pcorrect horse\rr"),
		"confirm":  keys("ccorrect horse\r"),
	}
	for name, msgs := range screens {
		for _, size := range []tea.WindowSizeMsg{{Width: 80, Height: 24}, {Width: 40, Height: 12}} {
			m := update(t, NewModel(cfg), size, snapMsg{s})
			m = update(t, m, msgs...)
			m = update(t, m, logMsg{name: "network", lines: []string{strings.Repeat("\ttab and \x1b[31mescape\u00e9 ", 10)}})
			checkFits(t, name, m.View(), size.Width, size.Height)
		}
	}
}

func TestPasswordGate(t *testing.T) {
	cfg := testConfig(t, quantix.ImageQuantixOS)
	m := update(t, NewModel(cfg), snapMsg{snapshot()})
	// No password yet: the first change asks to set one; Esc leaves locked.
	m = update(t, m, keys("p")...)
	if !strings.Contains(m.View(), "No console password is set") {
		t.Fatalf("no set-password screen:\n%s", m.View())
	}
	m = update(t, m, keys("\x1bp")...)
	if m.unlocked || m.scr != scrSetPassword {
		t.Fatalf("Esc then p: unlocked=%v screen=%v", m.unlocked, m.scr)
	}
	m = update(t, m, keys("abcdefgh\rabcdefgh\r")...)
	if !m.unlocked || m.scr != scrPower {
		t.Fatalf("after setting the password: unlocked=%v screen=%v\n%s", m.unlocked, m.scr, m.View())
	}
	// Idle: locked again, back on the status screen.
	m = update(t, m, tickMsg(time.Now().Add(cfg.IdleLock+time.Second)))
	if m.unlocked || m.scr != scrStatus || !strings.Contains(m.View(), "locked after inactivity") {
		t.Fatalf("idle: unlocked=%v screen=%v\n%s", m.unlocked, m.scr, m.View())
	}
	m = update(t, m, keys("hwrongpass\r")...)
	if m.unlocked || !strings.Contains(m.View(), "Wrong password (1 failed).") {
		t.Fatalf("wrong password:\n%s", m.View())
	}
	m = update(t, m, keys("abcdefgh\r")...)
	if !m.unlocked || m.scr != scrHostname {
		t.Fatalf("right password: unlocked=%v screen=%v\n%s", m.unlocked, m.scr, m.View())
	}
}

// TestKeysTogether: keys that arrive in one read (a serial line, a paste) act one
// by one.
func TestKeysTogether(t *testing.T) {
	cfg := testConfig(t, quantix.ImageQuantixOS)
	(PasswordStore{Path: cfg.PasswordFile}).Set("abcdefgh")
	m := update(t, NewModel(cfg), snapMsg{snapshot()})
	m = update(t, m, tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("pabcdefgh")}, tea.KeyMsg{Type: tea.KeyEnter},
		tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("rx")})
	if m.scr != scrPower || !strings.Contains(m.View(), "Cancelled.") {
		t.Fatalf("screen %v:\n%s", m.scr, m.View())
	}
}

func TestNetworkFormErrorsNextToFields(t *testing.T) {
	cfg := testConfig(t, quantix.ImageQuantixOS)
	(PasswordStore{Path: cfg.PasswordFile}).Set("abcdefgh")
	m := update(t, NewModel(cfg), snapMsg{snapshot()})
	m = update(t, m, keys("nabcdefgh\r")...)
	v := m.View()
	// From the status: DHCP, with the leased address as the fallback suggestion.
	if !strings.Contains(v, "(*) DHCP") || !strings.Contains(v, "Address/prefix  [10.0.0.100/24]") {
		t.Fatalf("network form:\n%s", v)
	}
	m = update(t, m, keys(" \t\x1510.0.0.5/24\t\x1510.0.1.1\t\x15x.y\t\r")...)
	v = m.View()
	lines := strings.Split(v, "\n")
	for i, l := range lines {
		switch {
		case strings.Contains(l, "Gateway "):
			if !strings.Contains(lines[i+1], "! static.gateway: 10.0.1.1 is not inside 10.0.0.0/24") {
				t.Fatalf("no gateway error under the gateway field:\n%s", v)
			}
		case strings.Contains(l, "DNS servers "):
			if !strings.Contains(lines[i+1], `! dns: entry 1: "x.y" is not an IP address`) {
				t.Fatalf("no DNS error under the DNS field:\n%s", v)
			}
		}
	}
	// Fixing the gateway clears its error, live; the DNS one stays.
	m = update(t, m, tea.KeyMsg{Type: tea.KeyUp}, tea.KeyMsg{Type: tea.KeyUp})
	m = update(t, m, keys("\x1510.0.0.1")...)
	v = m.View()
	if strings.Contains(v, "! static.gateway") || !strings.Contains(v, `! dns: entry 1: "x.y" is not an IP address`) {
		t.Fatalf("after fixing the gateway:\n%s", v)
	}
	if m.busy != "" {
		t.Fatalf("an invalid form was sent: %s", m.busy)
	}
}

// TestRollbackMessages: what the operator reads after saying No to a pending
// network change, by what the network service answered.
func TestRollbackMessages(t *testing.T) {
	tests := []struct {
		name string
		msg  rollbackMsg
		want string
	}{
		{"restored", rollbackMsg{st: network.Status{Address: "10.0.0.5/24", Source: "static",
			LastRollback: &network.RollbackStatus{Done: true, Verified: true}}, deadline: "12:00:00"},
			"Not kept: the previous settings are back (10.0.0.5/24, static)."},
		{"service unreachable", rollbackMsg{err: errors.New("connect to the network service at /run/quantix/network.sock: no such file"), deadline: "12:00:00"},
			"Roll back failed: connect to the network service at /run/quantix/network.sock: no such file; the previous settings come back at 12:00:00."},
		{"verification failed", rollbackMsg{st: network.Status{LastRollback: &network.RollbackStatus{Done: true}},
			err: errors.New("rolled back, but the restored configuration failed verification: gateway 10.0.0.1 unreachable"), deadline: "12:00:00"},
			"Roll back: rolled back, but the restored configuration failed verification: gateway 10.0.0.1 unreachable"},
		{"nothing pending", rollbackMsg{err: errors.New("nothing to roll back: no applied configuration is pending")},
			"Roll back: nothing to roll back: no applied configuration is pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewModel(testConfig(t, quantix.ImageQuantixOS))
			m.snap, m.scr, m.busy = snapshot(), scrConfirm, "Not kept: restoring the previous settings..."
			mm, _ := m.Update(tt.msg)
			m = mm.(Model)
			if m.msg != tt.want || m.scr != scrStatus || m.busy != "" {
				t.Errorf("after %+v: screen %d, busy %q, footer %q; want the status screen with %q", tt.msg, m.scr, m.busy, m.msg, tt.want)
			}
		})
	}
}
