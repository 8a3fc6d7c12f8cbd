// Package console is the Quantix console UI (DCUI), run by qx-console on tty1 and on
// a serial port: a terminal UI (bubbletea) that shows what the machine is (image,
// hostname, management address and its source, the URL to open, registration or
// node counts, services, uptime, whether anything persists) and lets an operator
// who knows the console password fix the management network (through the network
// service's safe apply), set the hostname, test the network, restart a service,
// upgrade from a release bundle on a USB stick or CD (staged by qx-init, then a
// reboot) and reboot or power off (through qx-init). It never offers a shell.
//
// The screens are plain ASCII drawn for 80x24 with no colour, mouse or wide glyph,
// so they work on a VGA console and on a vt100 serial terminal alike. Each screen is
// its own model (screen_*.go: its state, keys, results and drawing); Model
// (model.go) holds what they share, routes every message to the screen it belongs
// to and draws the frame around them (view.go). testdata/screens.golden holds every
// screen as drawn, so a change to what the operator sees shows in review.
package console

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	tea "github.com/charmbracelet/bubbletea"
	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
)

// Config is the console's configuration; every path can be moved for tests.
type Config struct {
	// Image and Version name the running image; empty means read ImageConfig.
	Image, Version string
	// ImageConfig is qx-init's image config (quantix.ImageConfigPath): image, version and
	// the service list.
	ImageConfig string

	// TTY is the terminal device to open and make the controlling terminal
	// (/dev/tty1, /dev/ttyS1); empty means use In and Out as they are.
	TTY string
	// Baud sets the line speed of a serial TTY (0 leaves it as it is).
	Baud int
	In   io.Reader
	Out  io.Writer

	PasswordFile  string // DefaultPasswordFile
	HostnameFile  string // quantix.HostnameFile
	EtcHostname   string // /etc/hostname (session copy; "" skips)
	NetworkSocket string // quantix.NetworkSocket
	NetworkConfig string // quantix.NetworkConfig: the form starts from it
	InitSocket    string // quantix.InitSocket
	LogDir        string // quantix.LogDir
	ConfigDir     string // quantix.ConfigDir: QUANTIX-CFG's mount point
	MountInfo     string // /proc/self/mountinfo
	UptimePath    string // /proc/uptime
	ProcRoot      string // /proc
	SysBlock      string // /sys/class/block: the disks the Upgrade screen looks on
	DevDir        string // /dev
	MediaDir      string // MediaDir: where it mounts them
	// VolumeLabel is the boot medium's label (the image config's volume_label):
	// the Upgrade screen does not look for bundles on it.
	VolumeLabel string

	// AgentURL is the local agent's status endpoint base (Quantix-OS), e.g.
	// http://127.0.0.1:9101; its port is also the one in the URL shown.
	AgentURL string
	// VDCURL is the local vDC (QvDC), e.g. http://127.0.0.1:8080.
	VDCURL string
	// VDCUIURL is the vDC web UI's base URL (QvDC), e.g. https://127.0.0.1:8443;
	// empty means the ui= address of the vDC's ready marker in its log. Only its
	// scheme and port are used: the URL shown is on the management address.
	VDCUIURL string

	// Refresh is the status refresh period (2s); ConfirmTimeout how long a network
	// change waits for confirmation before it rolls back (60s); IdleLock how long
	// the console stays unlocked without a key press (5m).
	Refresh        time.Duration
	ConfirmTimeout time.Duration
	IdleLock       time.Duration
	// Repaint, when set, redraws the whole screen that often: on a VGA console the
	// kernel and init print over the screen (console=tty0), which only a full
	// redraw repairs. Ctrl-L does it on demand.
	Repaint time.Duration

	// SetHostname applies a hostname to the running system (sethostname(2)).
	SetHostname func(string) error
	// Init is the supervisor; nil means an InitClient on InitSocket.
	Init Init
	// Stdout receives the ready marker once the terminal is open; nil discards it.
	Stdout io.Writer
	// Name is the service name in the ready marker: init matches it against its
	// own name for the service (one console per terminal: "console-tty1", ...).
	Name string
}

