package initd

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/google/go-cmp/cmp"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/images/spec"
)

func TestChooseSerialConsole(t *testing.T) {
	tests := []struct {
		name    string
		file    string // "" = no file
		cmdline string
		want    SerialConsole
		wantErr []string // substrings of the error
	}{
		{name: "nothing configured", cmdline: "console=ttyS0,115200 quiet"},
		{name: "kernel parameter", cmdline: "quantix.console=ttyS1",
			want: SerialConsole{TTY: "ttyS1", Baud: 115200, Source: "kernel command line quantix.console"}},
		{name: "kernel parameter with speed", cmdline: "quantix.console=ttyUSB0,57600",
			want: SerialConsole{TTY: "ttyUSB0", Baud: 57600, Source: "kernel command line quantix.console"}},
		{name: "kernel parameter console= habit", cmdline: "quantix.console=/dev/hvc0,9600n8",
			want: SerialConsole{TTY: "hvc0", Baud: 9600, Source: "kernel command line quantix.console"}},
		{name: "file", file: "serial = \"ttyS1\"\n",
			want: SerialConsole{TTY: "ttyS1", Baud: 115200, Source: "FILE"}},
		{name: "file with baud", file: "serial = \"ttyS2\"\nbaud = 38400\n",
			want: SerialConsole{TTY: "ttyS2", Baud: 38400, Source: "FILE"}},
		{name: "file wins over kernel parameter", file: "serial = \"ttyS2\"\n", cmdline: "quantix.console=ttyS1,9600",
			want: SerialConsole{TTY: "ttyS2", Baud: 115200, Source: "FILE"}},
		{name: "file baud only changes the kernel parameter's speed", file: "baud = 230400\n", cmdline: "quantix.console=ttyS1,9600",
			want: SerialConsole{TTY: "ttyS1", Baud: 230400, Source: "FILE"}},
		{name: "file switches the kernel parameter's console off", file: "serial = \"\"\n", cmdline: "quantix.console=ttyS1"},
		{name: "empty file keeps the kernel parameter", file: "# nothing\n", cmdline: "quantix.console=ttyS1",
			want: SerialConsole{TTY: "ttyS1", Baud: 115200, Source: "kernel command line quantix.console"}},
		{name: "bad file wins over a good kernel parameter", file: "serial = \"tty1\"\n", cmdline: "quantix.console=ttyS1",
			wantErr: []string{"console.toml: serial:", `"tty1" is not a serial port`, "ttyS<n>"}},
		{name: "virtual terminal refused", cmdline: "quantix.console=tty2",
			wantErr: []string{"kernel command line quantix.console=tty2", `"tty2" is not a serial port`}},
		{name: "pty refused", file: "serial = \"/dev/pts/0\"\n", wantErr: []string{"console.toml: serial:", "/dev/pts/0"}},
		{name: "path trick refused", file: "serial = \"ttyS1/../tty1\"\n", wantErr: []string{"is not a serial port"}},
		{name: "bad speed in file", file: "serial = \"ttyS1\"\nbaud = 12345\n",
			wantErr: []string{"console.toml: baud: 12345 is not a supported speed", "115200"}},
		{name: "bad speed on the kernel line", cmdline: "quantix.console=ttyS1,fast",
			wantErr: []string{"quantix.console=ttyS1,fast", `speed "fast" is not a number`}},
		{name: "empty kernel parameter", cmdline: "quantix.console=", wantErr: []string{"no serial port named"}},
		{name: "baud without serial", file: "baud = 9600\n", wantErr: []string{"baud is set but no serial port is"}},
		{name: "unknown key", file: "serial = \"ttyS1\"\nparity = \"none\"\n", wantErr: []string{"console.toml:2", "unknown key", "parity"}},
		{name: "wrong type", file: "serial = 1\n", wantErr: []string{"console.toml"}},
		{name: "syntax error", file: "serial = ttyS1\n", wantErr: []string{"console.toml:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.toml")
			if tt.file != "" {
				if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ChooseSerialConsole(path, quantix.ParseCmdline(tt.cmdline))
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("ChooseSerialConsole = %+v, want an error naming %q", got, tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("ChooseSerialConsole error %q does not name %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ChooseSerialConsole: %v", err)
			}
			if tt.want.Source == "FILE" {
				tt.want.Source = path
			}
			if got != tt.want {
				t.Errorf("ChooseSerialConsole = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestWithSerialConsole(t *testing.T) {
	tty1 := quantix.Service{Name: "console-tty1", Command: "/bbin/qx-console",
		Args: []string{"--name", "console-tty1", "--tty", "/dev/tty1", "--repaint", "10s", "--agent-url", "http://127.0.0.1:9101"}}
	network := quantix.Service{Name: "network", Command: "/bbin/qx-net", Args: []string{"serve"}}
	sc := SerialConsole{TTY: "ttyS1", Baud: 115200}
	tests := []struct {
		name     string
		services []quantix.Service
		sc       SerialConsole
		want     []quantix.Service
		wantErr  string
	}{
		{name: "none configured", services: []quantix.Service{network, tty1}, want: []quantix.Service{network, tty1}},
		{name: "copies the image console's command and other flags",
			services: []quantix.Service{network, tty1}, sc: sc,
			want: []quantix.Service{network, tty1, {Name: "console-serial", Command: "/bbin/qx-console", Ready: quantix.ReadyOnMarker,
				Args: []string{"--name", "console-serial", "--tty", "/dev/ttyS1", "--baud", "115200", "--agent-url", "http://127.0.0.1:9101"}}}},
		{name: "without an image console",
			services: []quantix.Service{network}, sc: SerialConsole{TTY: "hvc0", Baud: 9600},
			want: []quantix.Service{network, {Name: "console-serial", Command: ConsoleCommand, Ready: quantix.ReadyOnMarker,
				Args: []string{"--name", "console-serial", "--tty", "/dev/hvc0", "--baud", "9600"}}}},
		{name: "replaces the image's own console-serial",
			services: []quantix.Service{{Name: "console-serial", Command: "/bbin/qx-console", Args: []string{"--name", "console-serial", "--tty", "/dev/ttyS1", "--baud", "9600"}}, tty1},
			sc:       SerialConsole{TTY: "ttyS1", Baud: 115200},
			want: []quantix.Service{tty1, {Name: "console-serial", Command: "/bbin/qx-console", Ready: quantix.ReadyOnMarker,
				Args: []string{"--name", "console-serial", "--tty", "/dev/ttyS1", "--baud", "115200", "--agent-url", "http://127.0.0.1:9101"}}}},
		{name: "kernel messages on the port: repaint as the image console does",
			services: []quantix.Service{network, tty1}, sc: SerialConsole{TTY: "ttyS0", Baud: 115200, KernelConsole: true},
			want: []quantix.Service{network, tty1, {Name: "console-serial", Command: "/bbin/qx-console", Ready: quantix.ReadyOnMarker,
				Args: []string{"--name", "console-serial", "--tty", "/dev/ttyS0", "--baud", "115200", "--repaint", "10s", "--agent-url", "http://127.0.0.1:9101"}}}},
		{name: "kernel messages on the port, no image console: default repaint",
			services: []quantix.Service{network}, sc: SerialConsole{TTY: "ttyS0", Baud: 115200, KernelConsole: true},
			want: []quantix.Service{network, {Name: "console-serial", Command: ConsoleCommand, Ready: quantix.ReadyOnMarker,
				Args: []string{"--name", "console-serial", "--tty", "/dev/ttyS0", "--baud", "115200", "--repaint", DefaultRepaint}}}},
		{name: "tty taken by another console",
			services: []quantix.Service{network, tty1, {Name: "console-ttyS1", Command: "/bbin/qx-console", Args: []string{"--tty=/dev/ttyS1"}}}, sc: sc,
			wantErr: "serial console on /dev/ttyS1: service console-ttyS1 already runs a console there"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]quantix.Service(nil), tt.services...)
			got, err := WithSerialConsole(tt.services, tt.sc, "/dev")
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("WithSerialConsole = %v, want error %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("WithSerialConsole (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, tt.services); diff != "" {
				t.Errorf("WithSerialConsole modified its input:\n%s", diff)
			}
		})
	}
}

// openPTY returns a pty whose slave is reachable as link (a stand-in for
// /dev/ttyS1 in a test dev folder).
func openPTY(t *testing.T, link string) *os.File {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { master.Close(); slave.Close() })
	if err := os.Symlink(slave.Name(), link); err != nil {
		t.Fatal(err)
	}
	return master
}

// TestInitStartsSerialConsole: with console.toml on "QUANTIX-CFG", init's service
// list gets console-serial and the supervisor runs it next to the image's tty1
// console, on the configured device, with the image console's other flags; a bad
// console.toml leaves tty1's console running and says why on the console.
func TestInitStartsSerialConsole(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	serial := openPTY(t, filepath.Join(dev, "ttyS1"))
	openPTY(t, filepath.Join(dev, "tty1"))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := quantix.ImageConfig{Image: "quantix-os", Version: "test", Services: []quantix.Service{{
		Name: "console-tty1", Command: exe,
		Args: []string{"--name", "console-tty1", "--tty", filepath.Join(dev, "tty1"), "--repaint", "10s", "--agent-url", "http://127.0.0.1:9101"},
	}}}
	console := &lockedBuffer{}
	in, err := New(cfg, console, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	in.devDir = dev
	in.consoleConfig = filepath.Join(dir, "console.toml")

	// A bad file: the warning names it, tty1's console is all there is.
	if err := os.WriteFile(in.consoleConfig, []byte("serial = \"tty1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := in.withSerialConsole(cfg.Services, quantix.ParseCmdline("quantix.console=ttyS1"))
	if diff := cmp.Diff(cfg.Services, got); diff != "" {
		t.Errorf("services with a bad console.toml (-want +got):\n%s", diff)
	}
	m, ok := quantix.ParseMarker(console.String())
	if !ok || m.Kind != quantix.MarkerWarning || m.Get("service") != SerialConsoleService ||
		!strings.Contains(m.Get("msg"), in.consoleConfig+": serial: \"tty1\" is not a serial port") {
		t.Errorf("console = %q, want a warning naming the file and the bad value", console.String())
	}

	if err := os.WriteFile(in.consoleConfig, []byte("serial = \"ttyS1\"\nbaud = 57600\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	services := in.withSerialConsole(cfg.Services, quantix.ParseCmdline("quantix.console=ttyS0,9600"))
	if want := "init: serial console on " + filepath.Join(dev, "ttyS1") + " at 57600 baud (from " + in.consoleConfig + ")\n"; !strings.HasSuffix(console.String(), want) {
		t.Errorf("console = %q, want it to end with %q", console.String(), want)
	}
	sup, err := NewSupervisor(SupervisorConfig{
		Services: services, Console: console, Grace: 2 * time.Second,
		Env: append(os.Environ(), "QX_HELPER=console"),
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"console-tty1", "console-serial"}, sup.Order()); diff != "" {
		t.Errorf("supervised services (-want +got):\n%s", diff)
	}
	runSup(t, sup)
	select {
	case <-sup.AllReady():
	case <-time.After(20 * time.Second):
		t.Fatalf("consoles not ready; console:\n%s", console.String())
	}
	if !strings.Contains(console.String(), quantix.ReadyMarker("console-serial", "tty", filepath.Join(dev, "ttyS1"))+"\n") {
		t.Errorf("console lacks the serial console's ready marker:\n%s", console.String())
	}
	// What the helper wrote on its terminal comes out of the "serial port".
	buf := make([]byte, 512)
	serial.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := serial.Read(buf)
	if err != nil {
		t.Fatalf("read the serial pty: %v", err)
	}
	want := "console-serial args: --name console-serial --tty " + filepath.Join(dev, "ttyS1") + " --baud 57600 --agent-url http://127.0.0.1:9101"
	if got := strings.TrimSpace(string(buf[:n])); got != want {
		t.Errorf("serial port shows %q, want %q", got, want)
	}
}

// TestSerialConsoleOnTheImages: on the real image definitions the serial console
// runs qx-console as tty1's console does, pointed at the same agent or vDC.
func TestSerialConsoleOnTheImages(t *testing.T) {
	for _, tc := range []struct{ image, extra string }{
		{"quantix-os", "--agent-url http://127.0.0.1:9101"},
		{"qvdc", "--vdc-url http://127.0.0.1:8080"},
	} {
		img, err := spec.Load(filepath.Join("..", "..", "images", tc.image+".toml"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := WithSerialConsole(img.Services, SerialConsole{TTY: "ttyS1", Baud: 115200}, "/dev")
		if err != nil {
			t.Fatalf("%s: %v", tc.image, err)
		}
		last := got[len(got)-1]
		want := "/bbin/qx-console --name console-serial --tty /dev/ttyS1 --baud 115200 " + tc.extra
		if cmd := last.Command + " " + strings.Join(last.Args, " "); last.Name != "console-serial" || cmd != want {
			t.Errorf("%s: serial console %s runs %q, want %q", tc.image, last.Name, cmd, want)
		}
		if len(got) != len(img.Services)+1 {
			t.Errorf("%s: %d services, want the image's %d and the serial console", tc.image, len(got), len(img.Services))
		}
	}
}

func TestKernelConsoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "consoles")
	// /proc/consoles as the images' boot entries make it.
	data := "ttyS0                -W- (EC p a)    4:64\ntty0                 -WU (E  p  )    4:1\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := KernelConsoles(path), []string{"ttyS0", "tty0"}; !slices.Equal(got, want) {
		t.Errorf("KernelConsoles = %q, want %q", got, want)
	}
	if got := KernelConsoles(filepath.Join(t.TempDir(), "missing")); got != nil {
		t.Errorf("KernelConsoles of a missing file = %q, want none", got)
	}
}
