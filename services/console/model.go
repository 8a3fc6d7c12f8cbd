package console

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/services/network"
)

type screen int

const (
	scrStatus screen = iota
	scrNetwork
	scrConfirm
	scrHostname
	scrNetTest
	scrServices
	scrPower
	scrPassword
	scrSetPassword
)

// action is what the operator asked for that needs the password.
type action struct {
	kind string // "network", "hostname", "restart", "power", "confirm"
	arg  string
}

// field is a one-line text input; the cursor is always at its end (serial
// terminals make anything fancier fragile).
type field struct {
	value  string
	max    int
	secret bool
}

func (f *field) key(k tea.KeyMsg) bool {
	switch k.Type {
	case tea.KeyBackspace, tea.KeyCtrlH:
		if f.value != "" {
			f.value = f.value[:len(f.value)-1]
		}
		return true
	case tea.KeyCtrlU:
		f.value = ""
		return true
	case tea.KeyRunes, tea.KeySpace:
		for _, r := range k.Runes {
			if r < 0x20 || r > 0x7e || len(f.value) >= f.max {
				continue
			}
			f.value += string(r)
		}
		if k.Type == tea.KeySpace && len(f.value) < f.max {
			f.value += " "
		}
		return true
	}
	return false
}

func (f field) render(focused bool) string {
	v := f.value
	if f.secret {
		v = strings.Repeat("*", len(v))
	}
	if focused {
		return "[" + v + "_]"
	}
	return "[" + v + "]"
}

// Model is the console UI: a pure bubbletea model (all I/O happens in commands),
// so tests drive Update with key messages and read View.
type Model struct {
	cfg           *Config
	width, height int
	scr           screen
	now           time.Time
	snap          *Snapshot
	ticks         int

	// authentication
	unlocked    bool
	lastKey     time.Time
	failures    int
	lockedUntil time.Time
	pending     action
	pw, pw2     field
	pwFocus     int
	pwErr       string
	busy        string // a command is running: what it does

	// management network
	form      NetForm
	formIn    [3]field // address, gateway, dns
	focus     int      // 0 mode, 1 address, 2 gateway, 3 dns, 4 apply
	formErrs  map[string]string
	formNote  string
	validated bool
	applyRes  *network.ApplyResult

	host    field
	hostErr string

	checks []CheckResult

	svcSel  int
	svcLog  []string
	svcErr  string
	svcAsk  bool
	powerAs string // "reboot"/"poweroff" awaiting "y"

	msg string // footer message
}

// NewModel returns the console model for cfg (defaults already filled in).
func NewModel(cfg *Config) Model {
	return Model{cfg: cfg, width: 80, height: 24, now: time.Now(), formErrs: map[string]string{},
		pw: field{max: 256, secret: true}, pw2: field{max: 256, secret: true}, host: field{max: 253},
		formIn: [3]field{{max: 43}, {max: 39}, {max: 120}}}
}

type tickMsg time.Time
type snapMsg struct{ s *Snapshot }
type verifyMsg struct{ err error }
type setPwMsg struct{ err error }
type applyMsg struct {
	res network.ApplyResult
	err error
}
type confirmMsg struct{ err error }
type rollbackMsg struct {
	st       network.Status
	err      error
	deadline string // when the service rolls back by itself, "" if unknown
}
type hostMsg struct {
	name string
	err  error
}
type checksMsg []CheckResult
type logMsg struct {
	name  string
	lines []string
	err   error
}
type doneMsg struct {
	what string
	err  error
	// ok is the message on success ("requested", "done").
	ok string
}

func tick() tea.Cmd { return tea.Tick(time.Second, func(t time.Time) tea.Msg { return tickMsg(t) }) }

func (m Model) gatherCmd() tea.Cmd {
	cfg := m.cfg
	return func() tea.Msg { return snapMsg{gather(context.Background(), cfg)} }
}

// Init starts the refresh clock and the first status gathering.
func (m Model) Init() tea.Cmd { return tea.Batch(tick(), m.gatherCmd()) }

