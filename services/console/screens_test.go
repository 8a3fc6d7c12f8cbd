package console

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/blockdev"
	"github.com/quantix/quantix/services/network"
	"github.com/quantix/quantix/upgrade"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/screens.golden from what the screens draw now")

// goldenConfig is testConfig with paths relative to a fresh working folder, so
// the paths the screens show are the same on every run.
func goldenConfig(t *testing.T, image string) *Config {
	t.Chdir(t.TempDir())
	if err := os.Mkdir("log", 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Config{Image: image, Version: "0.1.0", PasswordFile: "password", HostnameFile: "hostname",
		NetworkSocket: "net.sock", NetworkConfig: "network.toml", LogDir: "log", AgentURL: "http://127.0.0.1:9101",
		VDCURL: "http://127.0.0.1:8080", InitSocket: "init.sock", MountInfo: "mountinfo", UptimePath: "uptime",
		SysBlock: "sys", DevDir: "dev", MediaDir: "media"}
	c.fill()
	c.SetHostname = func(string) error { return nil }
	c.Init = InitClient{Socket: c.InitSocket}
	return c
}

// goldenTime is the clock of the golden scenarios (ticks carry it), so the
// seconds left on the confirm screen are the same on every run.
var goldenTime = time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)

type goldenStep struct {
	name string
	msgs []tea.Msg
}

func step(name string, msgs ...tea.Msg) goldenStep { return goldenStep{name, msgs} }

func key(t tea.KeyType) tea.Msg { return tea.KeyMsg{Type: t} }

