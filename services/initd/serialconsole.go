package initd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/quantix/quantix"
)

// The serial console, for machines managed over a serial line: besides the image's
// console on tty1, init runs a second console service on a serial port when one is
// configured, by the QUANTIX-CFG file ConsoleConfig or the kernel parameter
// quantix.console=.
const (
	// ConsoleConfig is the operator's console settings on QUANTIX-CFG:
	//
	//	serial = "ttyS1"   # ttyS<n>, ttyUSB<n> or hvc<n>; "" = no serial console
	//	baud = 115200      # optional; 9600 .. 230400
	ConsoleConfig = quantix.ConfigDir + "/console/console.toml"
	// SerialConsoleService is init's name for the serial console service; it is
	// also the service name in its ready marker.
	SerialConsoleService = "console-serial"
	// ConsoleCommand runs a console when the image defines none to copy.
	ConsoleCommand = "/bbin/qx-console"
	// DefaultSerialBaud is the line speed when none is given.
	DefaultSerialBaud = 115200
)

// SerialBaudRates are the line speeds qx-console can set.
var SerialBaudRates = []int{9600, 19200, 38400, 57600, 115200, 230400}

// serialTTY is what a serial console may run on: 8250/16550 UARTs, USB serial
// adapters and hypervisor consoles. Never a virtual terminal or a pty.
var serialTTY = regexp.MustCompile(`^(ttyS|ttyUSB|hvc)[0-9]{1,3}$`)

// SerialConsole is a configured serial console.
type SerialConsole struct {
	// TTY is the device name without /dev/ ("ttyS1"); empty means none.
	TTY  string
	Baud int
	// Source says where the port came from (the file, or the kernel parameter).
	Source string
	// KernelConsole is set when the kernel prints its messages on this port too
	// (it is in /proc/consoles): the console then repaints its screen regularly,
	// as the one on tty1 does.
	KernelConsole bool
}

// DefaultRepaint is how often a console that shares its terminal with the kernel's
// messages redraws, unless the image's console says otherwise.
const DefaultRepaint = "10s"

// KernelConsoles lists the terminals the kernel prints its messages on, from
// /proc/consoles ("ttyS0", "tty0").
func KernelConsoles(procConsoles string) []string {
	b, err := os.ReadFile(procConsoles)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out
}

// consoleFile is ConsoleConfig's schema. Pointers tell "absent" from "empty".
type consoleFile struct {
	Serial *string `toml:"serial"`
	Baud   *int    `toml:"baud"`
}

// ChooseSerialConsole applies docs/design.md §3 precedence to the serial console: the
// image defines none, quantix.console=<tty>[,<baud>] on the kernel command line
// sets one, and the QUANTIX-CFG file (path, usually ConsoleConfig) wins key by key
// over it (serial = "" switches a kernel-line console off). A missing file is no
// error; any bad value is, naming the file or parameter, and then no serial
// console is configured at all (the image's own consoles are not affected).
func ChooseSerialConsole(path string, cmdline quantix.Cmdline) (SerialConsole, error) {
	var sc SerialConsole
	if v, ok := cmdline.Get(quantix.ParamConsole); ok {
		tty, baud, err := parseConsoleParam(v)
		if err != nil {
			return SerialConsole{}, fmt.Errorf("kernel command line %s=%s: %w", quantix.ParamConsole, v, err)
		}
		sc = SerialConsole{TTY: tty, Baud: baud, Source: "kernel command line " + quantix.ParamConsole}
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return SerialConsole{}, fmt.Errorf("console settings: %w", err)
	default:
		var f consoleFile
		if err := quantix.DecodeTOML(path, data, &f); err != nil {
			return SerialConsole{}, err
		}
		if f.Serial != nil {
			tty, err := checkSerialTTY(*f.Serial)
			if err != nil {
				return SerialConsole{}, fmt.Errorf("%s: serial: %w", path, err)
			}
			sc.TTY, sc.Baud = tty, 0
		}
		if f.Baud != nil {
			if err := checkBaud(*f.Baud); err != nil {
				return SerialConsole{}, fmt.Errorf("%s: baud: %w", path, err)
			}
			if sc.TTY == "" {
				return SerialConsole{}, fmt.Errorf("%s: baud is set but no serial port is: add serial = \"ttyS1\" (or the port you use)", path)
			}
			sc.Baud = *f.Baud
		}
		if f.Serial != nil || f.Baud != nil {
			sc.Source = path
		}
	}
	if sc.TTY == "" {
		return SerialConsole{}, nil
	}
	if sc.Baud == 0 {
		sc.Baud = DefaultSerialBaud
	}
	return sc, nil
}