// Update handles one message.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		if msg.Width > 0 && msg.Height > 0 {
			m.width, m.height = msg.Width, msg.Height
		}
		return m, nil
	case tickMsg:
		m.now = time.Time(msg)
		m.ticks++
		var cmds []tea.Cmd
		cmds = append(cmds, tick())
		if m.ticks%int(max(1, m.cfg.Refresh/time.Second)) == 0 {
			cmds = append(cmds, m.gatherCmd())
			if m.scr == scrServices {
				cmds = append(cmds, m.logCmd())
			}
		}
		if r := int(m.cfg.Repaint / time.Second); r > 0 && m.ticks%r == 0 {
			cmds = append(cmds, tea.ClearScreen)
		}
		if m.unlocked && m.now.Sub(m.lastKey) > m.cfg.IdleLock {
			m.lock("locked after inactivity")
		}
		return m, tea.Batch(cmds...)
	case snapMsg:
		m.snap = msg.s
		return m, nil
	case tea.KeyMsg:
		m.now = time.Now()
		m.lastKey = m.now
		if msg.Type == tea.KeyCtrlL {
			return m, tea.ClearScreen
		}
		if msg.Type == tea.KeyRunes && len(msg.Runes) > 1 {
			// Keys typed faster than they are read arrive together (serial lines,
			// pastes): handle them one by one, as they were typed.
			var cmds []tea.Cmd
			var mm tea.Model = m
			for _, r := range msg.Runes {
				var cmd tea.Cmd
				mm, cmd = mm.(Model).key(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
				cmds = append(cmds, cmd)
			}
			return mm, tea.Batch(cmds...)
		}
		return m.key(msg)
	case verifyMsg:
		m.busy = ""
		if msg.err != nil {
			m.failures++
			m.pw.value = ""
			if m.failures >= 3 {
				d := time.Second << min(m.failures-3, 5)
				m.lockedUntil = time.Now().Add(d)
			}
			m.pwErr = fmt.Sprintf("Wrong password (%d failed).", m.failures)
			if !errors.Is(msg.err, ErrWrongPassword) {
				m.pwErr = msg.err.Error()
			}
			return m, nil
		}
		m.failures, m.unlocked, m.pw.value, m.pwErr = 0, true, "", ""
		return m.perform(m.pending)
	case setPwMsg:
		m.busy = ""
		if msg.err != nil {
			m.pwErr = msg.err.Error()
			return m, nil
		}
		m.unlocked, m.pw.value, m.pw2.value, m.pwErr = true, "", "", ""
		m.msg = "Console password set."
		return m.perform(m.pending)
	case applyMsg:
		m.busy = ""
		return m.applied(msg)
	case rollbackMsg:
		return m.rolledBack(msg)
	case confirmMsg:
		m.busy = ""
		if msg.err != nil {
			m.msg = "Confirm failed: " + msg.err.Error()
			return m, m.gatherCmd()
		}
		m.applyRes = nil
		m.scr = scrStatus
		m.msg = "Network settings kept and saved to " + filepath.Base(m.cfg.NetworkConfig) + "."
		return m, m.gatherCmd()
	case hostMsg:
		m.busy = ""
		if msg.err != nil {
			m.hostErr = msg.err.Error()
			return m, nil
		}
		m.scr, m.hostErr = scrStatus, ""
		m.msg = "Hostname " + msg.name + " set and saved."
		return m, m.gatherCmd()
	case checksMsg:
		m.busy = ""
		m.checks = msg
		return m, nil
	case logMsg:
		if names := m.serviceNames(); m.svcSel < len(names) && names[m.svcSel] == msg.name {
			m.svcLog, m.svcErr = msg.lines, ""
			if msg.err != nil {
				m.svcErr = msg.err.Error()
			}
		}
		return m, nil
	case doneMsg:
		m.busy = ""
		if msg.err != nil {
			m.msg = msg.what + " failed: " + msg.err.Error()
		} else {
			m.msg = msg.what + ": " + msg.ok + "."
		}
		return m, m.gatherCmd()
	}
	return m, nil
}

func (m *Model) lock(why string) {
	m.unlocked = false
	switch m.scr {
	case scrNetwork, scrHostname, scrPower, scrPassword, scrSetPassword:
		m.scr = scrStatus
	case scrServices:
		m.svcAsk = false
	}
	m.msg = why
}

func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if m.busy != "" {
		return m, nil // one thing at a time; the screen says what is running
	}
	switch m.scr {
	case scrStatus:
		return m.keyStatus(k)
	case scrPassword, scrSetPassword:
		return m.keyPassword(k)
	case scrNetwork:
		return m.keyNetwork(k)
	case scrConfirm:
		return m.keyConfirm(k)
	case scrHostname:
		return m.keyHostname(k)
	case scrNetTest:
		switch {
		case k.Type == tea.KeyEsc:
			m.scr = scrStatus
		case k.String() == "r" || k.Type == tea.KeyEnter:
			return m.startChecks()
		}
		return m, nil
	case scrServices:
		return m.keyServices(k)
	case scrPower:
		return m.keyPower(k)
	}
	return m, nil
}