func (c *Config) fill() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.ImageConfig, quantix.ImageConfigPath)
	def(&c.PasswordFile, DefaultPasswordFile)
	def(&c.HostnameFile, quantix.HostnameFile)
	def(&c.NetworkSocket, quantix.NetworkSocket)
	def(&c.NetworkConfig, quantix.NetworkConfig)
	def(&c.InitSocket, quantix.InitSocket)
	def(&c.LogDir, quantix.LogDir)
	def(&c.ConfigDir, quantix.ConfigDir)
	def(&c.MountInfo, "/proc/self/mountinfo")
	def(&c.UptimePath, "/proc/uptime")
	def(&c.ProcRoot, "/proc")
	def(&c.SysBlock, "/sys/class/block")
	def(&c.DevDir, "/dev")
	def(&c.MediaDir, MediaDir)
	if c.Refresh <= 0 {
		c.Refresh = 2 * time.Second
	}
	if c.ConfirmTimeout <= 0 {
		c.ConfirmTimeout = 60 * time.Second
	}
	if c.Name == "" {
		c.Name = "console"
	}
	if c.IdleLock <= 0 {
		c.IdleLock = 5 * time.Minute
	}
	if c.SetHostname == nil {
		c.SetHostname = func(name string) error { return unix.Sethostname([]byte(name)) }
	}
}

// Service is one console on one terminal.
type Service struct {
	cfg       Config
	log       *slog.Logger
	known     []KnownService
	configErr error
}

// New checks cfg and reads the image config (image, version, services).
func New(cfg Config, log *slog.Logger) (*Service, error) {
	cfg.fill()
	if cfg.TTY == "" && (cfg.In == nil || cfg.Out == nil) {
		return nil, errors.New("console: no terminal: set a tty device, or In and Out")
	}
	s := &Service{cfg: cfg, log: log}
	ic, err := quantix.LoadImageConfig(cfg.ImageConfig)
	if err != nil {
		s.configErr = err
		if cfg.Image == "" {
			log.Warn("no image config", "path", cfg.ImageConfig, "err", err)
		}
	} else {
		if s.cfg.Image == "" {
			s.cfg.Image = ic.Image
		}
		if s.cfg.Version == "" {
			s.cfg.Version = ic.Version
		}
		if s.cfg.VolumeLabel == "" {
			s.cfg.VolumeLabel = ic.VolumeLabel
		}
		for _, sv := range ic.Services {
			s.known = append(s.known, KnownService{Name: sv.Name, Command: sv.Command})
		}
	}
	if s.cfg.Image == "" {
		s.cfg.Image = "unknown"
	}
	if s.cfg.Version == "" {
		s.cfg.Version = quantix.Version
	}
	if s.cfg.Image == quantix.ImageQvDC && s.cfg.VDCURL == "" {
		s.cfg.VDCURL = "http://127.0.0.1:8080"
	}
	if s.cfg.Init == nil {
		s.cfg.Init = InitClient{Socket: cfg.InitSocket, Known: s.known, ProcRoot: cfg.ProcRoot, LogDir: cfg.LogDir}
	}
	return s, nil
}

// Run opens the terminal and runs the UI until ctx ends. A terminal that goes away
// is an error (init restarts the console).
func (s *Service) Run(ctx context.Context) error {
	in, out := s.cfg.In, s.cfg.Out
	if s.cfg.TTY != "" {
		f, err := OpenTTY(s.cfg.TTY, s.cfg.Baud)
		if err != nil {
			return err
		}
		defer f.Close()
		restore, err := makeRaw(int(f.Fd()))
		if err != nil {
			return fmt.Errorf("console on %s: %w", s.cfg.TTY, err)
		}
		defer restore()
		// The UI reads through seqReader (escape sequences kept whole), so it does
		// not see a terminal on its input and leaves raw mode to us.
		in, out = newSeqReader(f), f
	}
	if s.cfg.Stdout != nil {
		tty := s.cfg.TTY
		if tty == "" {
			tty = "stdio"
		}
		fmt.Fprintln(s.cfg.Stdout, quantix.ReadyMarker(s.cfg.Name, "tty", tty))
	}
	m := NewModel(&s.cfg)
	p := tea.NewProgram(m, tea.WithInput(in), tea.WithOutput(out), tea.WithAltScreen(),
		tea.WithContext(ctx), tea.WithoutSignalHandler())
	s.log.Info("console started", "tty", s.cfg.TTY, "image", s.cfg.Image)
	_, err := p.Run()
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("console on %s: %w", s.cfg.TTY, err)
	}
	return errors.New("console ended")
}

