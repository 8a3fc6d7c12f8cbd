package installer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/agent"
	"github.com/quantix/quantix/services/console"
	"github.com/quantix/quantix/services/network"
)

// ErrAborted is returned when the operator declines the plan.
var ErrAborted = errors.New("install aborted by the operator")

// Terminal is a line-oriented console: questions go to every output, answers come
// from whichever input types a line first. Plain lines work on a serial console
// and on the VGA console alike.
type Terminal struct {
	out   io.Writer
	lines chan string
	ttys  []*os.File
}

// NewTerminal reads lines from each input and writes to out.
func NewTerminal(out io.Writer, inputs ...io.Reader) *Terminal {
	t := &Terminal{out: out, lines: make(chan string)}
	for _, in := range inputs {
		go func(r io.Reader) {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				t.lines <- strings.TrimRight(sc.Text(), "\r")
			}
		}(in)
	}
	return t
}

// OpenConsoles opens the kernel's active consoles (/sys/class/tty/console/active,
// e.g. "ttyS0 tty0") for an interview on all of them.
func OpenConsoles() (*Terminal, error) {
	b, err := os.ReadFile("/sys/class/tty/console/active")
	if err != nil {
		return nil, fmt.Errorf("consoles: %w", err)
	}
	var ws []io.Writer
	var rs []io.Reader
	var ttys []*os.File
	for _, name := range strings.Fields(string(b)) {
		f, err := os.OpenFile(filepath.Join("/dev", name), os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			continue
		}
		ttys = append(ttys, f)
		ws = append(ws, f)
		rs = append(rs, f)
	}
	if len(ttys) == 0 {
		return nil, fmt.Errorf("consoles: none of %q can be opened", strings.TrimSpace(string(b)))
	}
	t := NewTerminal(io.MultiWriter(ws...), rs...)
	t.ttys = ttys
	return t, nil
}

// Printf writes to the terminal.
func (t *Terminal) Printf(format string, a ...any) { fmt.Fprintf(t.out, format, a...) }

// ReadLine waits for one line.
func (t *Terminal) ReadLine(ctx context.Context) (string, error) {
	select {
	case l := <-t.lines:
		return strings.TrimSpace(l), nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Ask shows prompt (with def in brackets when set) and returns the answer or def.
func (t *Terminal) Ask(ctx context.Context, prompt, def string) (string, error) {
	if def != "" {
		t.Printf("%s [%s]: ", prompt, def)
	} else {
		t.Printf("%s: ", prompt)
	}
	l, err := t.ReadLine(ctx)
	if err != nil {
		return "", err
	}
	if l == "" {
		return def, nil
	}
	return l, nil
}

// AskSecret asks without echo on the terminals that support it.
func (t *Terminal) AskSecret(ctx context.Context, prompt string) (string, error) {
	var restore []func()
	for _, f := range t.ttys {
		fd := int(f.Fd())
		old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			continue
		}
		n := *old
		n.Lflag &^= unix.ECHO
		if unix.IoctlSetTermios(fd, unix.TCSETS, &n) == nil {
			restore = append(restore, func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) })
		}
	}
	defer func() {
		for _, r := range restore {
			r()
		}
	}()
	t.Printf("%s: ", prompt)
	l, err := t.ReadLine(ctx)
	t.Printf("\n")
	return l, err
}

// askValid repeats a question until check accepts the answer.
func (t *Terminal) askValid(ctx context.Context, prompt, def string, check func(string) error) (string, error) {
	for {
		v, err := t.Ask(ctx, prompt, def)
		if err != nil {
			return "", err
		}
		if err := check(v); err != nil {
			t.Printf("  %v\n", err)
			continue
		}
		return v, nil
	}
}