func (m Model) keyStatus(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	m.msg = ""
	switch k.String() {
	case "n":
		return m.requireAuth(action{kind: "network"})
	case "c":
		if m.snap != nil && m.snap.Net != nil && m.snap.Net.Pending != nil {
			return m.requireAuth(action{kind: "confirm"})
		}
	case "h":
		return m.requireAuth(action{kind: "hostname"})
	case "t":
		return m.startChecks()
	case "s":
		m.scr, m.svcAsk, m.svcLog = scrServices, false, nil
		return m, m.logCmd()
	case "p":
		return m.requireAuth(action{kind: "power"})
	case "l":
		if m.unlocked {
			m.lock("Console locked.")
		}
	}
	return m, nil
}

// requireAuth runs a after the password was given (or set, on first use).
func (m Model) requireAuth(a action) (tea.Model, tea.Cmd) {
	if m.unlocked {
		return m.perform(a)
	}
	m.pending, m.pwErr, m.pw.value, m.pw2.value, m.pwFocus = a, "", "", "", 0
	set, err := PasswordStore{Path: m.cfg.PasswordFile}.IsSet()
	switch {
	case err != nil:
		m.msg = err.Error()
		return m, nil
	case set:
		m.scr = scrPassword
	default:
		m.scr = scrSetPassword
	}
	return m, nil
}

func (m Model) perform(a action) (tea.Model, tea.Cmd) {
	m.pending = action{}
	switch a.kind {
	case "network":
		var st *network.Status
		if m.snap != nil {
			st = m.snap.Net
		}
		f, err := LoadForm(m.cfg.NetworkConfig, st)
		m.form, m.focus, m.formErrs, m.validated, m.formNote = f, 0, map[string]string{}, false, ""
		if err != nil {
			m.formNote = "Saved settings not used: " + err.Error()
		}
		m.formIn[0].value, m.formIn[1].value, m.formIn[2].value = f.Address, f.Gateway, f.DNS
		m.scr = scrNetwork
	case "confirm":
		if m.applyRes == nil && m.snap != nil && m.snap.Net != nil && m.snap.Net.Pending != nil {
			p := m.snap.Net.Pending
			m.applyRes = &network.ApplyResult{Applied: true, GatewayReachable: p.GatewayReachable, CheckError: p.CheckError,
				Deadline: p.Deadline, Status: *m.snap.Net}
		}
		m.scr = scrConfirm
	case "hostname":
		m.host.value, m.hostErr = "", ""
		if m.snap != nil {
			m.host.value = m.snap.Hostname
		}
		m.scr = scrHostname
	case "power":
		m.scr, m.powerAs = scrPower, ""
	case "restart":
		m.scr, m.svcAsk = scrServices, true
	default:
		m.scr = scrStatus
	}
	return m, nil
}

func (m Model) keyPassword(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if k.Type == tea.KeyEsc {
		m.scr = scrStatus
		if m.pending.kind == "restart" {
			m.scr = scrServices
		}
		m.pending, m.pwErr = action{}, ""
		return m, nil
	}
	cur := &m.pw
	if m.scr == scrSetPassword && m.pwFocus == 1 {
		cur = &m.pw2
	}
	switch k.Type {
	case tea.KeyTab, tea.KeyDown, tea.KeyUp, tea.KeyShiftTab:
		if m.scr == scrSetPassword {
			m.pwFocus = 1 - m.pwFocus
		}
		return m, nil
	case tea.KeyEnter:
	default:
		cur.key(k)
		return m, nil
	}
	if m.scr == scrPassword {
		if wait := time.Until(m.lockedUntil); wait > 0 {
			m.pwErr = fmt.Sprintf("Too many wrong passwords: wait %ds.", int(wait.Seconds())+1)
			return m, nil
		}
		pw, path := m.pw.value, m.cfg.PasswordFile
		m.busy = "Checking password..."
		return m, func() tea.Msg { return verifyMsg{PasswordStore{Path: path}.Verify(pw)} }
	}
	if m.pwFocus == 0 {
		if err := CheckNewPassword(m.pw.value); err != nil {
			m.pwErr = err.Error()
			return m, nil
		}
		m.pwFocus, m.pwErr = 1, ""
		return m, nil
	}
	if m.pw.value != m.pw2.value {
		m.pwErr, m.pw2.value, m.pwFocus = "The two passwords differ; type them again.", "", 0
		m.pw.value = ""
		return m, nil
	}
	pw, path := m.pw.value, m.cfg.PasswordFile
	m.busy = "Saving password..."
	return m, func() tea.Msg { return setPwMsg{PasswordStore{Path: path}.Set(pw)} }
}

