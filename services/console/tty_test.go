package console

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/creack/pty"
)

// A terminal that does not exist on this machine is a configuration error
// (qx-console exits 78 on ErrNoTTY), not a failure worth quick restarts.
func TestOpenTTYMissingDevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ttyS9")
	f, err := OpenTTY(path, 115200)
	if err == nil {
		f.Close()
		t.Fatalf("OpenTTY(%s) succeeded for a device that does not exist", path)
	}
	if !errors.Is(err, ErrNoTTY) {
		t.Errorf("OpenTTY(%s) = %v, want ErrNoTTY", path, err)
	}
}

// A terminal that is no serial port (here a pty, as a VT would be) is never taken
// for a missing UART.
func TestSerialPortMissingNotSerial(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer slave.Close()
	if serialPortMissing(int(slave.Fd())) {
		t.Error("a pty is reported as a serial port without a UART")
	}
}