// Interview asks for everything an answer file holds and returns a validated
// answer and the chosen disk. The disk choice follows the same rules as the
// answer file, except that a disk holding data may be chosen when the operator
// types its name to confirm the wipe.
func Interview(ctx context.Context, t *Terminal, disks []*Disk, image string, p Protect) (*Answer, *Disk, error) {
	t.Printf("\n%s installer\n\nDisks:\n", Title(image))
	for i, d := range disks {
		note := ""
		if why := p.reason(d); why != "" {
			note = "  (not selectable: " + why + ")"
		}
		t.Printf("  %d) %s%s\n", i+1, d.Describe(), note)
	}
	for _, w := range StaleWarnings(disks, nil) {
		t.Printf("  note: %s\n", w)
	}
	if len(disks) == 0 {
		return nil, nil, fmt.Errorf("%w: no disks found", ErrRefused)
	}
	a := &Answer{Source: "interactive install", After: AfterReboot}
	var target *Disk
	for target == nil {
		v, err := t.Ask(ctx, fmt.Sprintf("Install on which disk (1-%d)", len(disks)), "")
		if err != nil {
			return nil, nil, err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > len(disks) {
			t.Printf("  type a number from 1 to %d\n", len(disks))
			continue
		}
		d := disks[n-1]
		// Chosen by number counts as named; data needs a typed confirmation below.
		if why := Refusal(d, true, true, p); why != "" {
			t.Printf("  %s cannot be used: %s\n", d.Path, why)
			continue
		}
		a.Target = Target{Path: d.Path}
		if !d.Empty {
			t.Printf("  %s is not empty: %s\n  EVERYTHING ON IT WILL BE ERASED.\n", d.Path, d.Contents())
			v, err := t.Ask(ctx, fmt.Sprintf("  Type %s to erase it, anything else to choose again", d.Name), "")
			if err != nil {
				return nil, nil, err
			}
			if v != d.Name {
				continue
			}
			a.Wipe = true
		}
		target = d
	}
	var err error
	if a.Hostname, err = t.askValid(ctx, "Hostname", "", func(s string) error { _, err := quantix.NormalizeHostname(s); return err }); err != nil {
		return nil, nil, err
	}
	mode, err := t.askValid(ctx, "Network: dhcp or static", network.ModeDHCP, func(s string) error {
		if s != network.ModeDHCP && s != network.ModeStatic {
			return errors.New("type dhcp or static")
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	ns := network.Settings{Interface: network.InterfaceAuto, Mode: mode}
	if ns.Interface, err = t.Ask(ctx, "Network interface (name, MAC or auto)", network.InterfaceAuto); err != nil {
		return nil, nil, err
	}
	if mode == network.ModeStatic {
		st := &network.StaticSettings{}
		if st.Address, err = t.Ask(ctx, "Address with prefix length (10.0.0.5/24)", ""); err != nil {
			return nil, nil, err
		}
		if st.Gateway, err = t.Ask(ctx, "Gateway (empty for none)", ""); err != nil {
			return nil, nil, err
		}
		ns.Static = st
		dns, err := t.Ask(ctx, "DNS servers (space separated, empty for none)", "")
		if err != nil {
			return nil, nil, err
		}
		ns.DNS = strings.Fields(dns)
	}
	a.Network = &ns
	switch image {
	case quantix.ImageQuantixOS:
		a.Agent = &agent.FileConfig{}
		if a.Agent.ControlPlane, err = t.Ask(ctx, "vDC URL (http://10.0.0.2:8080)", ""); err != nil {
			return nil, nil, err
		}
		if a.Agent.JoinToken, err = t.AskSecret(ctx, "Join token"); err != nil {
			return nil, nil, err
		}
	case quantix.ImageQvDC:
		a.VDC = &VDCAnswer{}
		if a.VDC.AdminToken, err = t.AskSecret(ctx, "Admin token (at least 16 characters; empty: generated and shown at first boot)"); err != nil {
			return nil, nil, err
		}
	}
	for {
		pw, err := t.AskSecret(ctx, "Console password (at least 8 characters; empty: none)")
		if err != nil {
			return nil, nil, err
		}
		if pw == "" {
			break
		}
		if err := console.CheckNewPassword(pw); err != nil {
			t.Printf("  %v\n", err)
			continue
		}
		again, err := t.AskSecret(ctx, "Console password again")
		if err != nil {
			return nil, nil, err
		}
		if pw != again {
			t.Printf("  the passwords differ\n")
			continue
		}
		a.ConsolePassword = pw
		break
	}
	if err := a.Validate(image); err != nil {
		return nil, nil, err
	}
	return a, target, nil
}

// Confirm asks the operator to type the disk name (or "yes" for an empty disk)
// before anything is written.
func Confirm(ctx context.Context, t *Terminal, d *Disk) error {
	v, err := t.Ask(ctx, fmt.Sprintf("Write this plan to %s? Type %s to install, anything else aborts", d.Path, d.Name), "")
	if err != nil {
		return err
	}
	if v != d.Name {
		return ErrAborted
	}
	return nil
}