func (m *Model) syncForm() {
	m.form.Address, m.form.Gateway, m.form.DNS = m.formIn[0].value, m.formIn[1].value, m.formIn[2].value
	if m.validated {
		m.formErrs = m.form.Validate()
	}
}

func (m Model) keyNetwork(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.Type {
	case tea.KeyEsc:
		m.scr = scrStatus
		return m, nil
	case tea.KeyDown, tea.KeyTab, tea.KeyCtrlN:
		m.focus = (m.focus + 1) % 5
		return m, nil
	case tea.KeyUp, tea.KeyShiftTab, tea.KeyCtrlP:
		m.focus = (m.focus + 4) % 5
		return m, nil
	case tea.KeyEnter:
		if m.focus < 4 {
			m.focus++
			return m, nil
		}
		m.syncForm()
		m.validated = true
		m.formErrs = m.form.Validate()
		if len(m.formErrs) > 0 {
			return m, nil
		}
		data, err := m.form.TOML()
		if err != nil {
			m.formErrs = map[string]string{fieldOf(err): fieldMessage(err)}
			return m, nil
		}
		m.busy = "Applying the new settings and checking the gateway..."
		sock, timeout, probe := m.cfg.NetworkSocket, m.cfg.ConfirmTimeout, m.probeURL()
		return m, func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), timeout+60*time.Second)
			defer cancel()
			res, err := network.Client{Socket: sock}.Apply(ctx, "console", data, timeout, probe)
			return applyMsg{res, err}
		}
	}
	if m.focus == 0 {
		switch k.String() {
		case " ", "left", "right", "h", "l":
			if m.form.Mode == network.ModeStatic {
				m.form.Mode = network.ModeDHCP
			} else {
				m.form.Mode = network.ModeStatic
			}
		case "d":
			m.form.Mode = network.ModeDHCP
		case "s":
			m.form.Mode = network.ModeStatic
		}
		m.syncForm()
		return m, nil
	}
	if m.focus >= 1 && m.focus <= 3 {
		m.formIn[m.focus-1].key(k)
		m.syncForm()
	}
	return m, nil
}

// probeURL is what the network service checks besides the gateway after an apply:
// the vDC on Quantix-OS (a node that cannot reach it is as good as cut off).
func (m Model) probeURL() string {
	if m.cfg.Image == quantix.ImageQvDC || m.snap == nil || m.snap.Agent == nil || m.snap.Agent.VDC == "" {
		return ""
	}
	return strings.TrimRight(m.snap.Agent.VDC, "/") + quantix.PathHealthz
}

func (m Model) applied(msg applyMsg) (tea.Model, tea.Cmd) {
	if msg.err != nil {
		if msg.res.RolledBack {
			m.formNote = "Rolled back: " + msg.err.Error()
		} else {
			m.formErrs = map[string]string{fieldOf(msg.err): fieldMessage(msg.err)}
		}
		return m, m.gatherCmd()
	}
	res := msg.res
	if res.Committed {
		m.scr = scrStatus
		m.msg = "Network settings applied and saved to " + filepath.Base(res.SavedTo) + "."
		return m, m.gatherCmd()
	}
	m.applyRes = &res
	m.scr = scrConfirm
	return m, m.gatherCmd()
}

func (m Model) keyConfirm(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.String() {
	case "y", "Y":
		m.busy = "Confirming..."
		sock := m.cfg.NetworkSocket
		return m, func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, err := network.Client{Socket: sock}.Confirm(ctx)
			return confirmMsg{err}
		}
	case "n", "N", "esc":
		// Rejected: the network service restores the last good settings now (and
		// verifies them) rather than at the deadline.
		dl := ""
		if m.applyRes != nil && !m.applyRes.Deadline.IsZero() {
			dl = m.applyRes.Deadline.Format("15:04:05")
		}
		m.busy = "Not kept: restoring the previous settings..."
		sock := m.cfg.NetworkSocket
		return m, func() tea.Msg {
			// A DHCP configuration is verified once its lease is back.
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			st, err := network.Client{Socket: sock}.Rollback(ctx, "the console")
			return rollbackMsg{st, err, dl}
		}
	}
	return m, nil
}

func (m Model) rolledBack(msg rollbackMsg) (tea.Model, tea.Cmd) {
	m.busy = ""
	m.scr, m.applyRes = scrStatus, nil
	switch {
	case msg.err == nil:
		addr := msg.st.Address
		if addr == "" {
			addr = "no address"
		}
		m.msg = "Not kept: the previous settings are back (" + addr + ", " + msg.st.Source + ")."
	case msg.deadline != "" && msg.st.LastRollback == nil:
		// The request itself failed: the service still rolls back at the deadline.
		m.msg = "Roll back failed: " + msg.err.Error() + "; the previous settings come back at " + msg.deadline + "."
	default:
		m.msg = "Roll back: " + msg.err.Error()
	}
	return m, m.gatherCmd()
}

