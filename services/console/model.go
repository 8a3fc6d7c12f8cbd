package console

import (
	"context"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// screen is which screen shows; each has its model in a screen_*.go file.
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
	scrUpgrade
)

// action is what a key asks of the top-level model: open another screen, or lock
// the console. The ones that change something need the password first.
type action string

const (
	actNetwork  action = "network"  // edit the management network (password)
	actConfirm  action = "confirm"  // keep or roll back a pending change (password)
	actHostname action = "hostname" // set the hostname (password)
	actPower    action = "power"    // reboot or power off (password)
	actUpgrade  action = "upgrade"  // stage a release from media, reboot into it (password)
	actRestart  action = "restart"  // restart the selected service (password)
	actTest     action = "test"     // test the management network
	actServices action = "services" // list the services and their logs
	actLock     action = "lock"     // lock the console now
)

// ui is what every screen reads and what the top-level model draws around the
// screens (header, footer); a screen's key and result handlers change scr (to
// leave), busy (while a command runs) and msg (what happened).
type ui struct {
	cfg           *Config
	width, height int
	now           time.Time
	snap          *Snapshot
	scr           screen
	unlocked      bool
	busy          string // a command is running: what it does
	msg           string // footer message
}

// Model is the console UI: a pure bubbletea model (all I/O happens in commands),
// so tests drive Update with key messages and read View. It holds what the screens
// share (ui), the clock and the password lock, and routes every key and result to
// the screen it belongs to; each screen keeps its own state.
type Model struct {
	ui
	ticks   int
	lastKey time.Time

	status  statusScreen
	auth    passwordScreen
	net     networkScreen
	confirm confirmScreen
	host    hostnameScreen
	test    netTestScreen
	svc     servicesScreen
	power   powerScreen
	upg     upgradeScreen
}

// NewModel returns the console model for cfg (defaults already filled in).
func NewModel(cfg *Config) Model {
	return Model{ui: ui{cfg: cfg, width: 80, height: 24, now: time.Now()},
		auth: newPasswordScreen(), net: newNetworkScreen(), host: newHostnameScreen()}
}

type tickMsg time.Time
type snapMsg struct{ s *Snapshot }

// doneMsg is the result of a request to init (restart, power): the footer says it.
type doneMsg struct {
	what string
	err  error
	// ok is the message on success ("requested", "done").
	ok string
}

func tick() tea.Cmd { return tea.Tick(time.Second, func(t time.Time) tea.Msg { return tickMsg(t) }) }

func (u *ui) gatherCmd() tea.Cmd {
	cfg := u.cfg
	return func() tea.Msg { return snapMsg{gather(context.Background(), cfg)} }
}

// Init starts the refresh clock and the first status gathering.
func (m Model) Init() tea.Cmd { return tea.Batch(tick(), m.gatherCmd()) }

// Update handles one message: the clock, the status snapshot and the keys here,
// the result of a command in the screen that started it.
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
				cmds = append(cmds, m.svc.logCmd(&m.ui))
			}
		}
		if r := int(m.cfg.Repaint / time.Second); r > 0 && m.ticks%r == 0 {
			cmds = append(cmds, tea.ClearScreen)
		}
		if m.unlocked && m.now.Sub(m.lastKey) > m.cfg.IdleLock {
			cmds = append(cmds, m.lock("locked after inactivity"))
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
		if m.auth.verified(&m.ui, msg.err) {
			return m.perform(m.auth.pending)
		}
		return m, nil
	case setPwMsg:
		if m.auth.saved(&m.ui, msg.err) {
			return m.perform(m.auth.pending)
		}
		return m, nil
	case applyMsg:
		m.busy = ""
		if res := m.net.applied(&m.ui, msg); res != nil {
			m.confirm.show(&m.ui, res)
		}
		return m, m.gatherCmd()
	case rollbackMsg:
		return m, m.confirm.rolledBack(&m.ui, msg)
	case confirmMsg:
		return m, m.confirm.confirmed(&m.ui, msg)
	case hostMsg:
		return m, m.host.saved(&m.ui, msg)
	case checksMsg:
		m.test.done(&m.ui, msg)
		return m, nil
	case logMsg:
		m.svc.logged(&m.ui, msg)
		return m, nil
	case slotsMsg:
		m.upg.slotsAnswered(msg)
		return m, nil
	case mediaMsg:
		m.upg.scannedMedia(&m.ui, msg)
		return m, nil
	case stageMsg:
		return m, m.upg.staged(&m.ui, msg)
	case releasedMsg:
		m.upg.released(&m.ui, msg)
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

// lock forgets the password: the screens that change something close (the
// Upgrade screen unmounts its media).
func (m *Model) lock(why string) tea.Cmd {
	m.unlocked = false
	var cmd tea.Cmd
	switch m.scr {
	case scrNetwork, scrHostname, scrPower, scrPassword, scrSetPassword:
		m.scr = scrStatus
	case scrUpgrade:
		cmd = m.upg.close(&m.ui)
	case scrServices:
		m.svc.ask = false
	}
	m.msg = why
	return cmd
}

// key hands a key to the screen that shows.
func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if m.busy != "" {
		return m, nil // one thing at a time; the screen says what is running
	}
	var cmd tea.Cmd
	switch m.scr {
	case scrStatus:
		return m.open(m.status.key(&m.ui, k))
	case scrPassword, scrSetPassword:
		cmd = m.auth.key(&m.ui, k)
	case scrNetwork:
		cmd = m.net.key(&m.ui, k)
	case scrConfirm:
		cmd = m.confirm.key(&m.ui, k)
	case scrHostname:
		cmd = m.host.key(&m.ui, k)
	case scrNetTest:
		cmd = m.test.key(&m.ui, k)
	case scrServices:
		var a action
		cmd, a = m.svc.key(&m.ui, k)
		if a != "" {
			return m.open(a)
		}
	case scrPower:
		cmd = m.power.key(&m.ui, k)
	case scrUpgrade:
		cmd = m.upg.key(&m.ui, k)
	}
	return m, cmd
}

// open does what a key asked for; the actions that change something ask for the
// password first.
func (m Model) open(a action) (tea.Model, tea.Cmd) {
	switch a {
	case "":
		return m, nil
	case actLock:
		if m.unlocked {
			return m, m.lock("Console locked.")
		}
		return m, nil
	case actTest:
		return m, m.test.start(&m.ui)
	case actServices:
		return m, m.svc.open(&m.ui)
	}
	return m.requireAuth(a)
}

// requireAuth runs a after the password was given (or set, on first use).
func (m Model) requireAuth(a action) (tea.Model, tea.Cmd) {
	if m.unlocked {
		return m.perform(a)
	}
	m.auth.open(&m.ui, a)
	return m, nil
}

// perform opens the screen of a password-protected action.
func (m Model) perform(a action) (tea.Model, tea.Cmd) {
	m.auth.pending = ""
	switch a {
	case actNetwork:
		m.net.open(&m.ui)
	case actConfirm:
		m.confirm.open(&m.ui)
	case actHostname:
		m.host.open(&m.ui)
	case actPower:
		m.power.open(&m.ui)
	case actRestart:
		m.svc.askRestart(&m.ui)
	case actUpgrade:
		return m, m.upg.open(&m.ui)
	default:
		m.scr = scrStatus
	}
	return m, nil
}