// TestScreensGolden draws every screen in the states an operator can reach (the
// key sequences below, and the answers of the services the screens talk to) and
// compares each drawing with testdata/screens.golden byte for byte: what the
// operator sees does not change unless the golden file changes with it.
func TestScreensGolden(t *testing.T) {
	pending := func(s *Snapshot) {
		s.Net.Pending = &network.PendingStatus{Deadline: goldenTime.Add(45 * time.Second), GatewayReachable: true}
		s.Net.Mode, s.Net.Source, s.Net.Address = "static", "static", "10.0.0.5/24"
	}
	scenarios := []struct {
		name     string
		image    string
		password string // "" leaves the console password unset
		size     tea.WindowSizeMsg
		edit     func(s *Snapshot)
		steps    []goldenStep
	}{
		{name: "status quantix-os", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("start"),
			step("ctrl-l", key(tea.KeyCtrlL)),
			step("unknown key", keys("z")...),
			step("unlock via power, back", append(keys("pabcdefgh\r"), key(tea.KeyEsc))...),
			step("lock", keys("l")...),
		}},
		{name: "status before the first snapshot", image: quantix.ImageQuantixOS, steps: []goldenStep{step("start")}},
		{name: "status qvdc", image: quantix.ImageQvDC, edit: func(s *Snapshot) {
			s.Agent, s.Phases, s.VDCUI = nil, map[string]int{"ready": 2, "maintenance": 1}, "https://[::]:8443"
		}, steps: []goldenStep{step("start")}},
		{name: "status qvdc without vdc", image: quantix.ImageQvDC, edit: func(s *Snapshot) {
			s.Agent, s.VDCErr = nil, errors.New("vdc metrics: connection refused")
			s.Net, s.NetErr = nil, errors.New("connect to the network service: refused")
		}, steps: []goldenStep{step("start")}},
		{name: "status warnings", image: quantix.ImageQuantixOS, edit: func(s *Snapshot) {
			pending(s)
			s.Persistent, s.PasswordSet = false, false
			s.PersistErr = errors.New("mountinfo: permission denied")
			s.Net.MAC, s.Net.Gateway, s.Net.DNS = "", "", nil
			s.Net.LastRollback = &network.RollbackStatus{At: goldenTime, Reason: "gateway did not answer"}
			s.Agent.State, s.Agent.NodeID, s.Agent.VDC = "refused", "", ""
			s.Agent.Registration.Result, s.Agent.Error = "conflict", "409: hostname node-1 belongs to node 77"
			for i := range 12 {
				s.Services = append(s.Services, ServiceState{ServiceStatus: quantix.ServiceStatus{Name: fmt.Sprintf("extra-%d", i), State: "restarting"}})
			}
		}, steps: []goldenStep{step("start")}},
		{name: "status services and agent unknown", image: quantix.ImageQuantixOS, edit: func(s *Snapshot) {
			s.Agent, s.AgentErr = nil, errors.New("agent status: connection refused")
			s.Services, s.ServicesErr = nil, errors.New("qx-init: connection refused")
		}, steps: []goldenStep{step("start"), step("services", keys("s")...)}},
		{name: "set password, power", image: quantix.ImageQuantixOS, steps: []goldenStep{
			step("p", keys("p")...),
			step("too short", keys("abc\r")...),
			step("good first", append(keys("\x15abcdefgh\r"), key(tea.KeyBackspace))...),
			step("tab back", key(tea.KeyTab)),
			step("tab again", key(tea.KeyShiftTab)),
			step("differ", keys("xyz\r")...),
			step("esc", keys("\x1b")...),
			step("again", keys("p")...),
			step("set", keys("abcdefgh\rabcdefgh\r")...),
			step("reboot?", keys("r")...),
			step("no", keys("x")...),
			step("power off?", keys("o")...),
			step("yes", keys("y")...),
			step("esc", keys("\x1b")...),
		}},
		{name: "password, hostname", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("h", keys("h")...),
			step("typed", keys("wrong pass")...),
			step("wrong", keys("\r")...),
			step("wrong twice", keys("x\rx\r")...),
			step("too many", keys("x\r")...),
			step("hostname", keys("\x1b")...),
		}},
		{name: "hostname", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("open", keys("habcdefgh\r")...),
			step("bad", keys("\x15bad_name!\r")...),
			step("typing clears the error", keys("x")...),
			step("esc", keys("\x1b")...),
			step("again", keys("h")...),
			step("save", keys("\x15New-Name.example\r")...),
		}},
		{name: "hostname qvdc", image: quantix.ImageQvDC, password: "abcdefgh", edit: func(s *Snapshot) { s.Agent = nil },
			steps: []goldenStep{step("open", keys("habcdefgh\r")...)}},
		{name: "network form", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("open", keys("nabcdefgh\r")...),
			step("static", keys(" ")...),
			step("d", keys("d")...),
			step("s", keys("s")...),
			step("down", key(tea.KeyDown)),
			step("address", keys("\x1510.0.0.5/24")...),
			step("enter next", keys("\r")...),
			step("gateway", keys("\x1510.0.1.1")...),
			step("ctrl-n", key(tea.KeyCtrlN)),
			step("dns", keys("\x15x.y, 10.0.0.53")...),
			step("up up", key(tea.KeyUp), key(tea.KeyCtrlP)),
			step("tab tab", key(tea.KeyTab), key(tea.KeyTab)),
			step("apply", keys("\t\r")...),
			step("fix gateway", append([]tea.Msg{key(tea.KeyUp), key(tea.KeyUp)}, keys("\x1510.0.0.1")...)...),
			step("fix dns", append([]tea.Msg{key(tea.KeyDown)}, keys("\x1510.0.0.53")...)...),
			step("shift-tab", key(tea.KeyShiftTab), key(tea.KeyShiftTab)),
			step("apply, no service", append([]tea.Msg{key(tea.KeyDown), key(tea.KeyDown)}, keys("\t\r")...)...),
			step("rolled back", applyMsg{res: network.ApplyResult{RolledBack: true}, err: errors.New("gateway 10.0.0.1 did not answer")}),
			step("refused", applyMsg{err: errors.New("invalid network settings: console: static.gateway: 10.0.1.1 is not inside 10.0.0.0/24")}),
			step("left", key(tea.KeyLeft)),
			step("dhcp note", key(tea.KeyRight)),
			step("esc", keys("\x1b")...),
			step("again", keys("n")...),
			step("committed", applyMsg{res: network.ApplyResult{Applied: true, Committed: true, SavedTo: "/quantix/network/network.toml"}}),
		}},
		{name: "network form from network.toml", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("broken file", keys("nabcdefgh\r")...),
		}},
		{name: "confirm", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("open form", keys("nabcdefgh\r")...),
			step("applied, not confirmed", applyMsg{res: network.ApplyResult{Applied: true, GatewayReachable: false,
				CheckError: "no answer from 10.0.0.1", Deadline: goldenTime.Add(60 * time.Second),
				Status: network.Status{Address: "10.0.0.5/24", Source: "static", Gateway: "10.0.0.1"}}}),
			step("tick", tickMsg(goldenTime.Add(17*time.Second))),
			step("other key", keys("q")...),
			step("keep, no service", keys("y")...),
			step("back to confirm", keys("c")...),
			step("confirmed", confirmMsg{}),
		}},
		{name: "confirm pending", image: quantix.ImageQuantixOS, password: "abcdefgh", edit: pending, steps: []goldenStep{
			step("c", keys("c")...),
			step("unlocked", keys("abcdefgh\r")...),
			step("tick", tickMsg(goldenTime.Add(5*time.Second))),
			step("roll back, no service", keys("n")...),
			step("c again", keys("c")...),
			step("roll back answered", rollbackMsg{st: network.Status{Address: "10.0.0.100/24", Source: "dhcp"}}),
			step("c third", keys("c")...),
			step("esc, no service", keys("\x1b")...),
			step("c fourth", keys("c")...),
			step("rollback without address", rollbackMsg{st: network.Status{Source: "fallback"}}),
		}},
		{name: "confirm nothing pending", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("open form", keys("nabcdefgh\r")...),
			step("confirm screen, no result", applyMsg{res: network.ApplyResult{Applied: true}}),
			step("after confirm", confirmMsg{err: errors.New("nothing pending")}),
		}},
		{name: "network test", image: quantix.ImageQuantixOS, edit: func(s *Snapshot) {
			s.Net.Gateway, s.Net.DNS, s.Agent.VDC = "", nil, ""
		}, steps: []goldenStep{
			step("t", keys("t")...),
			step("results", checksMsg{{Name: "gateway 10.0.0.1", OK: true, Detail: "answered in 3ms"},
				{Name: "dns 10.0.0.53", Detail: strings.Repeat("no answer from the server in time ", 4)},
				{Name: "vdc http://10.0.0.2:8080", OK: true, Detail: "200 OK"}}),
			step("other key", keys("x")...),
			step("again", keys("r")...),
			step("enter", keys("\r")...),
			step("esc", keys("\x1b")...),
		}},
		{name: "network test no status", image: quantix.ImageQuantixOS, edit: func(s *Snapshot) { s.Net = nil },
			steps: []goldenStep{step("t", keys("t")...)}},
		{name: "services", image: quantix.ImageQuantixOS, password: "abcdefgh", edit: func(s *Snapshot) {
			s.Services[0].Restarts, s.Services[0].State, s.Services[0].LastError = 2, "failed", "exit status 1"
			s.Services[1].State, s.Services[1].LastError = "ready", "ignored when ready"
		}, steps: []goldenStep{
			step("s", keys("s")...),
			step("log", logMsg{name: "network", lines: []string{"line 1", "line 2"}}),
			step("log of another service", logMsg{name: "agent", lines: []string{"not shown"}}),
			step("down", keys("j")...),
			step("log error", logMsg{name: "agent", err: errors.New("open log/agent.log: no such file or directory")}),
			step("down down", key(tea.KeyDown), key(tea.KeyCtrlN)),
			step("up", keys("k")...),
			step("restart?", keys("r")...),
			step("unlocked", keys("abcdefgh\r")...),
			step("no", keys("n")...),
			step("restart again", keys("r")...),
			step("yes, no init", keys("y")...),
			step("up up", key(tea.KeyUp), key(tea.KeyCtrlP)),
			step("long log", logMsg{name: "network", lines: strings.Split(strings.Repeat("a log line\n", 40), "\n")}),
			step("esc", keys("\x1b")...),
		}},
		{name: "services from proc", image: quantix.ImageQuantixOS, password: "abcdefgh", edit: func(s *Snapshot) {
			for i := range s.Services {
				s.Services[i].Origin, s.Services[i].State, s.Services[i].PID = "/proc", "not running", 0
			}
		}, steps: []goldenStep{
			step("s", keys("s")...),
			step("restart? locked", keys("r")...),
			step("esc back to services", keys("\x1b")...),
		}},
		{name: "upgrade", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("u", keys("u")...),
			step("unlocked, no init", keys("abcdefgh\r")...),
			step("m without slots", keys("m")...),
			step("slots after a rollback", slotsMsg{st: quantix.SlotsStatus{Booted: "a", State: quantix.SlotRolledBack, Order: []string{"a", "b"},
				Next: "a", RolledBackFrom: "b", Reason: `health gate "agent" failed after 120 s: no registration with the vDC (logs in /var/lib/quantix/upgrade/failed-b-20260101T100000Z)`,
				Slots: []quantix.SlotInfo{{Slot: "a", Good: true, Image: quantix.ImageQuantixOS, Version: "0.1.0"}, {Slot: "b", Image: quantix.ImageQuantixOS, Version: "0.1.1"}}}}),
			step("scan, no sysfs", keys("m")...),
			step("media", mediaMsg{media: goldenMedia()}),
			step("down", keys("j")...),
			step("down at the end", key(tea.KeyDown)),
			step("stage?", keys("\r")...),
			step("no", keys("x")...),
			step("up", key(tea.KeyUp)),
			step("stage, no init", keys("\ry")...),
			step("refused", stageMsg{b: mediaBundle{goldenMedia()[0].Bundles[0], "/dev/sdb1"},
				err: errors.New("stage: verify bundle media/sdb1: bundle signature is not from a key this image trusts (trusted: release-2026): get a bundle signed by one of them")}),
			step("staged", stageMsg{b: mediaBundle{goldenMedia()[0].Bundles[0], "/dev/sdb1"},
				st: quantix.Staged{Slot: "b", Image: quantix.ImageQuantixOS, Version: "0.2.0", SignedBy: "release-2026", Seconds: 1.25}}),
			step("slots after staging", slotsMsg{st: quantix.SlotsStatus{Booted: "a", State: quantix.SlotGood, Order: []string{"b", "a"}, Next: "b",
				Slots: []quantix.SlotInfo{{Slot: "a", Good: true, Image: quantix.ImageQuantixOS, Version: "0.1.0"}, {Slot: "b", Tries: 3, Image: quantix.ImageQuantixOS, Version: "0.2.0"}}}}),
			step("reboot?", keys("r")...),
			step("no", keys("n")...),
			step("reboot, no init", keys("ry")...),
			step("esc", keys("\x1b")...),
		}},
		{name: "upgrade live boot", image: quantix.ImageQvDC, password: "abcdefgh", edit: func(s *Snapshot) { s.Agent = nil }, steps: []goldenStep{
			step("u", keys("uabcdefgh\r")...),
			step("live", slotsMsg{err: fmt.Errorf("slots: %w", quantix.ErrNotAB)}),
			step("m offers nothing", keys("m\rr")...),
			step("idle", tickMsg(time.Now().Add(time.Hour))),
		}},
		{name: "idle lock", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("services restart?", keys("srabcdefgh\r")...),
			step("idle", tickMsg(time.Now().Add(time.Hour))),
			step("power", keys("pabcdefgh\r")...),
			step("idle on power", tickMsg(time.Now().Add(time.Hour))),
			step("hostname", keys("h")...),
			step("idle on password", tickMsg(time.Now().Add(time.Hour))),
		}},
		{name: "keys together", image: quantix.ImageQuantixOS, password: "abcdefgh", steps: []goldenStep{
			step("one read", tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("nabcdefgh")}, key(tea.KeyEnter),
				tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("  ")}, key(tea.KeySpace)),
		}},
		{name: "small terminal", image: quantix.ImageQuantixOS, password: "abcdefgh", size: tea.WindowSizeMsg{Width: 40, Height: 12},
			steps: []goldenStep{
				step("status"),
				step("network", keys("nabcdefgh\r")...),
				step("errors", keys(" \t\x15999.1.1.1/99\t\x15gw\t\x15a, b, c\t\r")...),
				step("services", append(keys("\x1bs"), logMsg{name: "network", lines: []string{"1", "2", "3", "4", "5", "6"}})...),
				step("resize ignored", tea.WindowSizeMsg{}),
			}},
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(wd, "testdata", "screens.golden")
	var got strings.Builder
	for _, sc := range scenarios {
		cfg := goldenConfig(t, sc.image)
		if sc.password != "" {
			if err := (PasswordStore{Path: cfg.PasswordFile}).Set(sc.password); err != nil {
				t.Fatal(err)
			}
		}
		if sc.name == "network form from network.toml" {
			if err := os.WriteFile(cfg.NetworkConfig, []byte("mode = \"static\"\nbogus = 1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		m := NewModel(cfg)
		if sc.size.Width > 0 {
			m = update(t, m, sc.size)
		}
		if sc.name != "status before the first snapshot" {
			s := snapshot()
			s.Image = sc.image
			if sc.edit != nil {
				sc.edit(s)
			}
			m = update(t, m, snapMsg{s})
		}
		for _, st := range sc.steps {
			m = update(t, m, st.msgs...)
			fmt.Fprintf(&got, "=== %s: %s\n%s\n", sc.name, st.name, m.View())
		}
	}
	if *updateGolden {
		if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run TestScreensGolden -update writes it)", err)
	}
	if got.String() != string(want) {
		g, w := strings.Split(got.String(), "\n"), strings.Split(string(want), "\n")
		for i := range max(len(g), len(w)) {
			var gl, wl string
			if i < len(g) {
				gl = g[i]
			}
			if i < len(w) {
				wl = w[i]
			}
			if gl != wl {
				t.Fatalf("screens differ from %s at line %d:\n got %q\nwant %q\n(go test -run TestScreensGolden -update rewrites it)", path, i+1, gl, wl)
			}
		}
	}
}

// goldenMedia is a scan as the Upgrade screen gets it: a stick with a bundle in a
// folder, one at its root and a folder that is no bundle; a stick with none; a CD
// that would not mount.
func goldenMedia() []Medium {
	os := quantix.ImageQuantixOS
	return []Medium{
		{Filesystem: blockdev.Filesystem{Device: "/dev/sdb1", Disk: "sdb", Type: "vfat", Label: "RELEASES", Removable: true}, Dir: "media/sdb1",
			Bundles: []upgrade.Unverified{{Dir: "media/sdb1/quantix-0.2.0", ISO: "quantix-os.iso", Image: os, Version: "0.2.0"},
				{Dir: "media/sdb1", ISO: "quantix-os.iso", Image: os, Version: "0.2.1-rc1"}},
			Broken: []error{errors.New("bundle media/sdb1/half: bundle is not signed: stat media/sdb1/half/SHA256SUMS.sig: no such file or directory")}},
		{Filesystem: blockdev.Filesystem{Device: "/dev/sdc", Disk: "sdc", Type: "vfat", Label: "PHOTOS", Removable: true}},
		{Filesystem: blockdev.Filesystem{Device: "/dev/sr0", Disk: "sr0", Type: "iso9660", Label: "CDROM", Removable: true},
			Err: errors.New("mount /dev/sr0 (iso9660) read-only on media/sr0: no medium found")},
	}
}