// Config returns the configuration in use, defaults filled in.
func (s *Service) Config() Config { return s.cfg }

// ErrNoTTY is wrapped by OpenTTY's error when the terminal device does not exist
// on this machine (qx-console exits 78: a configuration error).
var ErrNoTTY = errors.New("no such terminal on this machine")

// OpenTTY opens a terminal device for the console: it makes this process a session
// leader, opens the device as its controlling terminal (taking it over from any
// other session), sets a serial line's speed, and gives a terminal without a size
// (a serial line) 80x24.
func OpenTTY(path string, baud int) (*os.File, error) {
	// Open first (not yet a session leader, so the open does not take the terminal),
	// so a wrong path changes nothing about this process.
	f, err := os.OpenFile(filepath.Clean(path), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EIO) {
			// No such port on this machine (a serial UART that is not there answers
			// EIO): restarting cannot help, the configuration names a wrong port.
			return nil, fmt.Errorf("open tty %s: %w: %w", path, ErrNoTTY, err)
		}
		return nil, fmt.Errorf("open tty %s: %w", path, err)
	}
	if serialPortMissing(int(f.Fd())) {
		f.Close()
		return nil, fmt.Errorf("open tty %s: %w: the kernel found no UART at this port", path, ErrNoTTY)
	}
	if _, err := unix.Setsid(); err != nil {
		// EPERM: already a process group leader; fine if we lead the session.
		if sid, _ := unix.Getsid(0); sid != os.Getpid() {
			f.Close()
			return nil, fmt.Errorf("open tty %s: setsid: %w", path, err)
		}
	}
	fd := int(f.Fd())
	if err := unix.IoctlSetInt(fd, unix.TIOCSCTTY, 1); err != nil {
		f.Close()
		return nil, fmt.Errorf("open tty %s: make it the controlling terminal: %w", path, err)
	}
	if baud > 0 {
		if err := setBaud(fd, baud); err != nil {
			f.Close()
			return nil, fmt.Errorf("open tty %s: %w", path, err)
		}
	}
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err == nil && (ws.Row == 0 || ws.Col == 0) {
		_ = unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80})
	}
	_ = unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
	return f, nil
}

var baudRates = map[int]uint32{
	9600: unix.B9600, 19200: unix.B19200, 38400: unix.B38400, 57600: unix.B57600,
	115200: unix.B115200, 230400: unix.B230400,
}

func setBaud(fd, baud int) error {
	b, ok := baudRates[baud]
	if !ok {
		return fmt.Errorf("baud %d: use 9600, 19200, 38400, 57600, 115200 or 230400", baud)
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("baud %d: %w", baud, err)
	}
	t.Cflag &^= unix.CBAUD | unix.CSIZE | unix.PARENB | unix.CSTOPB
	t.Cflag |= b | unix.CS8 | unix.CREAD | unix.CLOCAL
	t.Ispeed, t.Ospeed = b, b
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("baud %d: %w", baud, err)
	}
	return nil
}

// makeRaw puts the terminal in raw mode (cfmakeraw: no echo, no line editing, no
// signals from keys, 8 bit) and returns the function that restores it.
func makeRaw(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("raw mode: %w", err)
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, fmt.Errorf("raw mode: %w", err)
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

// serialPortMissing reports whether fd is a serial port the kernel knows of but
// found no UART for (type PORT_UNKNOWN): Linux creates /dev/ttyS0-3 whether the
// ports exist or not, and opening a missing one succeeds; only its I/O fails. A
// terminal that is no serial port (a VT, a pty) is not missing.
func serialPortMissing(fd int) bool {
	// struct serial_struct begins with int type; the buffer covers the whole
	// struct (72 bytes on amd64) with room to spare.
	var ss [128]byte
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGSERIAL, uintptr(unsafe.Pointer(&ss[0]))); errno != 0 {
		return false
	}
	const portUnknown = 0
	return int32(binary.NativeEndian.Uint32(ss[:4])) == portUnknown
}