// parseConsoleParam parses quantix.console=<tty>[,<baud>], accepting the kernel
// console= habit of a trailing "n8" (no parity, 8 bits: the only framing used).
func parseConsoleParam(v string) (tty string, baud int, err error) {
	name, speed, hasSpeed := strings.Cut(v, ",")
	if tty, err = checkSerialTTY(name); err != nil {
		return "", 0, err
	}
	if tty == "" {
		return "", 0, errors.New("no serial port named (use e.g. ttyS1 or ttyS1,115200)")
	}
	if !hasSpeed {
		return tty, 0, nil
	}
	digits := strings.TrimSuffix(speed, "n8")
	baud, err = strconv.Atoi(digits)
	if err != nil {
		return "", 0, fmt.Errorf("speed %q is not a number like 115200", speed)
	}
	if err := checkBaud(baud); err != nil {
		return "", 0, err
	}
	return tty, baud, nil
}

// checkSerialTTY accepts "ttyS1" or "/dev/ttyS1" and returns "ttyS1"; "" stays "".
func checkSerialTTY(v string) (string, error) {
	name := strings.TrimPrefix(v, "/dev/")
	if name == "" {
		return "", nil
	}
	if !serialTTY.MatchString(name) {
		return "", fmt.Errorf("%q is not a serial port: use ttyS<n>, ttyUSB<n> or hvc<n> (tty1 already has a console)", v)
	}
	return name, nil
}

func checkBaud(b int) error {
	if !slices.Contains(SerialBaudRates, b) {
		return fmt.Errorf("%d is not a supported speed: use one of %s", b, joinInts(SerialBaudRates))
	}
	return nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// consoleFlagsOwn are the flags the serial console sets itself instead of copying
// them from the image's console (each takes a value).
var consoleFlagsOwn = []string{"name", "tty", "baud", "repaint"}

// WithSerialConsole returns services plus the serial console service for sc, run
// as devDir/<tty>. Its command and its other flags (the agent or vDC URL) are
// copied from the image's first console service, so both consoles show the
// same thing (a console is a qx-console service, or one with a --tty flag);
// without one it runs ConsoleCommand. A console-serial service the
// image defines itself is replaced (the configuration wins over the image). A tty
// another service already runs a console on is refused. services is not modified.
func WithSerialConsole(services []quantix.Service, sc SerialConsole, devDir string) ([]quantix.Service, error) {
	if sc.TTY == "" {
		return services, nil
	}
	dev := filepath.Join(devDir, sc.TTY)
	var out []quantix.Service
	var base *quantix.Service
	for i, s := range services {
		if s.Name == SerialConsoleService {
			continue
		}
		if tty := flagValue(s.Args, "tty"); tty != "" && filepath.Clean(tty) == dev {
			return nil, fmt.Errorf("serial console on %s: service %s already runs a console there", dev, s.Name)
		}
		if base == nil && (filepath.Base(s.Command) == "qx-console" || flagValue(s.Args, "tty") != "") {
			base = &services[i]
		}
		out = append(out, s)
	}
	svc := quantix.Service{
		Name: SerialConsoleService, Command: ConsoleCommand,
		Args:  []string{"--name", SerialConsoleService, "--tty", dev, "--baud", strconv.Itoa(sc.Baud)},
		Ready: quantix.ReadyOnMarker,
	}
	if sc.KernelConsole {
		repaint := DefaultRepaint
		if base != nil && flagValue(base.Args, "repaint") != "" {
			repaint = flagValue(base.Args, "repaint")
		}
		svc.Args = append(svc.Args, "--repaint", repaint)
	}
	if base != nil {
		svc.Command = base.Command
		svc.Args = append(svc.Args, withoutFlags(base.Args, consoleFlagsOwn)...)
		svc.BootPriority = base.BootPriority
	}
	return append(out, svc), nil
}

// flagValue returns the value of --name v or --name=v (one or two dashes) in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		f := strings.TrimLeft(a, "-")
		if f == a {
			continue
		}
		if k, v, ok := strings.Cut(f, "="); ok && k == name {
			return v
		}
		if f == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// withoutFlags drops the value-taking flags names (and their values) from args.
func withoutFlags(args, names []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		f := strings.TrimLeft(a, "-")
		if f != a {
			k, _, hasValue := strings.Cut(f, "=")
			if slices.Contains(names, k) {
				if !hasValue {
					i++ // the value is the next argument
				}
				continue
			}
		}
		out = append(out, a)
	}
	return out
}