func (m Model) keyHostname(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.Type {
	case tea.KeyEsc:
		m.scr = scrStatus
		return m, nil
	case tea.KeyEnter:
		name, err := quantix.NormalizeHostname(strings.TrimSpace(m.host.value))
		if err != nil {
			m.hostErr = err.Error()
			return m, nil
		}
		cfg := m.cfg
		m.busy = "Saving hostname..."
		return m, func() tea.Msg { return hostMsg{name, SaveHostname(cfg, name)} }
	}
	m.host.key(k)
	m.hostErr = ""
	return m, nil
}

// SaveHostname writes name to QUANTIX-CFG atomically (init reads it at boot), then
// sets it on the running system and in the session's /etc/hostname.
func SaveHostname(cfg *Config, name string) error {
	if err := quantix.WriteFileAtomic(cfg.HostnameFile, []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	if err := cfg.SetHostname(name); err != nil {
		return fmt.Errorf("saved, but set the running hostname: %w", err)
	}
	if cfg.EtcHostname != "" {
		if err := os.WriteFile(cfg.EtcHostname, []byte(name+"\n"), 0o644); err != nil {
			return fmt.Errorf("saved, but %w", err)
		}
	}
	return nil
}

func (m Model) startChecks() (tea.Model, tea.Cmd) {
	m.scr, m.checks = scrNetTest, nil
	var st *network.Status
	if m.snap != nil {
		st = m.snap.Net
	}
	vdc := m.cfg.VDCURL
	if m.cfg.Image != quantix.ImageQvDC {
		vdc = ""
		if m.snap != nil && m.snap.Agent != nil {
			vdc = m.snap.Agent.VDC
		}
	}
	m.busy = "Testing the management network..."
	return m, func() tea.Msg { return checksMsg(TestNetwork(context.Background(), st, vdc, 3*time.Second)) }
}

func (m Model) serviceNames() []string {
	var out []string
	if m.snap != nil {
		for _, s := range m.snap.Services {
			out = append(out, s.Name)
		}
	}
	return out
}

func (m Model) logCmd() tea.Cmd {
	names := m.serviceNames()
	if m.svcSel >= len(names) {
		return nil
	}
	name, path := names[m.svcSel], filepath.Join(m.cfg.LogDir, names[m.svcSel]+".log")
	return func() tea.Msg {
		lines, err := TailLines(path, 40)
		return logMsg{name, lines, err}
	}
}

func (m Model) keyServices(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	names := m.serviceNames()
	if m.svcAsk {
		m.svcAsk = false
		if k.String() == "y" && m.svcSel < len(names) {
			name, in := names[m.svcSel], m.cfg.Init
			m.busy = "Restarting " + name + "..."
			return m, func() tea.Msg {
				// init stops it (SIGTERM, SIGKILL after its grace period) and starts it.
				ctx, cancel := context.WithTimeout(context.Background(), quantix.StopGrace+15*time.Second)
				defer cancel()
				return doneMsg{"Restart " + name, in.Restart(ctx, name), "done"}
			}
		}
		m.msg = "Restart cancelled."
		return m, nil
	}
	switch k.String() {
	case "esc":
		m.scr = scrStatus
	case "up", "k", "ctrl+p":
		if m.svcSel > 0 {
			m.svcSel--
			m.svcLog = nil
			return m, m.logCmd()
		}
	case "down", "j", "ctrl+n":
		if m.svcSel+1 < len(names) {
			m.svcSel++
			m.svcLog = nil
			return m, m.logCmd()
		}
	case "r":
		if m.svcSel < len(names) {
			m.msg = ""
			return m.requireAuth(action{kind: "restart", arg: names[m.svcSel]})
		}
	}
	return m, nil
}

func (m Model) keyPower(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if m.powerAs != "" {
		a := m.powerAs
		m.powerAs = ""
		if k.String() == "y" {
			in := m.cfg.Init
			m.busy = "Asking init to " + a + "..."
			return m, func() tea.Msg {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return doneMsg{strings.ToUpper(a[:1]) + a[1:], in.Power(ctx, a), "requested"}
			}
		}
		m.msg = "Cancelled."
		return m, nil
	}
	switch k.String() {
	case "esc":
		m.scr = scrStatus
	case "r":
		m.powerAs, m.msg = PowerReboot, ""
	case "o":
		m.powerAs, m.msg = PowerPoweroff, ""
	}
	return m, nil
}
